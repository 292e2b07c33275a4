"""`radplan demo` and `radplan materialize`: run the whole asset graph in-process, stage by stage.

Runs are recorded in the Dagster instance under RADPLAN_HOME/dagster_home, so
`make ui` shows them afterwards. Per-patient stages run once per patient
partition; a failing patient is reported and the others go on.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

from radplan.settings import HOME_ENV_VAR, lake_dir, radplan_home


# Progress is printed per stage; Dagster's own console log shows only warnings and errors.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _run_partition(job_name: str, partition_key: str) -> tuple[str, bool]:
    """One per-patient run, in a worker process (the Dagster instance's sqlite storage takes concurrent runs)."""
    from dagster import DagsterInstance

    from radplan.definitions import defs

    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(instance=DagsterInstance.get(), partition_key=partition_key, run_config=QUIET, raise_on_error=False)
    return partition_key, result.success


def _run_partitions(job_name: str, keys: list[str], workers: int) -> list[str]:
    """Run a per-patient job for every key on ``workers`` processes; returns the failed keys."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    failed: list[str] = []
    # spawn: workers must not inherit the parent's threads (Spark, torch) through fork.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_partition, job_name, key) for key in keys]
        for done, future in enumerate(as_completed(futures), start=1):
            key, success = future.result()
            if not success:
                failed.append(key)
            print(f"\r  {job_name}: {done}/{len(keys)} patients ({len(failed)} failed)", end="", flush=True)
    print()
    return failed


def run_stages(*, segmentation_epochs: int | None = None, workers: int = 2) -> list[str]:
    """Materialize every stage; returns the failed (stage, partition) descriptions (no PHI: keys only)."""
    from dagster import DagsterInstance

    from radplan.definitions import defs  # first: it refuses a bad key before the heavy imports
    from jobs import DEMO_STAGES
    from radplan.instance import ensure_dagster_home
    from radplan_assets.partitions import PATIENTS_PARTITION_NAME

    ensure_dagster_home()
    instance = DagsterInstance.get()
    failures: list[str] = []
    for stage in DEMO_STAGES:
        job = defs.resolve_job_def(stage.name)
        started = time.perf_counter()
        if stage.partitions_def is None:
            run_config = dict(QUIET)
            if segmentation_epochs is not None and stage.name == "segmentation_training_job":
                run_config["ops"] = {"segmentation_model": {"config": {"max_epochs": segmentation_epochs}}}
            result = job.execute_in_process(instance=instance, run_config=run_config, raise_on_error=False)
            if not result.success:
                failures.append(stage.name)
            status = "ok" if result.success else "FAILED"
        else:
            keys = instance.get_dynamic_partitions(PATIENTS_PARTITION_NAME)
            failed = _run_partitions(stage.name, list(keys), workers)
            failures += [f"{stage.name}[{key}]" for key in failed]
            status = f"{len(keys) - len(failed)}/{len(keys)} patients ok"
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
    if args.trials:
        copied = copy_trial_records(Path(args.trials), home / "landing" / "trials")
        print(f"trial catalogue: {copied} ClinicalTrials.gov records in {home / 'landing' / 'trials'}")
    failures = run_stages(segmentation_epochs=args.segmentation_epochs, workers=args.workers)
    exports = lake_dir(home) / "exports"
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Exports: {exports}")
    print("  recommendations.parquet / recommendations.csv, fhir/<patient>.json, reports/<patient>.html, model_report.json")
    print("Open the Dagster UI with `make ui` (http://127.0.0.1:3000).")
    if failures:
        print(f"{len(failures)} stage runs failed: {', '.join(failures[:20])}", file=sys.stderr)
        return 1
    return 0


def _materialize(args: argparse.Namespace) -> int:
    return 1 if run_stages(segmentation_epochs=args.segmentation_epochs, workers=args.workers) else 0


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


def _render_study_files(folder: Path, plan, study, seed: int) -> list[Path]:
    """Render one synthetic CT study (and its SEG when it has one) into ``folder``, appearing all at once."""
    import numpy as np

    from radplan.synth import ct
    from radplan.synth.generator import _write_folder

    hu, labels, geo = ct.render_study(plan, study, seed)
    datasets = ct.ct_datasets(plan, study, seed, hu, geo)
    entries = [("ct", dataset) for dataset in datasets]
    if study.has_seg:
        entries.append(("seg", ct.segmentation(plan, study, seed, datasets, labels)))
    _write_folder(folder, entries, np.random.default_rng(seed + plan.index * 1000 + study.index))
    return sorted(folder.iterdir())


def add_follow_up_study(landing: Path, patient_index: int, *, seed: int = 7, follow_up: int = 1, days_between: int = 90) -> list[Path]:
    """Demo arrival: the ``follow_up``-th follow-up CT (own UIDs, later date, no reference mask) of a synthetic patient.

    Written to landing/dicom/arrival_<patient>_<study>; returns its files (e.g. to send them to Orthanc).
    """
    import dataclasses
    import datetime as dt

    from radplan.synth.generator import _draw_unique

    plan = _draw_unique(seed, patient_index + 1)[patient_index]
    last = plan.studies[-1]
    index = len(plan.studies) - 1 + follow_up  # study UIDs derive from (patient, study index)
    study = dataclasses.replace(
        last,
        index=index,
        date=last.date + dt.timedelta(days=days_between * follow_up),
        accession=f"ACC{90_000_000 + plan.index * 100 + index}",
        has_seg=False,
    )
    return _render_study_files(landing / "dicom" / f"arrival_{plan.index:04d}_{study.index}", plan, study, seed)


def add_new_patient(landing: Path, patient_index: int, *, seed: int = 7) -> list[Path]:
    """Demo arrival: synthetic patient ``patient_index`` (beyond the generated cohort) with studies, VCF, EHR rows and notes.

    Extracts are appended to the landing CSV/NDJSON files the way a nightly EHR export grows; returns the DICOM files.
    """
    from radplan.lake import atomic_write_text
    from radplan.synth.ehr import csv_columns, ehr_rows, fhir_patient
    from radplan.synth.generator import _draw_unique, _ndjson
    from radplan.synth.notes import clinical_notes, document_reference
    from radplan.synth.vcf import write_vcf

    plan = _draw_unique(seed, patient_index + 1)[patient_index]
    files: list[Path] = []
    for study in plan.studies:
        files += _render_study_files(landing / "dicom" / f"arrival_{plan.index:04d}_{study.index}", plan, study, seed)
    write_vcf(plan, seed, landing / "genomics" / f"{plan.mrn}.vcf.gz")
    for name, rows in ehr_rows(plan, seed).items():
        target = landing / "ehr" / "csv" / f"{name}.csv"
        existing = target.read_text(encoding="utf-8") if target.exists() else ""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=csv_columns()[name], lineterminator="\n")
        if not existing:
            writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(target, existing + ("" if not existing or existing.endswith("\n") else "\n") + buffer.getvalue())
    fhir = landing / "ehr" / "fhir"
    notes = [document_reference(plan, seed, n, kind, day, text) for n, (kind, day, text) in enumerate(clinical_notes(plan, seed))]
    for name, resources in (("Patient.ndjson", [fhir_patient(plan)]), ("DocumentReference.ndjson", notes)):
        target = fhir / name
        existing = target.read_text(encoding="utf-8") if target.exists() else ""
        atomic_write_text(target, existing + "".join(_ndjson(resource) for resource in resources))
    return files


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
