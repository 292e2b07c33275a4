"""The generator's tabular path: patient_features contract rows straight from patient plans, no files written.

For model work at a size the full delivery (DICOM rendering, VCFs, EHR extracts) would take hours to
produce and ingest. Rows go through the pipeline's own row builder (:func:`radplan.cohort.build_patient_features`)
from the values the ingest would read back, with these documented differences from a full run:

- lesion volumes are the plan's main-ellipsoid volumes of the baseline study (the outcome model's own
  tumour-burden input), not volumes measured on rendered masks; ``rad_*`` radiomic columns are null,
  since no image is rendered, so the texture term of the outcome model is not observable here;
- no notes: ``has_notes`` is false and there are no biomarker mentions; stage, ECOG and smoking come
  from the plan as the EHR would state them;
- ``prior_lines_of_therapy`` is 0 (the generator's patients are all on their first line);
- patient keys are ``synth-<seed>-<index>`` (no PHI: the plan's names and MRN are never read).
"""

from __future__ import annotations

import pandas as pd

from radplan import cohort
from radplan.synth.cohort import PatientPlan, approx_lesion_volume_ml, draw_patient

AGE_CAP = 90  # Safe Harbor: ages over 89 are reported as 90, as the de-identified EHR does


def patient_key(seed: int, index: int) -> str:
    return f"synth-{seed}-{index}"


def patient_features_row(plan: PatientPlan, seed: int) -> pd.DataFrame:
    """One patient_features row for one plan (see the module docstring for what differs from a full run)."""
    clinical = pd.DataFrame([{
        "age_years": float(min(plan.age, AGE_CAP)),
        "sex": plan.sex,
        "cancer_type": plan.cancer_type,
        "stage": plan.stage_group.rstrip("ABC"),
        "tnm": plan.stage_tnm,
        "ecog": plan.ecog,
        "smoking_status": plan.smoking,
        "prior_lines_of_therapy": 0,
        "lab_creatinine_mg_dl": plan.labs["creatinine_mgdl"],
        "lab_bilirubin_mg_dl": plan.labs["bilirubin"],
        "lab_alt_u_l": plan.labs["alt"],
        "lab_anc_10e9_l": plan.labs["anc"],
        "lab_hemoglobin_g_dl": plan.labs["hemoglobin"],
        "current_medications": sorted({d.lower() for d in plan.therapy} | {c["drug"] for c in plan.comorbidities if c["drug"]}),
    }])
    baseline = plan.studies[0]
    radiomics = pd.DataFrame({
        "study_date_shifted": baseline.date.isoformat(),
        "volume_ml": [approx_lesion_volume_ml(lesion) for lesion in baseline.lesions],
    })
    somatic = [(v["gene"], v["protein_change"]) for v in plan.somatic]
    actionable = pd.DataFrame([{"gene": g, "alteration": a} for g, a in somatic if any(cohort._alteration_flags([(g, a)]).values())],
                              columns=["gene", "alteration"])
    pgx = pd.DataFrame([
        {"gene": gene, "diplotype": call["diplotype"], "activity_score": call.get("activity_score"),
         "phenotype": f"rs9923231 {call['rs9923231_genotype']}" if gene == "VKORC1" else call["phenotype"]}
        for gene, call in plan.pgx.items()
    ])
    findings = pd.DataFrame(columns=["finding", "value", "negated"])
    return cohort.build_patient_features(patient_key(seed, plan.index), clinical, radiomics, actionable, pgx, findings,
                                         has_genomics=True, source_versions={"generator": "radplan.synth.tabular"})


def tabular_cohort(seed: int, n: int, start: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(patient_features, truth) for patients ``start .. start + n - 1`` of cohort ``seed``.

    truth: patient_key, therapy (the regimen given), responded, true_probability (under the given
    regimen), probability_by_therapy (regimen name -> true probability under each first-line option)
    and outcome_features (the outcome model's inputs, see :mod:`radplan.synth.cohort`).
    """
    rows, truth = [], []
    for index in range(start, start + n):
        plan = draw_patient(seed, index)
        rows.append(patient_features_row(plan, seed))
        truth.append({"patient_key": patient_key(seed, index), "therapy": " + ".join(sorted(d.lower() for d in plan.therapy)),
                      "responded": int(plan.responder), "true_probability": plan.outcome_probability,
                      "probability_by_therapy": dict(plan.probability_by_therapy),
                      "outcome_features": dict(plan.outcome_features)})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(truth)
