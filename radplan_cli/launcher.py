"""Run a job the way the Dagster webserver and daemon do, from a client process.

A run created here carries its code location (``radplan``, the name workspace.yaml gives the location) and
the job's snapshot and execution plan, exactly like a run launched from the UI: the job's page lists it,
its asset checks (per partition too) show their evaluations, and "re-execute" works. The run is then
executed in this process from the job's reconstructable origin, so a worker that runs many patients
imports the code location once instead of once per run (what a run launcher's subprocess would cost).
"""

from __future__ import annotations

from typing import Mapping

# workspace.yaml: load_from: python_module: {module_name: definitions, location_name: radplan}
LOCATION_NAME = "radplan"
DEFINITIONS_MODULE = "definitions"
PARTITION_TAG = "dagster/partition"


class CodeLocationRunner:
    """Creates and executes runs of the radplan code location against one Dagster instance."""

    def __init__(self, instance):
        import sys

        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE), location_name=LOCATION_NAME
        )
        self.instance = instance
        self.location = origin.create_location(instance)
        (self.repository,) = self.location.get_repositories().values()

    def run(self, job_name: str, run_config: Mapping[str, object], partition_key: str | None = None) -> bool:
        """Create the run record (with its code location) and execute it here; True when it succeeded."""
        from dagster._core.execution.api import execute_run
        from dagster._utils.hosted_user_process import recon_job_from_origin

        remote_job = self.repository.get_full_job(job_name)
        tags = dict(remote_job.tags)
        if partition_key is not None:
            tags[PARTITION_TAG] = partition_key
        plan = self.location.get_execution_plan(
            remote_job, dict(run_config), step_keys_to_execute=None, known_state=None, instance=self.instance
        ).execution_plan_snapshot
        run = self.instance.create_run(
            job_name=job_name,
            run_id=None,
            run_config=dict(run_config),
            status=None,
            tags=tags,
            root_run_id=None,
            parent_run_id=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            execution_plan_snapshot=plan,
            job_snapshot=remote_job.job_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            asset_selection=None,
            asset_check_selection=None,
            resolved_op_selection=None,
            op_selection=None,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_graph=self.repository.asset_graph,
        )
        result = execute_run(recon_job_from_origin(remote_job.get_python_origin()), run, self.instance)
        return result.success
