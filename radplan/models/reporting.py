"""Training the response model end to end: fit (:mod:`radplan.models.training`), explain, log to MLflow,
register through champion/challenger, and the PHI-free model report entry."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.metrics import roc_auc_score

from radplan.models import registry
from radplan.models.candidates import CANDIDATES
from radplan.models.explanation import importance_plot
from radplan.models.features import encodings, feature_matrix
from radplan.models.prediction import _predict_and_explain
from radplan.models.training import ResponseModel, fit_response_model, single_threaded

MODEL_ARTIFACT = "model"


def _champion_auc(client, model_name: str, patient_features: pd.DataFrame, therapy: pd.Series | None, y: np.ndarray) -> float | None:
    champion = registry.champion_version(client, model_name)
    if champion is None:
        return None
    model: ResponseModel = registry.load_model_version(client, champion)
    if model.uses_therapy and therapy is None:
        return float("nan")
    design, _ = feature_matrix(patient_features, therapy if model.uses_therapy else None)
    return float(roc_auc_score(y, model.predict_proba(design)[:, 1]))


@single_threaded
def train_response_models(
    patient_features: pd.DataFrame,
    labels: pd.Series,
    *,
    therapy: pd.Series | None = None,
    n_splits: int = 5,
    seed: int = 0,
    tracking_uri: str,
    artifact_root: Path,
    model_name: str = "radplan-response",
    true_probabilities: pd.Series | None = None,
    n_bootstrap: int = 1000,
    n_permutations: int = 16,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate the five candidates, choose and refit the champion, log and register it; returns a PHI-free result.

    ``labels`` (and ``therapy``, ``true_probabilities``) are indexed by patient_key
    or given in the row order of ``patient_features``. The registry comparison
    uses the new model's cross-validated AUC and the current registered champion's
    AUC on the same patients and labels; when that champion was trained on some
    of these patients its value is in-sample, which favours keeping it.
    """
    say = progress or (lambda message: None)
    fit = fit_response_model(patient_features, labels, therapy=therapy, n_splits=n_splits, seed=seed,
                             true_probabilities=true_probabilities, n_bootstrap=n_bootstrap, progress=progress)
    model, best, y, design = fit["model"], fit["best_candidate"], fit["y"], fit["design"]
    cv_metrics = fit["cv_metrics"]
    predictions, contributions = _predict_and_explain(model, patient_features, therapy, 5, n_permutations, seed)
    predictions.insert(2, "oof_probability", fit["oof"][best])
    global_importance = contributions.abs().mean().sort_values(ascending=False)

    client = registry.mlflow_client(tracking_uri, artifact_root)
    champion_auc = _champion_auc(client, model_name, patient_features, therapy, y)
    experiment_id = registry.ensure_experiment(client, registry.RESPONSE_EXPERIMENT, artifact_root)
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as scratch:
        run_id = run.info.run_id
        mlflow.set_tags({"radplan.model": "response", "radplan.candidate": best})
        mlflow.log_params({
            "candidate": best, "champion_reason": fit["champion_reason"], "n_patients": len(y), "n_features": len(fit["feature_names"]),
            "n_splits": n_splits, "seed": seed, "calibration": fit["calibration_method"], "n_bootstrap": n_bootstrap,
            "uses_therapy": therapy is not None,
            "attribution_method": f"sampling Shapley, {n_permutations} antithetic permutations, {len(model.background)} background patients",
            "encodings_version": encodings()["version"], "n_empty_features_dropped": fit["n_empty_features_dropped"],
            "positive_rate": round(float(y.mean()), 4),
        })
        for name in CANDIDATES:
            for metric, stats in cv_metrics[name].items():
                mlflow.log_metrics({f"cv_{name}_{metric}": stats["value"], f"cv_{name}_{metric}_ci_low": stats["ci_low"], f"cv_{name}_{metric}_ci_high": stats["ci_high"]})
        mlflow.log_metrics({"cv_auc": cv_metrics[best]["auc"]["value"], "auc_minus_baseline": fit["auc_minus_baseline"]["value"],
                            "cv_ece": fit["calibration"]["ece"]})
        bayes = fit["bayes_optimal_auc"]
        if bayes is not None:
            mlflow.log_metrics({"bayes_optimal_auc": bayes["value"], "bayes_optimal_auc_ci_low": bayes["ci_low"], "bayes_optimal_auc_ci_high": bayes["ci_high"]})
        if champion_auc is not None:
            mlflow.log_metric("champion_auc_same_patients", champion_auc)
        scratch_dir = Path(scratch)
        mlflow.log_artifact(str(importance_plot(contributions, scratch_dir / "feature_importance.png")))
        predictions.assign(top_attributions=predictions["top_attributions"].map(json.dumps)).to_parquet(scratch_dir / "predictions.parquet", index=False)
        mlflow.log_artifact(str(scratch_dir / "predictions.parquet"))
        mlflow.log_dict({"cv_metrics": cv_metrics, "bayes_optimal_auc": bayes, "auc_minus_baseline": fit["auc_minus_baseline_by_candidate"],
                         "champion": best, "champion_reason": fit["champion_reason"], "calibration": fit["calibration"],
                         "global_importance": global_importance.round(6).to_dict()}, "cv_report.json")
        signature = infer_signature(design.astype(float), model.predict_proba(design))
        mlflow.sklearn.log_model(model, name=MODEL_ARTIFACT, signature=signature, serialization_format="cloudpickle",
                                 pip_requirements=registry.pinned_requirements("scikit-learn", "torch", "lightning", "pandas", "numpy"))

    registration = registry.register_with_champion_challenger(
        client, model_name=model_name, run_id=run_id, artifact_path=MODEL_ARTIFACT, metric_name="auc",
        new_value=cv_metrics[best]["auc"]["value"], higher_is_better=True, champion_value_on_same_data=champion_auc,
    )
    say(f"registered {model_name} v{registration['version']} as {registration['alias']}")
    return {
        "model_name": model_name,
        "run_id": run_id,
        "version": registration["version"],
        "alias": registration["alias"],
        "best_candidate": best,
        "champion_reason": fit["champion_reason"],
        "cv_metrics": cv_metrics,
        "calibration_metrics": fit["calibration"],
        "bayes_optimal_auc": bayes,
        "baseline_auc": fit["baseline_auc"],
        "auc_minus_baseline": fit["auc_minus_baseline"],
        "auc_minus_baseline_by_candidate": fit["auc_minus_baseline_by_candidate"],
        "champion_comparison": registration,
        "n_patients": fit["n_patients"],
        "n_features": len(fit["feature_names"]),
        "n_splits": n_splits,
        "calibration": fit["calibration_method"],
        "global_importance": global_importance.round(6).to_dict(),
        "predictions": predictions,
        "model": model,
    }


def model_report_entry(result: dict[str, Any]) -> dict[str, Any]:
    """The response model's entry in lake/exports/model_report.json (no patient-level data)."""
    best = result["best_candidate"]
    vs_baseline = result.get("auc_minus_baseline_by_candidate", {})
    return {
        "name": result["model_name"],
        "mlflow_version": result["version"],
        "alias": result["alias"],
        "run_id": result["run_id"],
        "candidate": best,
        "champion_reason": result.get("champion_reason"),
        "n_patients": result["n_patients"],
        "cv": f"stratified {result['n_splits']}-fold, out-of-fold predictions, bootstrap 95% CIs",
        "calibration": result["calibration"],
        "calibration_metrics": result.get("calibration_metrics"),
        "metrics": result["cv_metrics"][best],
        "all_candidates": {
            name: {"auc": m["auc"], **({"auc_minus_baseline": vs_baseline[name], "beats_baseline": vs_baseline[name]["value"] > 0}
                                       if name in vs_baseline else {})}
            for name, m in result["cv_metrics"].items()
        },
        "bayes_optimal_auc": result["bayes_optimal_auc"],
        "baseline_auc": result["baseline_auc"],
        "auc_minus_baseline": result["auc_minus_baseline"],
        "champion_comparison": result["champion_comparison"],
        "top_global_features": dict(list(result["global_importance"].items())[:10]),
    }
