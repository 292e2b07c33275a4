"""Write a synthetic hospital delivery (DICOM, VCF, EHR CSV/FHIR, notes) plus its hidden truth.

Layout under ``out_dir`` (the ingest code depends on it)::

    landing/dicom/export_NNNN/IM_NNNN.dcm     CT series + SEGs; names are not in slice order and one
                                              folder holds two studies (ingest must group by UID)
    landing/genomics/<MRN>.vcf.gz(.tbi)       one BGZF GRCh38 VCF per patient, tabix-indexed
    landing/ehr/csv/<table>.csv               Synthea v3 CSV layout
    landing/ehr/fhir/Patient.ndjson, DocumentReference.ndjson
    truth/truth.json, truth/masks/<MRN>_<study>.nii.gz, truth/phi_canaries.json, truth/bad_inputs.json

The same seed gives byte-identical files: no wall-clock time is used anywhere, gzip/BGZF headers
carry no timestamp, JSON is key-sorted and every list has a fixed order.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from radplan.lake import atomic_write_json, atomic_write_text, atomic_write_bytes
from radplan.synth import ct
from radplan.synth.cohort import OUTCOME_COEFFICIENTS, REFERENCE_DATE, PatientPlan, draw_patient, knowledge, patient_rng, stable_uid
from radplan.synth.ehr import CREATININE_MGDL_TO_UMOL, csv_columns, ehr_rows, fhir_patient, plan_latitude, plan_longitude
from radplan.synth.notes import clinical_notes, document_reference
from radplan.synth.vcf import vcf_bgzf, write_vcf

OUTCOME_MODEL_DOC = {
    "description": "logit(p_response) = intercept + sum(coefficient * feature); responder ~ Bernoulli(p_response)",
    "coefficients": OUTCOME_COEFFICIENTS,
    "features": {
        "log_tumour_volume_ml_centered_at_2": "ln(sum of the baseline lesions' main-ellipsoid volumes in ml) - 2.0",
        "ecog": "ECOG performance status 0-3",
        "targeted_match": "1 if the first-line drug targets a planted somatic driver, else 0 (a driver patient gets standard therapy with probability 0.35)",
        "texture_heterogeneity_centered_at_0.5": "lesion HU texture amplitude parameter (0..1) - 0.5; HU SD inside lesions ~ 10 + 50*h",
        "stage_iv": "1 if the stage group is IV/IVA/IVB",
    },
    "probability_by_therapy": "the same model under each first-line option (standard regimen, matched targeted regimen), keyed by lower-case drug names sorted and joined by ' + '",
    "label": "responder = RECIST partial response at follow-up CT; responders' lesions shrink to 55-80 % radius at follow-up, others grow 105-130 %",
}


def generate_cohort(out_dir: Path, n_patients: int, seed: int = 7, bad_inputs: bool = True, overwrite: bool = False) -> dict:
    """Generate the cohort; return a PHI-free summary of what was written."""
    if n_patients < 1:
        raise ValueError("n_patients must be at least 1")
    out_dir = Path(out_dir)
    landing, truth_dir = out_dir / "landing", out_dir / "truth"
    for folder in (landing, truth_dir):
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{folder} is not empty; pass overwrite=True (--overwrite) to replace a previous cohort")
            shutil.rmtree(folder)

    plans = _draw_unique(seed, n_patients)
    canaries = {plan.mrn: _patient_canaries(plan) for plan in plans}
    uids: list[str] = []
    truth = {plan.mrn: _patient_truth(plan) for plan in plans}
    summary = {"patients": n_patients, "studies": 0, "ct_instances": 0, "seg_files": 0, "vcf_files": 0, "notes": 0, "bad_inputs": 0}

    extra_instance = _write_dicom(landing / "dicom", truth_dir / "masks", plans, seed, truth, uids, summary)

    # Genomics.
    for plan in plans:
        write_vcf(plan, seed, landing / "genomics" / f"{plan.mrn}.vcf.gz")
        summary["vcf_files"] += 1

    # EHR CSV + FHIR.
    tables: dict[str, list[dict]] = {name: [] for name in csv_columns()}
    patient_lines, note_lines = [], []
    for plan in plans:
        for name, rows in ehr_rows(plan, seed).items():
            tables[name] += rows
        patient_lines.append(_ndjson(fhir_patient(plan)))
        for number, (kind, day, text) in enumerate(clinical_notes(plan, seed)):
            note_lines.append(_ndjson(document_reference(plan, seed, number, kind, day, text)))
            truth[plan.mrn]["notes"].append({"type": kind, "date": day.isoformat()})
            summary["notes"] += 1
    csv_texts = {name: _csv_text(name, rows) for name, rows in tables.items()}
    fhir_dir = landing / "ehr" / "fhir"
    atomic_write_text(fhir_dir / "Patient.ndjson", "".join(patient_lines))
    atomic_write_text(fhir_dir / "DocumentReference.ndjson", "".join(note_lines))

    bad: list[dict] = []
    if bad_inputs:
        bad = _plant_bad_inputs(landing, plans[0], seed, extra_instance, csv_texts, uids)
    for name, text in csv_texts.items():
        atomic_write_text(landing / "ehr" / "csv" / f"{name}.csv", text)
    summary["bad_inputs"] = len(bad)

    all_strings = sorted({s for strings in canaries.values() for s in strings} | set(uids))
    atomic_write_json(truth_dir / "phi_canaries.json", {"patients": canaries, "uids": sorted(set(uids)), "all": all_strings})
    atomic_write_json(truth_dir / "bad_inputs.json", bad)
    atomic_write_json(truth_dir / "truth.json", {"seed": seed, "age_reference_date": REFERENCE_DATE.isoformat(), "outcome_model": OUTCOME_MODEL_DOC, "patients": truth})
    return summary


def _write_dicom(dicom_dir: Path, masks_dir: Path, plans: list[PatientPlan], seed: int, truth: dict, uids: list[str], summary: dict):
    """Render and write every study; fill truth/uids/summary; return (folder, extra CT instance) for the bad inputs.

    Studies go to folders in a seed-shuffled order, one folder each, except that export_0001 takes two
    studies (ingest must group by UID, not by folder).
    """
    layout_rng = patient_rng(seed, -1, "layout")
    all_studies = [(plan, study) for plan in plans for study in plan.studies]
    order = layout_rng.permutation(len(all_studies))
    folder_of = {int(position): f"export_{max(rank, 1):04d}" for rank, position in enumerate(order)}
    studies_left = Counter(folder_of.values())
    folder_files: dict[str, list[tuple[str, object]]] = {}
    extra_instance = None
    for position, (plan, study) in enumerate(all_studies):
        folder = folder_of[position]
        hu, labels, geo = ct.render_study(plan, study, seed)
        datasets = ct.ct_datasets(plan, study, seed, hu, geo)
        study_uids = ct.study_uids(seed, plan, study)
        uids += [study_uids["study"], study_uids["series"], study_uids["frame_of_reference"]] + [d.SOPInstanceUID for d in datasets]
        entries = folder_files.setdefault(folder, [])
        entries += [("ct", d) for d in datasets]
        if study.has_seg:
            entries.append(("seg", ct.segmentation(plan, study, seed, datasets, labels)))
            uids += [study_uids["seg_series"], study_uids["seg_instance"]]
            summary["seg_files"] += 1
        if extra_instance is None:
            extra_instance = (folder, _extra_instance(datasets[0], seed, plan, study, len(datasets)))
        ct.write_label_nifti(labels, geo, masks_dir / f"{plan.mrn}_{study.index}.nii.gz")
        truth[plan.mrn]["studies"].append(_study_truth(plan, study, labels, geo, study_uids))
        summary["studies"] += 1
        summary["ct_instances"] += len(datasets)
        # Write each folder as soon as its last study is rendered, to keep memory bounded.
        studies_left[folder] -= 1
        if studies_left[folder] == 0:
            _write_folder(dicom_dir / folder, folder_files.pop(folder), layout_rng)
    return extra_instance


def _draw_unique(seed: int, n_patients: int) -> list[PatientPlan]:
    plans, seen = [], set()
    for index in range(n_patients):
        plan = draw_patient(seed, index)
        while plan.mrn in seen:  # MRN collision: bump to the next free number
            plan.mrn = f"MRN{int(plan.mrn[3:]) % 9_999_999 + 1:07d}"
        seen.add(plan.mrn)
        plans.append(plan)
    return plans


def _ndjson(resource: dict) -> str:
    return json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def _csv_text(name: str, rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_columns()[name], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_folder(folder: Path, entries: list, rng: np.random.Generator) -> None:
    """Write a folder's instances under shuffled IM_NNNN names (file order says nothing about slices).

    The folder is filled under a hidden temporary name and renamed into place, so it appears
    complete or not at all (one rename instead of one per file).
    """
    numbers = rng.permutation(len(entries)) + 1
    encoder = ct.SeriesEncoder()
    staging = folder.with_name(f".{folder.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for number, (kind, dataset) in zip(numbers, entries):
        target = staging / f"IM_{int(number):04d}.dcm"
        if kind == "ct":
            target.write_bytes(encoder.encode(dataset))
        else:
            dataset.save_as(target, enforce_file_format=True)
    os.replace(staging, folder)


def _extra_instance(template, seed: int, plan: PatientPlan, study, count: int):
    extra = copy.deepcopy(template)
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = stable_uid(seed, "extra-sop", plan.index, study.index)
    extra.InstanceNumber = count + 1
    return extra


def _plant_bad_inputs(landing: Path, victim: PatientPlan, seed: int, extra_instance, csv_texts: dict[str, str], uids: list[str]) -> list[dict]:
    bad = []
    folder, dataset = extra_instance
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    truncated = landing / "dicom" / folder / "IM_9001.dcm"
    atomic_write_bytes(truncated, data[: len(data) // 2])
    uids.append(dataset.SOPInstanceUID)
    bad.append({"path": str(truncated.relative_to(landing.parent)), "problem": "truncated DICOM: an extra CT instance cut to half its length (pixel data incomplete)"})

    not_dicom = landing / "dicom" / folder / "IM_9002.dcm"
    atomic_write_text(not_dicom, "PACS EXPORT LOG\nexport job finished with 0 errors\nthis file is a text log saved with a .dcm name\n")
    bad.append({"path": str(not_dicom.relative_to(landing.parent)), "problem": "not DICOM: plain text with a .dcm name (no preamble/DICM)"})

    broken_vcf = landing / "genomics" / "BROKEN_1.vcf.gz"
    header, body = vcf_bgzf(victim, seed)
    atomic_write_bytes(broken_vcf, header + body[: len(body) // 2])
    bad.append({"path": str(broken_vcf.relative_to(landing.parent)),
                "problem": "truncated BGZF stream: header intact, records block cut in half, no EOF block; sample is an existing patient's MRN"})

    lines = csv_texts["conditions"].split("\n")
    first_row = next(csv.DictReader(io.StringIO(csv_texts["conditions"])))
    malformed = f"{first_row['START']},,{victim.mrn},{first_row['ENCOUNTER']},363346000,Malignant neoplasm, primary site unknown (disorder)"
    lines.insert(2, malformed)
    csv_texts["conditions"] = "\n".join(lines)
    bad.append({"path": "landing/ehr/csv/conditions.csv", "line": 3, "problem": "malformed CSV row: 7 fields instead of 6 (unquoted comma in DESCRIPTION)"})
    return bad


def _patient_canaries(plan: PatientPlan) -> list[str]:
    """Every patient-identifying string planted anywhere (the privacy tests search de-identified output for them)."""
    b = plan.birth_date
    strings = {
        plan.mrn, plan.other_mrn, plan.full_name, plan.dicom_name, f"{plan.last.upper()}, {plan.first.upper()}",
        f"{plan.prefix} {plan.last}", plan.first, plan.last, plan.ssn, plan.drivers_license,
        plan.passport, plan.street, plan.address_line, plan.phone, b.strftime("%Y%m%d"), b.isoformat(), b.strftime("%m/%d/%Y"),
        repr(plan_latitude(plan)), repr(plan_longitude(plan)),
    }
    for study in plan.studies:
        strings |= {study.accession, f"RP{study.accession[3:]}"}
        if plan.last.upper() in study.description:
            strings.add(f"{plan.last.upper()} {plan.first.upper()}")
    return sorted(strings)


def _patient_truth(plan: PatientPlan) -> dict:
    kb = knowledge()
    labs = dict(plan.labs)
    return {
        "index": plan.index,
        "sex": plan.sex,
        "age": plan.age,
        "age_90_or_over": plan.age >= 90,
        "zip3_restricted": bool(plan.place.get("restricted_zip3")),
        "cancer_type": plan.cancer_type,
        "cancer_snomed": kb["cancers"][plan.cancer_type]["snomed"],
        "stage": {"tnm": plan.stage_tnm, "group": plan.stage_group},
        "ecog": plan.ecog,
        "smoking_status": plan.smoking,
        "pack_years": plan.pack_years,
        "diagnosis_date": plan.diagnosis_date.isoformat(),
        "somatic_variants": [
            {"gene": v["gene"], "protein_change": v["protein_change"], "chrom": v["chrom"], "pos": v["pos"], "ref": v["ref"],
             "alt": v.get("alt", f"N]{v.get('mate_chrom')}:{v.get('mate_pos')}]"), "vaf": v["vaf"], "hgvsc": v.get("hgvsc"),
             "transcript": v.get("transcript")}
            for v in plan.somatic
        ],
        "biomarker_status": plan.tested_markers,
        "vcf_has_csq": plan.csq_annotated,
        "pgx": plan.pgx,
        "first_line_therapy": plan.therapy,
        "targeted_match": plan.targeted_match,
        "comorbidities": [c["snomed"] for c in plan.comorbidities],
        "medications_rxnorm": sorted({kb["drugs_rxnorm"][c["drug"]] for c in plan.comorbidities if c["drug"]} | {kb["drugs_rxnorm"][d] for d in plan.therapy}),
        "labs_canonical_units": {**labs, "creatinine_umol": round(labs["creatinine_mgdl"] * CREATININE_MGDL_TO_UMOL, 1)},
        "creatinine_reported_in_umol": plan.creatinine_in_umol,
        "weight_kg": plan.weight_kg,
        "height_cm": plan.height_cm,
        "texture_heterogeneity": round(plan.heterogeneity, 6),
        "outcome": {"responder": plan.responder, "probability": plan.outcome_probability, "features": plan.outcome_features,
                    "probability_by_therapy": plan.probability_by_therapy},
        "studies": [],
        "notes": [],
    }


def _study_truth(plan: PatientPlan, study, labels: np.ndarray, geo: ct.Geometry, study_uids: dict) -> dict:
    voxel_ml = geo.spacing_xy * geo.spacing_xy * geo.spacing_z / 1000.0
    lesions = []
    for number in range(1, len(study.lesions) + 1):
        voxels = np.argwhere(labels == number)
        if len(voxels) == 0:
            continue
        k, j, i = voxels.mean(axis=0)
        lesions.append({
            "label": number,
            "site": study.lesions[number - 1].site,
            "center_mm": [round(v, 2) for v in (geo.origin[0] + i * geo.spacing_xy, geo.origin[1] + j * geo.spacing_xy, geo.origin[2] + k * geo.spacing_z)],
            "volume_ml": round(len(voxels) * voxel_ml, 3),
            "voxels": int(len(voxels)),
        })
    return {
        "study_index": study.index,
        "study_date": study.date.isoformat(),
        "study_instance_uid": study_uids["study"],
        "series_instance_uid": study_uids["series"],
        "n_slices": study.n_slices,
        "pixel_spacing_mm": study.pixel_spacing,
        "slice_thickness_mm": study.slice_thickness,
        "has_seg": study.has_seg,
        "seg_sop_instance_uid": study_uids["seg_instance"] if study.has_seg else None,
        "mask": f"truth/masks/{plan.mrn}_{study.index}.nii.gz",
        "lesion_count": len(lesions),
        "lesions": lesions,
        "total_volume_ml": round(sum(lesion["volume_ml"] for lesion in lesions), 3),
    }
