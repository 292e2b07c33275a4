"""Synthetic arrivals for the sensor tests and benchmarks: a follow-up study, or a whole new patient, landing as a
hospital would deliver them (test harness, not product code)."""

from __future__ import annotations

import csv
import io
from pathlib import Path


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
