"""The generator's tabular path: patient_features rows from plans, consistent with the contract and the truth."""

from __future__ import annotations

import math

import pytest

from radplan import cohort
from radplan.synth.cohort import draw_patient
from radplan.synth.tabular import tabular_cohort


@pytest.fixture(scope="module")
def tabular():
    return tabular_cohort(5, 60)


def test_rows_fit_the_patient_features_contract(tabular):
    features, truth = tabular
    table = cohort.patient_features_table(features)  # raises on a column or type outside the contract
    assert table.num_rows == 60 and features["patient_key"].is_unique
    assert list(features["patient_key"]) == list(truth["patient_key"])


def test_rows_carry_the_plan_as_the_ingest_would_read_it(tabular):
    features, truth = tabular
    for row, true in zip(features.itertuples(), truth.itertuples()):
        plan = draw_patient(5, int(row.patient_key.rsplit("-", 1)[1]))
        assert row.ecog == plan.ecog and row.cancer_type == plan.cancer_type and row.stage in ("I", "II", "III", "IV")
        assert plan.stage_group.startswith(row.stage) and (row.stage == "IV") == bool(true.outcome_features["stage_iv"])
        assert math.log(row.total_lesion_volume_ml) - 2.0 == pytest.approx(true.outcome_features["log_tumour_volume_ml_centered_at_2"])
        assert set(d.lower() for d in plan.therapy) <= set(row.current_medications)
        assert row.alt_egfr_sensitizing == any(v["gene"] == "EGFR" for v in plan.somatic)
        assert row.alt_braf_v600e == any(v["protein_change"] == "p.V600E" for v in plan.somatic)
        assert all(getattr(row, f"rad_{f}") is None for f in cohort.RADIOMIC_SUMMARY_FEATURES)
        assert plan.mrn not in row.patient_key and plan.last not in row.patient_key
