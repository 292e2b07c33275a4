"""Same seed -> byte-identical delivery; different seed -> different; the layout ingest relies on."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pydicom

from synth_test_helpers import dicom_files


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}


def test_same_seed_gives_identical_bytes_for_every_file(cohort, cohort_same_seed):
    first, second = _files(cohort), _files(cohort_same_seed)
    assert first.keys() == second.keys()
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_different_seed_differs(cohort, cohort_other_seed):
    first, other = _files(cohort), _files(cohort_other_seed)
    for name in ("landing/ehr/fhir/Patient.ndjson", "landing/ehr/csv/patients.csv", "truth/truth.json"):
        assert first[name] != other[name]
    assert {p for p in first if p.startswith("landing/genomics/MRN")} != {p for p in other if p.startswith("landing/genomics/MRN")}


def test_layout(cohort, truth):
    landing = cohort / "landing"
    for table in ("patients", "encounters", "conditions", "medications", "observations", "procedures"):
        assert (landing / "ehr" / "csv" / f"{table}.csv").is_file()
    for name in ("Patient.ndjson", "DocumentReference.ndjson"):
        assert (landing / "ehr" / "fhir" / name).is_file()
    for name in ("truth.json", "phi_canaries.json", "bad_inputs.json"):
        assert (cohort / "truth" / name).is_file()
    for mrn, patient in truth["patients"].items():
        assert (landing / "genomics" / f"{mrn}.vcf.gz").is_file()
        assert (landing / "genomics" / f"{mrn}.vcf.gz.tbi").is_file()
        assert 1 <= len(patient["studies"]) <= 2
        for study in patient["studies"]:
            assert (cohort / study["mask"]).is_file()
            assert study["mask"] == f"truth/masks/{mrn}_{study['study_index']}.nii.gz"
    # No staging folders left behind by the atomic folder writes.
    assert not [p for p in landing.rglob(".*")]


def test_dicom_folders_mix_studies_and_files_are_not_in_slice_order(cohort, bad_paths):
    studies_per_folder = defaultdict(set)
    unordered_folders = set()
    by_folder = defaultdict(list)
    for path in dicom_files(cohort, bad_paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        studies_per_folder[path.parent.name].add(ds.StudyInstanceUID)
        if ds.Modality == "CT":
            by_folder[(path.parent.name, ds.SeriesInstanceUID)].append((path.name, int(ds.InstanceNumber)))
    assert any(len(uids) >= 2 for uids in studies_per_folder.values())
    for key, entries in by_folder.items():
        instance_numbers_in_name_order = [number for _, number in sorted(entries)]
        if instance_numbers_in_name_order != sorted(instance_numbers_in_name_order):
            unordered_folders.add(key)
    assert unordered_folders == set(by_folder)


def test_summary_counts_match_files(cohort, truth):
    summary = json.loads((cohort / "summary.json").read_text())
    assert summary["patients"] == len(truth["patients"])
    assert summary["studies"] == sum(len(p["studies"]) for p in truth["patients"].values())
    assert summary["seg_files"] == sum(s["has_seg"] for p in truth["patients"].values() for s in p["studies"])
    assert summary["vcf_files"] == len(list((cohort / "landing" / "genomics").glob("MRN*.vcf.gz")))
    assert summary["notes"] == len((cohort / "landing" / "ehr" / "fhir" / "DocumentReference.ndjson").read_text().splitlines())
    # The summary is PHI-free: no MRN, no name.
    text = json.dumps(summary)
    assert not any(mrn in text for mrn in truth["patients"])
