"""`radplan audit-check`: is a run's audit trail complete, and is the log's hash chain intact?

Compares the run's partitioned asset materializations (Dagster's event log) with
the audit log's records for that run. Prints a JSON report (keys and counts only);
exit code 1 when something is missing or a chain is broken.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from radplan.audit import AUDIT_FOLDER, CompletenessReport, Materialization, compare_run, iter_records, verify_chain
from radplan.settings import HOME_ENV_VAR, lake_dir, use_home

def run_materializations(instance, run_id: str) -> list[Materialization]:
    """The partitioned asset materializations recorded for ``run_id``."""
    from dagster import DagsterEventType

    found = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        event = entry.dagster_event
        if event is not None and event.asset_key is not None and event.partition:
            found.append(Materialization(event.asset_key.to_user_string(), event.partition))
    return found


def audit_complete_for_run(instance, run_id: str, audit_dir: str | os.PathLike) -> CompletenessReport:
    """What the audit log lacks for ``run_id`` (and any broken hash chain in ``audit_dir``)."""
    if instance.get_run_by_id(run_id) is None:
        raise LookupError(f"run {run_id} is not in this Dagster instance")
    return compare_run(run_id, run_materializations(instance, run_id), iter_records(audit_dir), verify_chain(audit_dir))


def _audit_check(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from radplan_resources.instance import ensure_dagster_home

    if args.home:
        use_home(args.home)
    ensure_dagster_home()
    audit_dir = Path(args.audit_dir) if args.audit_dir else lake_dir() / AUDIT_FOLDER
    instance = DagsterInstance.get()
    reports = [audit_complete_for_run(instance, run_id, audit_dir) for run_id in args.run_id]
    print(json.dumps([report.as_dict() for report in reports], indent=2))
    return 0 if all(report.complete for report in reports) else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("audit-check", help="check a run's audit trail is complete and the audit log's hash chain intact")
    parser.add_argument("--run-id", action="append", required=True, help="Dagster run id (repeatable)")
    parser.add_argument("--home", help=f"data home (default ${HOME_ENV_VAR} or ./.radplan)")
    parser.add_argument("--audit-dir", help="audit log folder (default <home>/lake/audit)")
    parser.set_defaults(func=_audit_check)
