"""Evaluate sensors and launch their run requests in this process, the way dagster-daemon would.

For tests, benchmarks and `radplan`-style one-shot use without a daemon: cursors are kept per
sensor, run keys are deduplicated against the instance's runs exactly like the daemon does
(a request whose run key already has a run from this sensor is dropped), and each run carries the
daemon's tags (dagster/sensor_name, dagster/run_key).
"""

from dataclasses import dataclass, field

from dagster import DagsterInstance, DagsterRunStatus, Definitions, RunsFilter, build_sensor_context, partition_loading_context

SENSOR_NAME_TAG = "dagster/sensor_name"
RUN_KEY_TAG = "dagster/run_key"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def definitions_with(**resources) -> Definitions:
    """The project's Definitions with some resources replaced (e.g. an OrthancPacs at a test server's URL)."""
    import definitions

    base = definitions.defs
    if "lake" in resources and "io_manager" not in resources:
        from radplan_resources.io_manager import LakeIOManager

        resources["io_manager"] = LakeIOManager(lake=resources["lake"])
    return Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        schedules=base.schedules,
        sensors=base.sensors,
        resources={**definitions.build_resources(), **resources},
    )


@dataclass
class LaunchedRun:
    sensor: str
    job: str
    run_key: str | None
    partition_key: str | None
    run_id: str
    success: bool


@dataclass
class InProcessDaemon:
    defs: Definitions
    instance: DagsterInstance
    cursors: dict[str, str | None] = field(default_factory=dict)
    launched: list[LaunchedRun] = field(default_factory=list)
    dropped_duplicates: int = 0

    def evaluate(self, sensor_name: str) -> list:
        """One tick: returns the run requests the daemon would launch (duplicates by run key removed)."""
        sensor_def = self.defs.resolve_sensor_def(sensor_name)
        with build_sensor_context(
            instance=self.instance,
            cursor=self.cursors.get(sensor_name),
            definitions=self.defs,
            sensor_name=sensor_name,
            resources=self.defs.resources,
        ) as context, partition_loading_context(dynamic_partitions_store=self.instance):
            # The daemon validates requested partition keys against the instance's dynamic partitions.
            data = sensor_def.evaluate_tick(context)
        for request in data.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        if data.cursor is not None:
            self.cursors[sensor_name] = data.cursor
        requests = []
        for request in data.run_requests or []:
            if request.run_key and self.instance.get_run_ids(
                RunsFilter(tags={SENSOR_NAME_TAG: sensor_name, RUN_KEY_TAG: request.run_key}), limit=1
            ):
                self.dropped_duplicates += 1
                continue
            requests.append(request)
        return requests

    def _job_and_tags(self, sensor_name: str, request):
        job_name = request.job_name or self.defs.resolve_sensor_def(sensor_name).job_name
        tags = {**(request.tags or {}), SENSOR_NAME_TAG: sensor_name}
        if request.run_key:
            tags[RUN_KEY_TAG] = request.run_key
        return self.defs.resolve_job_def(job_name), tags

    def record_without_executing(self, sensor_name: str, request) -> str:
        """Register the run the daemon would create (so later requests with its run key are dropped), without running it."""
        job, tags = self._job_and_tags(sensor_name, request)
        if request.partition_key:
            tags["dagster/partition"] = request.partition_key
        run = self.instance.create_run_for_job(job, run_config=request.run_config or {}, tags=tags, status=DagsterRunStatus.NOT_STARTED)
        return run.run_id

    def launch(self, sensor_name: str, request) -> LaunchedRun:
        job, tags = self._job_and_tags(sensor_name, request)
        job_name = job.name
        run_config = {**QUIET, **(request.run_config or {})}
        result = job.execute_in_process(
            instance=self.instance, partition_key=request.partition_key, run_config=run_config, tags=tags, raise_on_error=False,
            asset_selection=request.asset_selection,
        )
        run = LaunchedRun(sensor_name, job_name, request.run_key, request.partition_key, result.run_id, result.success)
        self.launched.append(run)
        return run

    def tick_and_run(self, sensor_name: str) -> list[LaunchedRun]:
        """Evaluate one sensor and run what it requests, one after the other."""
        return [self.launch(sensor_name, request) for request in self.evaluate(sensor_name)]


def partition_materialization_counts(instance: DagsterInstance, asset_keys) -> dict[tuple[str, str | None], tuple[int, int]]:
    """(asset, partition) -> (number of materializations, newest storage id): what a run touched shows up here."""
    from dagster import AssetRecordsFilter

    counts: dict[tuple[str, str | None], tuple[int, int]] = {}
    for asset_key in asset_keys:
        cursor = None
        while True:
            result = instance.fetch_materializations(AssetRecordsFilter(asset_key=asset_key), limit=1000, cursor=cursor, ascending=True)
            for record in result.records:
                slot = (asset_key.to_user_string(), record.partition_key)
                count, _ = counts.get(slot, (0, -1))
                counts[slot] = (count + 1, record.storage_id)
            if not result.has_more:
                break
            cursor = result.cursor
    return counts


def patient_file_digests(root) -> dict[str, dict[str, str]]:
    """Patient key -> {relative path: sha256} of every lake file that belongs to one patient (path names the key)."""
    import hashlib
    import re
    from pathlib import Path

    pattern = re.compile(r"p[0-9a-f]{16}")
    root = Path(root)
    digests: dict[str, dict[str, str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        keys = {match for part in relative.parts for match in pattern.findall(part)}
        if len(keys) == 1:
            digests.setdefault(keys.pop(), {})[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests
