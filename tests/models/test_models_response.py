"""Response model: design matrix, metrics, Shapley attributions, CV comparison, MLflow champion/challenger."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, precision_score, recall_score, roc_auc_score

from models_synthetic import response_cohort
from radplan.errors import RadplanInputError
from radplan.models import registry
from radplan.models.response import (
    CANDIDATES,
    _weighted_metrics,
    feature_groups,
    feature_matrix,
    model_report_entry,
    predict_response,
    rule_scores,
    shapley_attributions,
    train_response_models,
)

FAST = dict(n_splits=5, seed=0, n_bootstrap=300, n_permutations=4)


def test_feature_matrix_encodes_the_contract():
    features, _, therapy, _ = response_cohort(12, seed=1)
    features.loc[0, ["pgx_CYP2C19_phenotype", "cancer_type", "stage"]] = ["Poor Metabolizer", None, "IIIa"]
    features.at[1, "biomarker_mentions"] = ["PD-L1 TPS 60%", "HER2 3+", "MSI-H"]
    features.loc[2, "has_imaging"] = False
    features.loc[2, ["rad_original_shape_Sphericity", "lesion_count"]] = [None, None]
    X, names = feature_matrix(features, therapy)
    assert "patient_key" not in names and list(X.index) == list(features["patient_key"])
    assert X.dtypes.eq(float).all()
    key0, key1, key2 = features["patient_key"][:3]
    assert X.at[key0, "pgx_CYP2C19_ordinal"] == 0.0
    assert X.loc[key0, [c for c in names if c.startswith("cancer_type_")]].sum() == 0.0, "unknown category is all zeros"
    assert np.isnan(X.at[key0, "stage_ordinal"]), "an unparseable stage is unknown, not a guess"
    assert (X.at[key1, "pdl1_tps_percent"], X.at[key1, "her2_ihc_score"], X.at[key1, "msi_high"]) == (60.0, 3.0, 1.0)
    assert X.at[key2, "has_imaging"] == 0.0 and np.isnan(X.at[key2, "rad_original_shape_Sphericity"])
    vkorc1 = features.set_index("patient_key")["pgx_VKORC1_phenotype"].map({"rs9923231 C/C": 0.0, "rs9923231 C/T": 1.0, "rs9923231 T/T": 2.0})
    assert X["pgx_VKORC1_ordinal"].equals(vkorc1.rename("pgx_VKORC1_ordinal"))
    matched = (therapy == "osimertinib") & features.set_index("patient_key")["alt_egfr_sensitizing"]
    assert X["therapy_targets_driver"].astype(bool).equals(matched.rename("therapy_targets_driver"))
    # One-hot columns do not depend on which categories this cohort happens to contain.
    assert feature_matrix(features.iloc[:3])[1] == feature_matrix(features)[1]
    groups = feature_groups(names)
    assert groups["cancer_type"] == [f"cancer_type_{c}" for c in ("nsclc", "breast", "colorectal", "melanoma", "other")]
    with pytest.raises(RadplanInputError, match="one row per patient"):
        feature_matrix(pd.concat([features, features.iloc[:1]]))


def test_rule_score_follows_the_documented_rule():
    features, _, therapy, _ = response_cohort(60, seed=2)
    scores = rule_scores(features, therapy)
    table = features.set_index("patient_key")
    matched = (therapy == "osimertinib") & table["alt_egfr_sensitizing"]
    expected = 2.0 * matched + (table["ecog"] <= 1).astype(float)
    assert scores.to_numpy().tolist() == expected.astype(float).to_numpy().tolist()


def test_vectorised_metrics_match_sklearn():
    rng = np.random.default_rng(5)
    y = (rng.random(150) < 0.4).astype(float)
    p = np.round(np.clip(0.3 * y + rng.random(150) * 0.7, 0, 1), 2)  # rounding creates ties
    weights = np.bincount(rng.integers(0, 150, 150), minlength=150)
    got = {name: values[0] for name, values in _weighted_metrics(y, p, weights[None, :]).items()}
    idx = np.repeat(np.arange(150), weights)
    yb, pb, cut = y[idx], p[idx], (p[idx] >= 0.5).astype(float)
    expected = {"auc": roc_auc_score(yb, pb), "accuracy": accuracy_score(yb, cut), "precision": precision_score(yb, cut),
                "recall": recall_score(yb, cut), "f1": f1_score(yb, cut), "brier": brier_score_loss(yb, pb)}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_shapley_is_exact_for_an_additive_model_and_sums_to_the_prediction():
    rng = np.random.default_rng(0)
    weights = np.array([0.5, -1.0, 2.0, 0.0])
    X, background = rng.normal(size=(6, 4)), rng.normal(size=(1, 4))
    linear = lambda a: a @ weights  # noqa: E731
    contributions, base = shapley_attributions(linear, X, background, [[0], [1], [2], [3]], n_permutations=6)
    np.testing.assert_allclose(contributions, (X - background) * weights, atol=1e-12)
    # An interaction model: efficiency (base + sum = prediction) must still hold exactly.
    product = lambda a: a[:, 0] * a[:, 1] + np.sin(a[:, 2])  # noqa: E731
    contributions, base = shapley_attributions(product, X, rng.normal(size=(20, 4)), [[0, 1], [2], [3]], n_permutations=8)
    np.testing.assert_allclose(base + contributions.sum(axis=1), product(X), atol=1e-12)
    # Dummy axiom: the model ignores feature 3, so its group gets exactly nothing.
    np.testing.assert_array_equal(contributions[:, 2], 0.0)
    assert np.abs(contributions[:, 0]).sum() > 0 and np.abs(contributions[:, 1]).sum() > 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("response")
    features, labels, therapy, truth = response_cohort(240, seed=0)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    result = train_response_models(features, labels, therapy=therapy, tracking_uri=tracking_uri, artifact_root=root / "artifacts",
                                   true_probabilities=truth, **FAST)
    return result, features, labels, therapy, tracking_uri, root


def test_best_model_approaches_bayes_auc_and_beats_the_rules(trained):
    result, features, labels, *_ = trained
    metrics = result["cv_metrics"]
    assert set(metrics) == set(CANDIDATES)
    best = metrics[result["best_candidate"]]
    bayes = result["bayes_optimal_auc"]["value"]
    assert best["auc"]["value"] > result["baseline_auc"]["value"]
    assert best["auc"]["value"] > bayes - 0.08, (best["auc"]["value"], bayes)
    assert best["auc"]["value"] < bayes + 0.05, "CV AUC far above the Bayes AUC means leakage"
    # Calibration: better Brier than always predicting the prevalence.
    prevalence = labels.mean()
    assert best["brier"]["value"] < prevalence * (1 - prevalence)
    for candidate in metrics.values():
        for stats in candidate.values():
            assert stats["ci_low"] <= stats["value"] <= stats["ci_high"]


def test_model_is_logged_registered_and_explains_predictions(trained):
    result, features, labels, therapy, tracking_uri, root = trained
    client = registry.mlflow_client(tracking_uri, root / "artifacts")
    run = client.get_run(result["run_id"])
    assert run.data.params["candidate"] == result["best_candidate"]
    assert "bayes_optimal_auc" in run.data.metrics and "cv_rules_baseline_auc_ci_low" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"feature_importance.png", "predictions.parquet", "cv_report.json"} <= artifacts
    assert (result["version"], result["alias"]) == (1, "champion")

    model, version = registry.load_champion(client, "radplan-response")
    assert version == 1
    with pytest.raises(ValueError, match="therapy"):
        predict_response(model, features.head(3))
    predictions = predict_response(model, features.head(20), therapy=therapy, n_permutations=4)
    assert list(predictions["patient_key"]) == list(features["patient_key"][:20])
    assert predictions["probability"].between(0, 1).all()
    assert (predictions["ci_low"] <= predictions["ci_high"]).all() and predictions["ci_low"].between(0, 1).all()
    attributions = predictions["top_attributions"].iloc[0]
    assert len(attributions) == 5 and set(attributions[0]) == {"feature", "value", "contribution"}
    # Additivity of the stored attributions is checked on all groups in the Shapley test; here the
    # strongest true drivers must dominate the global importance.
    top = list(result["global_importance"])[:4]
    assert {"ecog", "therapy_targets_driver", "alt_egfr_sensitizing", "total_lesion_volume_ml", "largest_lesion_volume_ml"} & set(top)

    entry = model_report_entry(result)
    json.dumps(entry)
    assert entry["baseline_auc"] == result["baseline_auc"] and entry["mlflow_version"] == 1
    assert not any(key in json.dumps(entry) for key in features["patient_key"]), "the report carries no patient keys"


@pytest.mark.slow
def test_worse_retraining_stays_challenger_and_drift_retraining_is_promoted(trained):
    result, _, _, _, tracking_uri, root = trained
    # Fewer, new patients from the same population, a third of their outcomes recorded wrongly: a model
    # learnt from them ranks worse than the champion (trained on more, clean outcomes), which stays.
    small, small_labels, small_therapy, _ = response_cohort(70, seed=21)
    miscoded = np.random.default_rng(5).random(len(small_labels)) < 0.33
    small_labels = small_labels.where(~miscoded, 1 - small_labels)
    worse = train_response_models(small, small_labels, therapy=small_therapy, tracking_uri=tracking_uri, artifact_root=root / "artifacts", **FAST)
    comparison = worse["champion_comparison"]
    assert worse["alias"] == "challenger" and comparison["champion_version_before"] == 1
    assert comparison["champion_value"] >= comparison["new_value"]
    client = registry.mlflow_client(tracking_uri, root / "artifacts")
    tags = client.get_model_version("radplan-response", worse["version"]).tags
    assert tags["comparison.decision"] == "challenger" and tags["comparison.metric"] == "auc"

    # A population whose response now depends on other features: the old champion fails on it and is replaced.
    drifted, drifted_labels, drifted_therapy, _ = response_cohort(240, seed=33, truth="radiomic")
    better = train_response_models(drifted, drifted_labels, therapy=drifted_therapy, tracking_uri=tracking_uri, artifact_root=root / "artifacts", **FAST)
    assert better["alias"] == "champion" and better["champion_comparison"]["promoted"]
    assert better["champion_comparison"]["champion_value"] < better["champion_comparison"]["new_value"]
    assert int(client.get_model_version_by_alias("radplan-response", "champion").version) == better["version"]
