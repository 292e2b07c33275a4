"""`radplan demo` and `radplan materialize`: run the whole asset graph, stage by stage.

Every run is created in the Dagster instance under RADPLAN_HOME/dagster_home with its code location, the way
the webserver and daemon create theirs (``radplan_cli.launcher``), so `make ui` lists the demo's runs on each
job's page, with their asset-check evaluations. Per-patient stages run once per patient partition on worker
processes; a failing patient is reported and the others go on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from radplan.settings import HOME_ENV_VAR, enable_demo_mode, lake_dir, radplan_home, use_home


# Progress is printed per stage; Dagster's own console log shows only warnings and errors. Steps run in the
# run's process (the code location's executor, definitions.py): per-patient runs are already spread over worker
# processes, and a subprocess per step would import the code location again for every step.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


_RUNNER = None


def _runner():
    """One code-location runner per process: the code location is imported once, whatever the number of runs."""
    global _RUNNER
    if _RUNNER is None:
        from dagster import DagsterInstance

        from radplan_cli.launcher import CodeLocationRunner

        _RUNNER = CodeLocationRunner(DagsterInstance.get())
    return _RUNNER


def _init_worker(verbose: bool) -> None:
    """A per-patient worker: the command's console logging, and a named ``__main__`` before pyspark is imported
    (``radplan.settings.name_a_bare_main_module`` says why)."""
    from radplan.settings import name_a_bare_main_module
    from radplan_cli.logs import configure_logging

    configure_logging(verbose)
    name_a_bare_main_module()


def _run_partition(job_name: str, partition_key: str) -> tuple[str, bool]:
    """One per-patient run, in a worker process (the Dagster instance's sqlite storage takes concurrent runs)."""
    return partition_key, _runner().run(job_name, QUIET, partition_key=partition_key)


def _run_partitions(job_name: str, keys: list[str], workers: int, verbose: bool = False) -> list[str]:
    """Run a per-patient job for every key on ``workers`` processes; returns the failed keys."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from radplan import progress

    failed: list[str] = []
    # spawn: workers must not inherit the parent's threads (Spark, torch) through fork.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(verbose,)) as pool, \
            progress.task(f"{job_name} (patients)", total=len(keys)) as bar:
        futures = [pool.submit(_run_partition, job_name, key) for key in keys]
        for future in as_completed(futures):
            key, success = future.result()
            if not success:
                failed.append(key)
            bar.advance()
    return failed


def run_stages(*, segmentation_epochs: int | None = None, workers: int = 2, verbose: bool = False) -> list[str]:
    """Materialize every stage; returns the failed (stage, partition) descriptions (no PHI: keys only)."""
    from dagster import DagsterInstance

    import definitions  # noqa: F401  first: it refuses a bad key before the heavy imports
    from jobs import DEMO_STAGES
    from radplan_resources.instance import ensure_dagster_home
    from radplan import progress
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    ensure_dagster_home()
    instance = DagsterInstance.get()
    failures: list[str] = []
    for stage in DEMO_STAGES:
        started = time.perf_counter()
        if stage.partitions_def is None:
            run_config = dict(QUIET)
            if segmentation_epochs is not None and stage.name == "segmentation_training_job":
                run_config["ops"] = {"segmentation_model": {"config": {"max_epochs": segmentation_epochs}}}
            with progress.task(stage.name):
                success = _runner().run(stage.name, run_config)
            if not success:
                failures.append(stage.name)
            status = "ok" if success else "FAILED"
        else:
            keys = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
            failed = _run_partitions(stage.name, list(keys), workers, verbose)
            failures += [f"{stage.name}[{key}]" for key in failed]
            status = f"{len(keys) - len(failed)}/{len(keys)} patients ok"
        print(f"{stage.name}: {status} in {time.perf_counter() - started:.1f} s", flush=True)
    return failures


def _demo(args: argparse.Namespace) -> int:
    from radplan import progress

    enable_demo_mode()
    if args.home:
        use_home(args.home)
    home = radplan_home()
    started = time.perf_counter()
    if not (home / "landing").exists():
        from radplan.synth import generate_cohort

        print(f"generating {args.patients} synthetic patients (seed {args.seed}) into {home}/landing ...", flush=True)
        with progress.task("generating synthetic patients"):
            summary = generate_cohort(home, args.patients, args.seed)
        print(f"  {summary}")
    if args.trials:
        copied = copy_trial_records(Path(args.trials), home / "landing" / "trials")
        print(f"trial catalogue: {copied} ClinicalTrials.gov records in {home / 'landing' / 'trials'}")
    failures = run_stages(segmentation_epochs=args.segmentation_epochs, workers=args.workers, verbose=args.verbose)
    exports = lake_dir(home) / "exports"
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Exports: {exports}")
    print("  recommendations.parquet / recommendations.csv, fhir/<patient>.json, reports/<patient>.html, model_report.json")
    print("Open the Dagster UI with `make ui` (http://127.0.0.1:3000).")
    if failures:
        print(f"{len(failures)} stage runs failed: {', '.join(failures[:20])}", file=sys.stderr)
        return 1
    return 0


def _materialize(args: argparse.Namespace) -> int:
    return 1 if run_stages(segmentation_epochs=args.segmentation_epochs, workers=args.workers, verbose=args.verbose) else 0


def copy_trial_records(source: Path, target: Path) -> int:
    """Put ClinicalTrials.gov records (API v2 JSON, legacy XML) where the trial catalogue is read from."""
    import shutil

    from radplan.lake import atomic_path

    target.mkdir(parents=True, exist_ok=True)
    records = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".json", ".xml"})
    for record in records:
        with atomic_path(target / record.name) as tmp:  # a killed copy never leaves half a record to parse
            shutil.copyfile(record, tmp)
    return len(records)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="generate a synthetic cohort (if none) and materialize every asset")
    demo.add_argument("--patients", type=int, default=50)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--home", help=f"data home (default ${HOME_ENV_VAR} or ./.radplan)")
    demo.add_argument("--segmentation-epochs", type=int, help="override the segmentation model's training epochs")
    demo.add_argument("--workers", type=int, default=default_workers(), help="processes for per-patient stages")
    demo.add_argument("--trials", help="folder of ClinicalTrials.gov records to use as the trial catalogue")
    demo.set_defaults(func=_demo)
    materialize = subparsers.add_parser("materialize", help="materialize every asset on what the landing zone holds")
    materialize.add_argument("--segmentation-epochs", type=int, help="override the segmentation model's training epochs")
    materialize.add_argument("--workers", type=int, default=default_workers(), help="processes for per-patient stages")
    materialize.set_defaults(func=_materialize)
