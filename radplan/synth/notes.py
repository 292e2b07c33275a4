"""Free-text clinical notes (FHIR R4 DocumentReference) whose facts agree with the structured data.

Each note carries the PHI a real note does (full name and variants, MRN, DOB, phone, address,
dates, institution, physician) and clinical content: diagnosis, TNM stage, ECOG, smoking, and
biomarker results phrased with negation ("negative for ALK rearrangement").
"""

from __future__ import annotations

import base64
import datetime as dt

from radplan.synth.cohort import PatientPlan, age_on, knowledge, patient_rng, stable_uuid
from radplan.synth.ehr import therapy_start

SMOKING_PHRASES = {
    "never": "Never smoker.",
    "former": "Former smoker, {pack_years} pack-years.",
    "current": "Current every-day smoker, {pack_years} pack-years; cessation counselling offered.",
}


def _long_date(day: dt.date) -> str:
    return f"{day.strftime('%B')} {day.day}, {day.year}"


def _us_date(day: dt.date) -> str:
    return day.strftime("%m/%d/%Y")


def _article(number: int) -> str:
    return "an" if str(number).startswith("8") or number in (11, 18) else "a"


def biomarker_sentences(plan: PatientPlan) -> list[str]:
    kb = knowledge()
    by_gene = {variant["gene"]: variant for variant in plan.somatic}
    sentences = []
    for marker in kb["cancers"][plan.cancer_type]["tested_markers"]:
        sentences.append(by_gene[marker]["note_positive"] if marker in by_gene else kb["marker_negative_phrases"][marker])
    sentences += [v["note_positive"] for v in plan.somatic if v["gene"] not in kb["cancers"][plan.cancer_type]["tested_markers"]]
    return sentences


def _header(plan: PatientPlan, title: str, day: dt.date) -> str:
    return (
        f"{title}\n{plan.institution['name']}\n{plan.institution['address']}    Tel {plan.institution['phone']}\n\n"
        f"Patient: {plan.last.upper()}, {plan.first.upper()}    MRN: {plan.mrn}    DOB: {_us_date(plan.birth_date)}\n"
        f"Date of service: {_us_date(day)}\n"
    )


def _diameter_mm(lesion) -> float:
    return 2.0 * sum(lesion.radii_mm) / 3.0


def clinical_notes(plan: PatientPlan, seed: int) -> list[tuple[str, dt.date, str]]:
    """(note type key, date, text) for 2-5 notes of the patient."""
    kb = knowledge()
    rng = patient_rng(seed, plan.index, "notes")
    cancer = kb["cancers"][plan.cancer_type]
    pronoun, noun = ("He", "man") if plan.sex == "M" else ("She", "woman")
    honorific = f"{plan.prefix} {plan.last}"
    smoking = SMOKING_PHRASES[plan.smoking].format(pack_years=plan.pack_years)
    biomarkers = "; ".join(biomarker_sentences(plan))
    therapy = " plus ".join(plan.therapy)
    notes = []

    consult_day = plan.diagnosis_date + dt.timedelta(days=7)
    notes.append(("consult", consult_day, _header(plan, "MEDICAL ONCOLOGY CONSULTATION", consult_day) + (
        f"Referring physician: Dr. {plan.oncologist}\n"
        f"Home address: {plan.address_line}    Phone: {plan.phone}\n\n"
        f"{honorific} is {_article(age_on(plan, consult_day))} {age_on(plan, consult_day)}-year-old {noun} referred for newly diagnosed {cancer['label']}, "
        f"biopsy-proven on {_long_date(plan.diagnosis_date)}.\n"
        f"Diagnosis: {cancer['label']}, {plan.stage_tnm}, stage {plan.stage_group}.\n"
        f"Performance status: ECOG {plan.ecog}.\n"
        f"Social history: {smoking}\n"
        f"Biomarkers: {biomarkers}.\n"
        f"Assessment and plan: I discussed the findings with {plan.first} and family. We recommend first-line {therapy}. "
        f"{pronoun} agrees with the plan.\n\n"
        f"Electronically signed by {plan.oncologist}, MD on {_us_date(consult_day)}"
    )))

    molecular_day = plan.diagnosis_date + dt.timedelta(days=int(rng.integers(9, 20)))
    variant_lines = [
        f"  {v['gene']} {v.get('hgvsc', '')} {v['protein_change']} (VAF {v['vaf'] * 100:.0f}%)".replace("  ", " ", 1)
        for v in plan.somatic
    ] or ["  No pathogenic somatic variants detected in the genes tested."]
    pgx_lines = [f"  {gene} {call['diplotype']}" + (f" ({call['phenotype'].lower()})" if call["phenotype"] else "")
                 for gene, call in plan.pgx.items() if gene != "VKORC1"]
    pgx_lines.append(f"  VKORC1 rs9923231 (c.-1639G>A) genotype {plan.pgx['VKORC1']['rs9923231_genotype']}")
    notes.append(("molecular", molecular_day, _header(plan, "MOLECULAR PATHOLOGY REPORT", molecular_day) + (
        f"Specimen: tumour biopsy collected {_us_date(plan.diagnosis_date)}; ordering physician Dr. {plan.oncologist}.\n"
        "Method: hybrid-capture NGS panel, GRCh38.\n"
        "Somatic results:\n" + "\n".join(variant_lines) + "\n"
        f"Interpretation: {biomarkers}.\n"
        "Germline pharmacogenomics:\n" + "\n".join(pgx_lines) + "\n"
    )))

    baseline = plan.studies[0]
    findings = "; ".join(
        f"lesion {i} in the {'lung' if lesion.site == 'lung' else 'soft tissue'} measuring {_diameter_mm(lesion):.0f} mm"
        for i, lesion in enumerate(baseline.lesions, start=1)
    )
    notes.append(("radiology", baseline.date, _header(plan, "CT CHEST/ABDOMEN WITH CONTRAST", baseline.date) + (
        f"Accession: {baseline.accession}    Requested by: Dr. {plan.oncologist}\n"
        f"Indication: staging of {cancer['label']} in {plan.first} {plan.last}.\n"
        f"Findings: {len(baseline.lesions)} target lesion(s): {findings}.\n"
        f"Impression: findings compatible with known malignancy, {plan.stage_tnm}.\n"
        f"Dictated by {baseline.physician}, MD"
    )))

    if len(plan.studies) > 1:
        follow_up = plan.studies[1]
        response = "partial response" if plan.responder else "progressive disease"
        change = "decreased" if plan.responder else "increased"
        notes.append(("progress", follow_up.date + dt.timedelta(days=2), _header(plan, "ONCOLOGY PROGRESS NOTE", follow_up.date) + (
            f"{plan.first} returns after restaging CT on {_long_date(follow_up.date)} while on {therapy} since {_us_date(therapy_start(plan))}.\n"
            f"Target lesions have {change} in size compared with {_us_date(baseline.date)}; overall RECIST assessment: {response}.\n"
            f"ECOG {plan.ecog}. {smoking}\n"
            f"Plan discussed with {honorific}; callback number {plan.phone}.\n"
            f"{plan.oncologist}, MD"
        )))

    actionable = [f"{gene}: {call['phenotype'].lower()}" for gene, call in plan.pgx.items()
                  if call["phenotype"] and not call["phenotype"].startswith("Normal")]
    if actionable and len(notes) < 5:
        day = therapy_start(plan) - dt.timedelta(days=3)
        meds = sorted({c["drug"] for c in plan.comorbidities if c["drug"]} | set(plan.therapy))
        notes.append(("pharmacy", day, _header(plan, "CLINICAL PHARMACY PHARMACOGENOMIC REVIEW", day) + (
            f"Reviewed for {plan.first} {plan.last} ({plan.mrn}) at the request of Dr. {plan.oncologist}.\n"
            f"Current and planned medications: {', '.join(meds)}.\n"
            f"Relevant PGx phenotypes: {'; '.join(actionable)}.\n"
            "Recommendations per CPIC guidelines to follow in the medication plan."
        )))
    return notes


def document_reference(plan: PatientPlan, seed: int, number: int, kind: str, day: dt.date, text: str) -> dict:
    code, display = knowledge()["note_types"][kind]
    return {
        "resourceType": "DocumentReference",
        "id": stable_uuid(seed, "note", plan.index, number),
        "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                                   "code": "clinical-note", "display": "Clinical Note"}]}],
        "subject": {"reference": f"Patient/{plan.mrn}"},
        "date": f"{day.isoformat()}T14:00:00-05:00",
        "author": [{"display": f"Dr. {plan.oncologist}"}],
        "custodian": {"display": plan.institution["name"]},
        "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}}],
        "context": {"period": {"start": f"{day.isoformat()}T14:00:00-05:00"}},
    }
