"""The cohort table computed on a real local Spark session equals the pandas computation of the same rows."""

from __future__ import annotations

import pandas as pd
import pytest

from radplan import cohort
from radplan_resources import LakeResource, SparkResource


def _patient(key: str, **overrides) -> pd.DataFrame:
    frame = cohort.build_patient_features(
        key,
        clinical=pd.DataFrame([{"age_years": 61.0, "sex": "F", "cancer_type": "nsclc", "ecog": 1, "current_medications": ["osimertinib"]}]),
        radiomics=pd.DataFrame(
            [{"study_date_shifted": "20200101", "volume_ml": 4.0, **{f: 1.0 for f in cohort.RADIOMIC_SUMMARY_FEATURES}}]
        ),
        actionable=pd.DataFrame([{"gene": "EGFR", "alteration": "L858R"}]),
        pgx=pd.DataFrame([{"gene": "CYP2C19", "phenotype": "Poor Metabolizer", "diplotype": "*2/*2", "activity_score": None}]),
        findings=pd.DataFrame(),
        has_genomics=True,
        source_versions={},
    )
    for column, value in overrides.items():
        frame[column] = [value]
    return frame


def write_three_patient_lake(lake: LakeResource) -> None:
    """Three patients' feature rows (one missing imaging, one with no alterations) written as lake partitions."""
    frames = [
        _patient("p0000000000000001"),
        _patient("p0000000000000002", has_imaging=False, cancer_type=None, ecog=None),
        _patient("p00000000000000ff", actionable_alterations=[], pgx_CYP2C19_phenotype=None),
    ]
    for frame in frames:
        lake.write_table(cohort.patient_features_table(frame), "features", "patient_features", frame["patient_key"].iloc[0])


@pytest.mark.slow
def test_spark_cohort_table_equals_pandas(tmp_path):
    lake = LakeResource(root=str(tmp_path))
    write_three_patient_lake(lake)

    session = SparkResource(master="local[1]").session()
    on_spark = cohort.cohort_table_spark(session, str(tmp_path / "features" / "patient_features"))
    on_pandas = cohort.add_cohort_columns_pandas(lake.read_table("features", "patient_features"))

    assert list(on_spark["patient_key"]) == ["p0000000000000001", "p0000000000000002", "p00000000000000ff"]
    for column in ("modalities_present", "actionable_count", "pgx_calls", "has_imaging", "cancer_type", "ecog", "age_years"):
        left, right = on_spark[column].tolist(), on_pandas[column].tolist()
        assert [None if pd.isna(v) else v for v in left] == [None if pd.isna(v) else v for v in right], column
    assert on_spark["modalities_present"].tolist() == [3, 2, 3]
    assert on_spark["actionable_count"].tolist() == [1, 1, 0]
    assert on_spark["pgx_calls"].tolist() == [1, 1, 0]

    # cohort_features reads the compacted snapshot (one file): the same table; a patient rewritten afterwards is seen.
    via_snapshot = cohort.cohort_table_spark(session, str(lake.compacted_table("features", "patient_features")))
    pd.testing.assert_frame_equal(via_snapshot, on_spark)
    lake.write_table(cohort.patient_features_table(_patient("p0000000000000002")), "features", "patient_features", "p0000000000000002")
    refreshed = cohort.cohort_table_spark(session, str(lake.compacted_table("features", "patient_features")))
    assert refreshed["modalities_present"].tolist() == [3, 3, 3] and refreshed["cancer_type"].tolist() == ["nsclc"] * 3
