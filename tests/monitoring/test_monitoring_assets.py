"""model_monitoring and clinician_feedback materialized on a small lake, and the retraining sensor on the same instance.

The lake holds a 40-patient synthetic cohort (tests/models/models_synthetic.py), its training snapshot and
predictions, and recommendations from the packaged rule base, so feedback answers real recommendation ids.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetCheckSeverity, DagsterInstance, RunRequest, SkipReason, build_sensor_context, materialize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))

from models_synthetic import response_cohort  # noqa: E402
from radplan import monitoring  # noqa: E402
from radplan.decision.recommend import recommend_for_patient  # noqa: E402
from radplan.decision.rules import load_rule_base  # noqa: E402
from radplan_assets.monitoring import clinician_feedback, model_monitoring  # noqa: E402
from radplan_resources import LakeResource, LandingZoneResource  # noqa: E402
from sensors.retraining import retraining_sensor  # noqa: E402
from support import with_lake_io, with_upstream_sources

HEADER = ",".join(monitoring.FEEDBACK_COLUMNS)


@pytest.fixture()
def lake_and_landing(tmp_path):
    lake = LakeResource(root=str(tmp_path / "lake"))
    landing = LandingZoneResource(folder=str(tmp_path / "landing"))
    features, _, therapy, truth = response_cohort(40, seed=3)
    # Capecitabine beside the first-line drug: DPYD alerts are raised only for a fluoropyrimidine in play (issue 17),
    # and they are what gives one rule enough recommendations for the override-rate check below.
    features["current_medications"] = [[drug, "capecitabine"] for drug in therapy]
    lake.write_table(features, "features", "cohort_features")
    predictions = pd.DataFrame({"patient_key": features["patient_key"], "probability": truth.to_numpy(), "ci_low": None, "ci_high": None,
                                "top_attributions": None, "model_name": "radplan-response", "model_version": "1"})
    lake.write_table(predictions, "features", "response_predictions")
    lake.write_table(monitoring.training_snapshot(features.set_index("patient_key", drop=False), predictions, "1"), "features",
                     "response_training_snapshot")
    rule_base = load_rule_base()
    for facts in features.to_dict("records"):
        mine = predictions[predictions["patient_key"] == facts["patient_key"]]
        table = recommend_for_patient(facts, rule_base, model_predictions=mine, trials=[],
                                      versions={"model_name": "radplan-response", "model_version": "1"})
        lake.write_table(table, "features", "patient_recommendations", facts["patient_key"])
    return lake, landing


def _materialize(assets, lake, landing, instance):
    result = materialize(with_upstream_sources(assets), resources=with_lake_io({"lake": lake, "landing": landing}), instance=instance)
    assert result.success
    metadata = {name: {k: v.value for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}
                for name in (a.key.to_user_string() for a in assets)}
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return metadata, checks


def _tick(instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    return retraining_sensor(context), context.cursor


def _latest_storage_id(instance, name):
    from dagster import AssetKey

    return instance.fetch_materializations(AssetKey(name), limit=1).records[0].storage_id


def test_no_feedback_no_drift_then_overrides_request_retraining_once(lake_and_landing):
    lake, landing = lake_and_landing
    instance = DagsterInstance.ephemeral()
    nothing_yet, cursor = _tick(instance, None)
    assert isinstance(nothing_yet, SkipReason)

    # The demo state: the cohort is the training cohort and no clinician has answered (no feedback folder at all).
    metadata, checks = _materialize([model_monitoring, clinician_feedback], lake, landing, instance)
    drift, feedback = metadata["model_monitoring"], metadata["clinician_feedback"]
    assert drift["max_psi"] == 0.0 and drift["drift_detected"] is False and drift["reference_model_version"] == "1"
    assert drift["reference_patients"] == drift["current_patients"] == 40
    assert feedback["feedback_files"] == 0 and feedback["decisions"] == 0 and feedback["override_rate_exceeded"] is False
    assert feedback["override_note"] == "no clinician feedback yet"
    assert all(check.passed for check in checks.values()) and set(checks) == {
        "input_drift_below_threshold", "missingness_not_rising", "override_rate_below_threshold"}
    assert lake.read_table("features", "clinician_feedback").empty and lake.read_table("features", "override_rates").empty
    quiet, cursor = _tick(instance, cursor)
    assert isinstance(quiet, SkipReason)

    # Clinicians override most recommendations of the most frequent rule.
    recommendations = lake.read_table("features", "patient_recommendations")
    rule_of = recommendations["rule_ids"].map(json.loads)
    top_rule = rule_of.explode().value_counts().index[0]
    ids = recommendations.loc[rule_of.map(lambda rules: top_rule in rules), "recommendation_id"].tolist()
    assert len(ids) >= 8, "the synthetic cohort gives the top rule enough recommendations"
    overridden, accepted = ids[:6], ids[6:8]
    rows = [f"{rid},override,toxicity_risk,oncologist-03,2026-11-20T09:00:00Z" for rid in overridden]
    rows += [f"{rid},accept,,oncologist-07,2026-11-20T10:00:00Z" for rid in accepted]
    rows.insert(2, f"{accepted[0]},accept,,Jane Roe,2026-11-20T10:00:00Z")  # a clinician's name: rejected row (line 4)
    feedback_dir = landing.feedback_dir
    feedback_dir.mkdir(parents=True)
    (feedback_dir / "tumorboard_2026-11-20.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (feedback_dir / "decisions.xlsx").write_bytes(b"PK\x03\x04 not a csv")
    (feedback_dir / ".upload-in-progress.csv").write_text("half a file")

    metadata, checks = _materialize([clinician_feedback], lake, landing, instance)
    feedback = metadata["clinician_feedback"]
    assert (feedback["feedback_files"], feedback["files_used"], feedback["rows_valid"], feedback["rows_rejected"]) == (2, 1, 8, 1)
    assert (feedback["decisions"], feedback["matched"], feedback["overrides"]) == (8, 8, 6)
    assert feedback["max_override_rate"] == pytest.approx(6 / 8) and feedback["override_rate_exceeded"] is True
    assert feedback["max_override_group"] in (f"rule:{top_rule}", "all:all", "model_version:radplan-response/1")
    assert {q["error_class"] for q in feedback["quarantined"]} == {"InvalidFeedbackError"} and len(feedback["quarantined"]) == 2
    check = checks["override_rate_below_threshold"]
    assert not check.passed and check.severity == AssetCheckSeverity.WARN
    everything_logged = json.dumps(feedback, default=str)
    assert "Jane Roe" not in everything_logged and "tumorboard_2026" not in everything_logged

    rates = lake.read_table("features", "override_rates").set_index(["level", "key"])
    assert rates.loc[("rule", top_rule), ["decisions", "overrides"]].tolist() == [8, 6]
    joined = lake.read_table("features", "clinician_feedback")
    assert set(joined["recommendation_id"]) == set(overridden + accepted) and joined["matched"].all()
    assert "Jane Roe" not in set(joined["clinician"])
    reasons = [json.loads(p.read_text()) for p in (lake.root_path / "quarantine" / "feedback").glob("*/reason.json")]
    assert sorted(r["message"].split(":")[0] for r in reasons) == ["1 feedback row(s) rejected, the others used", "feedback files must be CSV (.csv)"]
    assert any("line 4: clinician is not a role or pseudonymous id" in r["message"] for r in reasons)

    request, cursor = _tick(instance, cursor)
    assert isinstance(request, RunRequest)
    assert request.run_key == f"retrain-clinician_feedback.{_latest_storage_id(instance, 'clinician_feedback')}"
    assert request.tags["radplan/retraining_trigger"] == "override_rate_exceeded"
    again, _ = _tick(instance, cursor)
    assert isinstance(again, SkipReason), "one request per triggering materialization"
    restarted, _ = _tick(instance, None)
    assert restarted.run_key == request.run_key, "a sensor that lost its cursor repeats the key, which Dagster drops"
    assert retraining_sensor.job_name == "retraining_job"


def test_drifted_cohort_warns_and_requests_retraining(lake_and_landing):
    lake, landing = lake_and_landing
    instance = DagsterInstance.ephemeral()
    _materialize([model_monitoring], lake, landing, instance)
    _, cursor = _tick(instance, None)

    # A new referral population: older, more anaemic, and a third without imaging.
    cohort = lake.read_table("features", "cohort_features")
    cohort["age_years"] = cohort["age_years"] + 20
    cohort["lab_hemoglobin_g_dl"] = cohort["lab_hemoglobin_g_dl"] - 3
    without_imaging = cohort.index[: len(cohort) // 3]
    cohort.loc[without_imaging, "has_imaging"] = False
    cohort.loc[without_imaging, [c for c in cohort if c.startswith("rad_")]] = None
    lake.write_table(cohort, "features", "cohort_features")

    metadata, checks = _materialize([model_monitoring], lake, landing, instance)
    drift = metadata["model_monitoring"]
    assert drift["drift_detected"] is True and drift["max_psi"] > 0.25
    table = lake.read_table("features", "feature_drift").set_index("feature")
    assert table.loc[["age_years", "lab_hemoglobin_g_dl", "has_imaging"], "drifted"].all()
    assert not table.loc["lab_creatinine_mg_dl", "drifted"] and table.loc["lab_creatinine_mg_dl", "psi"] == 0.0
    assert table.loc["age_years", "ks_statistic"] > 0.5
    assert (table["reference_model_version"] == "1").all()
    assert not checks["input_drift_below_threshold"].passed and checks["input_drift_below_threshold"].severity == AssetCheckSeverity.WARN
    # Imaging missingness went from 0 to 1/3: past the 0.2 increase the data-quality check allows.
    history = lake.read_table("features", "data_quality_history")
    assert history["run_id"].nunique() == 2
    assert drift["missingness_change"]["modality:imaging"] == pytest.approx(len(without_imaging) / len(cohort))
    assert not checks["missingness_not_rising"].passed

    request, cursor = _tick(instance, cursor)
    assert isinstance(request, RunRequest)
    assert request.run_key == f"retrain-model_monitoring.{_latest_storage_id(instance, 'model_monitoring')}"
    assert isinstance(_tick(instance, cursor)[0], SkipReason)


def test_without_a_trained_model_monitoring_reports_no_reference(tmp_path):
    lake = LakeResource(root=str(tmp_path / "lake"))
    features, *_ = response_cohort(12, seed=5)
    lake.write_table(features, "features", "cohort_features")
    metadata, checks = _materialize([model_monitoring], lake, LandingZoneResource(folder=str(tmp_path / "landing")), DagsterInstance.ephemeral())
    drift = metadata["model_monitoring"]
    assert drift["reference_model_version"] == "none" and drift["drift_detected"] is False and drift["features_compared"] == 0
    assert "not been trained" in drift["drift_note"] and drift["predictions"]["n"] == 0
    assert checks["input_drift_below_threshold"].passed
