"""Shared pieces of the fault tests: run pipeline stages in a child process, decode and compare lakes.

Run as a script it materializes the named jobs on ``RADPLAN_HOME`` (per-patient jobs once per
partition, in partition-key order), so a test can SIGKILL it like a crashed worker:

    python reliability_helpers.py ingest_job patient_preparation_job [--partition KEY|first]
    python reliability_helpers.py --orthanc URL    # inventory + pacs_studies from an Orthanc, JSON outcome
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from radplan.lake_integrity import MANIFEST_FOLDER

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve()

# Hidden names the lake's atomic writers use while writing: temp files, staging and retired folders
# (radplan.lake.atomic_path / rebuild_dir). None may survive a completed run.
STAGING_NAME = re.compile(r"^\.")

# Fields that legitimately differ between two materializations of the same inputs.
# - quarantine reason.json "quarantined_at": wall-clock time the file was quarantined (an event time);
#   "quarantine_id": hashes the source path, which differs between two homes (the content digest does not).
# - inventory "mtime_ns": modification time of the landing copy (two homes hold two copies); the
#   content hash beside it ("sha256") pins the content.
# - patient_features "source_versions": the Dagster run ids that produced each input (lineage).
# - inventory "landing_token": keyed hash over the landing files' sizes and modification times (as "mtime_ns").
VOLATILE_JSON_FIELDS = {"quarantined_at", "quarantine_id"}
VOLATILE_COLUMNS = {"mtime_ns", "source_versions", "landing_token"}


def stage_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment of a stage runner on ``home``: demo mode (synthetic data) unless ``extra`` says otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "RADPLAN_DEID_KEY"}
    return {**env, "RADPLAN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"), "RADPLAN_DEMO": "1", **extra}


def start_stages(home: Path, jobs: list[str], *, partition: str | None = None, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start the stage runner in its own process group (so a SIGKILL reaches every process it started)."""
    args = [sys.executable, str(HELPERS), *jobs] + (["--partition", partition] if partition else [])
    sink = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env or stage_env(home), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def run_stages(home: Path, jobs: list[str], *, partition: str | None = None, timeout: float = 600) -> None:
    log = home / "stages.log"
    process = start_stages(home, jobs, partition=partition, log=log)
    assert process.wait(timeout=timeout) == 0, log.read_text()[-4000:]


def _normalize(value, home: str):
    if isinstance(value, str):
        return value.replace(home, "<HOME>")
    if isinstance(value, dict):
        return {k: _normalize(v, home) for k, v in value.items() if k not in VOLATILE_JSON_FIELDS}
    if isinstance(value, list):
        return [_normalize(v, home) for v in value]
    return value


def decode(path: Path, home: Path):
    """A comparable form of one lake file: tables by content, JSON by content, the rest by (gunzipped) bytes."""
    home_text = str(home)
    name = path.name
    if name.endswith(".parquet"):
        table = pq.read_table(path, partitioning=None)
        table = table.drop_columns([c for c in table.column_names if c in VOLATILE_COLUMNS])
        return ("parquet", str(table.schema), _normalize(table.to_pylist(), home_text))
    if name.endswith(".json"):
        return ("json", _normalize(json.loads(path.read_text(encoding="utf-8")), home_text))
    data = path.read_bytes()
    if name.endswith(".gz") and data[:2] == b"\x1f\x8b":
        # The gzip header carries a timestamp; compare the decompressed image (NIfTI header + voxels).
        try:
            data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
        except (OSError, EOFError):
            pass  # a planted truncated BGZF file is compared by its bytes
    return ("bytes", data.replace(home_text.encode(), b"<HOME>"))


def _snapshot_name(path: Path, lake: Path) -> str:
    """The file's path in the lake; a quarantine folder is named by its content digest instead of its id.

    Quarantine ids hash the source path too, so two homes quarantine the same bad file under two ids.
    """
    parts = path.relative_to(lake).parts
    if parts[0] == "quarantine" and len(parts) >= 4:
        reason = json.loads((lake.joinpath(*parts[:3]) / "reason.json").read_text(encoding="utf-8"))
        parts = (*parts[:2], f"sha256={reason['sha256']}", *parts[3:])
    return "/".join(parts)


def _compared(relative: Path) -> bool:
    """Not compared: ``audit/``, a log of who read what and when (every run, a killed one too, appends
    to it), MLflow's own store under ``models/`` (its run ids and timestamps), which radplan does not write, and
    the zones' ``.manifests``: they hash the files' bytes, which legitimately differ in what the comparison
    normalizes away (run ids in lineage columns, the home folder in paths); their own test is `lake verify`."""
    parts = relative.parts
    return (parts[0] != "audit" and MANIFEST_FOLDER not in parts
            and not (parts[0] == "models" and (parts[1:2] == ("artifacts",) or parts[-1].startswith("mlflow.db"))))


def lake_snapshot(home: Path) -> dict[str, object]:
    """Every compared file of the lake (name -> decoded content)."""
    lake = home / "lake"
    files = sorted(p for p in lake.rglob("*") if p.is_file() and _compared(p.relative_to(lake)))
    snapshot: dict[str, object] = {}
    for path in files:
        name = _snapshot_name(path, lake)
        while name in snapshot:  # the same content quarantined twice: keep both, so a comparison sees it
            name += "#again"
        snapshot[name] = decode(path, home)
    return snapshot


def staging_leftovers(home: Path) -> list[str]:
    """Hidden temp/staging/retired entries anywhere in the lake."""
    lake = home / "lake"
    # <zone>/.manifests is the lake's own (hidden) manifest folder, not a leftover; a temp file inside it is.
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*") if STAGING_NAME.match(p.name) and p.name != MANIFEST_FOLDER)


def snapshot_differences(first: dict, second: dict) -> list[str]:
    """Human-readable differences between two snapshots (empty when identical)."""
    problems = [f"only in first: {k}" for k in sorted(set(first) - set(second))]
    problems += [f"only in second: {k}" for k in sorted(set(second) - set(first))]
    problems += [f"content differs: {k}" for k in sorted(set(first) & set(second)) if first[k] != second[k]]
    return problems


def _materialize_from_orthanc(url: str) -> int:
    """Inventory (first call) and pacs_studies for the one patient, reading ``url``; prints a JSON outcome.

    Per-request retries are kept short; the step retries are the asset's own policy, with the base
    delay from RADPLAN_PACS_RETRY_DELAY_S.
    """
    from support import with_lake_io, with_upstream_sources  # tests/ is on sys.path under pytest and in _main
    from dagster import DagsterEventType, DagsterInstance, materialize

    from radplan_resources.instance import ensure_dagster_home
    from radplan.settings import lake_dir, landing_dir
    from radplan_assets import imaging, ingest
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME
    from radplan_resources import DeidKeyResource, LakeResource, LandingZoneResource, OrthancPacs

    ensure_dagster_home()
    instance = DagsterInstance.get()
    resources = {
        "lake": LakeResource(root=str(lake_dir())),
        "landing": LandingZoneResource(folder=str(landing_dir())),
        "pacs": OrthancPacs(url=url, timeout_s=5, max_retries=2, backoff_s=0.05),
        "deid_key": DeidKeyResource(demo=True),
    }
    if not instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME):
        materialize(with_upstream_sources([ingest.landing_inventory]), resources=with_lake_io(resources), instance=instance)
    (key,) = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
    result = materialize(with_upstream_sources([imaging.pacs_studies]), resources=with_lake_io(resources), instance=instance, partition_key=key, raise_on_error=False)
    failures = [e.step_failure_data.error for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    error = failures[0] if failures else None
    print(json.dumps({
        "success": result.success,
        "partition": key,
        "run_id": result.run_id,
        "step_retries": sum(e.event_type == DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events),
        "error_classes": [error.cls_name, *([error.cause.cls_name] if error.cause else [])] if error else [],
        "error_message": "\n".join(filter(None, [error.message, error.cause.message if error.cause else ""])) if error else "",
    }), flush=True)
    return 0


def _main(argv: list[str]) -> int:
    import argparse

    if argv[:1] == ["--orthanc"]:
        return _materialize_from_orthanc(argv[1])
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs", nargs="+")
    parser.add_argument("--partition", help="run per-patient jobs for this key only ('first': the lowest key)")
    args = parser.parse_args(argv)

    from dagster import DagsterInstance

    from definitions import defs
    from radplan_resources.instance import ensure_dagster_home
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    ensure_dagster_home()
    instance = DagsterInstance.get()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    for name in args.jobs:
        job = defs.resolve_job_def(name)
        if job.partitions_def is None:
            job.execute_in_process(instance=instance, run_config=quiet)
            continue
        keys = sorted(instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME))
        if args.partition:
            keys = keys[:1] if args.partition == "first" else [args.partition]
        for key in keys:
            job.execute_in_process(instance=instance, partition_key=key, run_config=quiet)
        print(f"{name}: {len(keys)} partitions", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.exit(_main(sys.argv[1:]))
