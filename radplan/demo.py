"""`radplan demo` and `radplan materialize`: run the whole asset graph in-process, stage by stage.

Runs are recorded in the Dagster instance under RADPLAN_HOME/dagster_home, so
`make ui` shows them afterwards. Per-patient stages run once per patient
partition; a failing patient is reported and the others go on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from radplan.settings import HOME_ENV_VAR, lake_dir, radplan_home


def run_stages(*, segmentation_epochs: int | None = None) -> list[str]:
    """Materialize every stage; returns the failed (stage, partition) descriptions (no PHI: keys only)."""
    from dagster import DagsterInstance

    from jobs import DEMO_STAGES
    from radplan.definitions import defs
    from radplan.instance import ensure_dagster_home
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    ensure_dagster_home()
    instance = DagsterInstance.get()
    # Progress is printed per stage below; Dagster's own console log shows only warnings and errors.
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    failures: list[str] = []
    for stage in DEMO_STAGES:
        job = defs.resolve_job_def(stage.name)
        started = time.perf_counter()
        if stage.partitions_def is None:
            run_config = dict(quiet)
            if segmentation_epochs is not None and stage.name == "segmentation_training_job":
                run_config["ops"] = {"segmentation_model": {"config": {"max_epochs": segmentation_epochs}}}
            result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
            if not result.success:
                failures.append(stage.name)
            status = "ok" if result.success else "FAILED"
        else:
            keys = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
            failed = 0
            for index, key in enumerate(keys, start=1):
                result = job.execute_in_process(instance=instance, partition_key=key, run_config=quiet, raise_on_error=False)
                if not result.success:
                    failed += 1
                    failures.append(f"{stage.name}[{key}]")
                print(f"\r  {stage.name}: {index}/{len(keys)} patients ({failed} failed)", end="", flush=True)
            print()
            status = f"{len(keys) - failed}/{len(keys)} patients ok"
        print(f"{stage.name}: {status} in {time.perf_counter() - started:.1f} s", flush=True)
    return failures


def _demo(args: argparse.Namespace) -> int:
    os.environ["RADPLAN_DEMO"] = "1"
    if args.home:
        os.environ[HOME_ENV_VAR] = str(Path(args.home).resolve())
    home = radplan_home()
    started = time.perf_counter()
    if not (home / "landing").exists():
        from radplan.synth import generate_cohort

        print(f"generating {args.patients} synthetic patients (seed {args.seed}) into {home}/landing ...", flush=True)
        summary = generate_cohort(home, args.patients, args.seed)
        print(f"  {summary}")
    failures = run_stages(segmentation_epochs=args.segmentation_epochs)
    exports = lake_dir(home) / "exports"
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Exports: {exports}")
    print("  recommendations.parquet / recommendations.csv, fhir/<patient>.json, reports/<patient>.html, model_report.json")
    print("Open the Dagster UI with `make ui` (http://127.0.0.1:3000).")
    if failures:
        print(f"{len(failures)} stage runs failed: {', '.join(failures[:20])}", file=sys.stderr)
        return 1
    return 0


def _materialize(args: argparse.Namespace) -> int:
    return 1 if run_stages(segmentation_epochs=args.segmentation_epochs) else 0


def register(subparsers) -> None:
    demo = subparsers.add_parser("demo", help="generate a synthetic cohort (if none) and materialize every asset")
    demo.add_argument("--patients", type=int, default=50)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--home", help=f"data home (default ${HOME_ENV_VAR} or ./.radplan)")
    demo.add_argument("--segmentation-epochs", type=int, help="override the segmentation model's training epochs")
    demo.set_defaults(func=_demo)
    materialize = subparsers.add_parser("materialize", help="materialize every asset on what the landing zone holds")
    materialize.add_argument("--segmentation-epochs", type=int, help="override the segmentation model's training epochs")
    materialize.set_defaults(func=_materialize)
