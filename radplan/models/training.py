"""Cross-validating the response model's candidates and refitting the champion (no MLflow here).

:func:`fit_response_model` scores every candidate (:mod:`radplan.models.candidates`) on the same
stratified k-fold splits, reports AUC, accuracy, precision, recall, F1, Brier score with percentile
bootstrap 95% CIs (the same resamples for every candidate), picks the champion and refits it on all
patients as a :class:`ResponseModel`.

Champion rule: the learned candidate with the best cross-validated AUC, *only if* its out-of-fold AUC
is above the rules baseline's on the same folds; when no learned candidate beats the baseline on
held-out data the baseline itself is the champion (and the result says so).

Probabilities are calibrated with ``CalibratedClassifierCV`` (sigmoid below 1,000 patients, isotonic
above). The per-patient interval of :meth:`ResponseModel.interval` is calibration-based: the
2.5th-97.5th percentile of the probability after Platt recalibration maps fitted to bootstrap
resamples of the out-of-fold (prediction, outcome) pairs, i.e. how far the observed response rate of
patients scored like this one could plausibly be from the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.model_selection import StratifiedKFold

from radplan.errors import RadplanInputError
from radplan.models.candidates import _FACTORIES, CANDIDATES, LEARNED_CANDIDATES, calibration_method
from radplan.models.evaluation import THRESHOLD, _auc_difference_ci, bootstrap_weights, calibration_summary, metrics_with_ci
from radplan.models.features import _aligned, _validated, encodings, feature_groups, feature_matrix, therapy_profile


def single_threaded(function: Callable) -> Callable:
    """Run with one BLAS/OpenMP/torch thread: these models are small, and OpenMP spin-waiting on a
    shared or oversubscribed CPU makes multi-threaded fits orders of magnitude slower."""
    import torch
    from threadpoolctl import threadpool_limits

    @wraps(function)
    def wrapper(*args, **kwargs):
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):
                return function(*args, **kwargs)
        finally:
            torch.set_num_threads(torch_threads)

    return wrapper


@dataclass
class ResponseModel:
    """The refit best candidate plus what prediction, explanation and intervals need.

    ``predict_proba`` takes the design matrix (:func:`feature_matrix`); use
    :func:`predict_response` for contract-table input.
    """

    estimator: BaseEstimator
    candidate: str
    feature_names: list[str]
    groups: dict[str, list[str]]
    background: np.ndarray
    recalibration_draws: np.ndarray  # (B, 2) Platt (slope, intercept) on logit(p), from OOF bootstrap resamples
    uses_therapy: bool
    encodings_version: str

    therapy_support: dict[str, int] | None = None  # training patients per therapy profile (see therapy_profile)

    def _array(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            missing = [c for c in self.feature_names if c.startswith("therapy_") and c not in X.columns]
            if missing:
                raise ValueError("this model uses therapy features: pass therapy= to feature_matrix/predict_response")
            X = X.reindex(columns=self.feature_names)
        return np.asarray(X, dtype=float)

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(self._array(X))

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= THRESHOLD).astype(int)

    def interval(self, probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logit = np.log(np.clip(probability, 1e-6, 1 - 1e-6) / (1 - np.clip(probability, 1e-6, 1 - 1e-6)))
        recalibrated = 1.0 / (1.0 + np.exp(-(self.recalibration_draws[:, :1] * logit[None, :] + self.recalibration_draws[:, 1:])))
        return np.percentile(recalibrated, 2.5, axis=0), np.percentile(recalibrated, 97.5, axis=0)


def _platt_draws(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(slope, intercept) of Platt recalibration of logit(p) on each bootstrap resample."""
    from sklearn.linear_model import LogisticRegression

    logit = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6))).reshape(-1, 1)
    draws = []
    for row in weights:
        if len(np.unique(y[row > 0])) < 2:
            continue
        fit = LogisticRegression(C=1e6).fit(logit, y, sample_weight=row)
        draws.append((fit.coef_[0, 0], fit.intercept_[0]))
    return np.asarray(draws)



def _labels(labels: pd.Series, table: pd.DataFrame) -> np.ndarray:
    aligned = _aligned(labels, table, "labels")
    if aligned.isna().any():
        raise RadplanInputError(f"{int(aligned.isna().sum())} patients have no response label; filter them before training")
    values = aligned.astype(float).to_numpy()
    if not np.isin(values, (0.0, 1.0)).all():
        raise RadplanInputError("response labels must be binary (0/1 or False/True)")
    return values.astype(int)


def _cross_validated(X: np.ndarray, y: np.ndarray, folds: list, seed: int, method: str, names: tuple[str, ...],
                     candidates: tuple[str, ...] = CANDIDATES) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities of every candidate on the same folds.

    The soft-voting ensemble's OOF probability is the mean of the two calibrated
    members' OOF probabilities on that fold, which is exactly what a
    ``VotingClassifier(voting="soft")`` of the same seeded members predicts.
    """
    oof = {name: np.zeros(len(y)) for name in CANDIDATES}
    for train, test in folds:
        for name in ("rules_baseline", "prognostic_logistic", "gradient_boosting", "lightning_mlp"):
            if name not in candidates and not (name in ("gradient_boosting", "lightning_mlp") and "soft_voting_ensemble" in candidates):
                continue
            oof[name][test] = _FACTORIES[name](seed, method, names).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    oof["soft_voting_ensemble"] = (oof["gradient_boosting"] + oof["lightning_mlp"]) / 2.0
    return {name: oof[name] for name in CANDIDATES if name in candidates}



def choose_champion(cv_metrics: dict[str, dict], vs_baseline: dict[str, dict]) -> tuple[str, str]:
    """(champion candidate, reason): the best learned candidate by CV AUC among those whose out-of-fold AUC
    is above the rules baseline's; the rules baseline when none is."""
    beating = [name for name in LEARNED_CANDIDATES if vs_baseline[name]["value"] > 0]
    if not beating:
        return "rules_baseline", "no learned candidate beat the rules baseline's out-of-fold AUC"
    best = max(beating, key=lambda name: cv_metrics[name]["auc"]["value"])
    return best, f"best out-of-fold AUC among the {len(beating)} learned candidate(s) above the rules baseline"


@single_threaded
def fit_response_model(
    patient_features: pd.DataFrame,
    labels: pd.Series,
    *,
    therapy: pd.Series | None = None,
    n_splits: int = 5,
    seed: int = 0,
    true_probabilities: pd.Series | None = None,
    n_bootstrap: int = 1000,
    candidates: tuple[str, ...] = CANDIDATES,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate the candidates on the same folds, choose the champion (:func:`choose_champion`), refit it.

    ``labels`` (and ``therapy``, ``true_probabilities``) are indexed by patient_key
    or given in the row order of ``patient_features``. ``candidates`` must hold
    the rules baseline; dropping the MLP and ensemble is for quick experiments.
    Returns the fitted :class:`ResponseModel`, out-of-fold probabilities and
    the metrics (no patient identifiers other than the design index).
    """
    say = progress or (lambda message: None)
    if "rules_baseline" not in candidates:
        raise ValueError("the rules baseline is the reference every learned candidate must beat")
    table = _validated(patient_features)
    y = _labels(labels, table)
    design, all_names = feature_matrix(patient_features, therapy)
    # A column with no value in the whole cohort carries no information (and breaks tree binning).
    empty = [name for name in all_names if design[name].isna().all()]
    design = design.drop(columns=empty)
    names = list(design.columns)
    X = design.to_numpy(dtype=float)
    class_counts = np.bincount(y, minlength=2)
    if class_counts.min() < n_splits:
        raise RadplanInputError(f"each response class needs at least {n_splits} patients for {n_splits}-fold CV (have {class_counts.tolist()})")
    method = calibration_method(len(y))
    folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(X, y))

    say(f"cross-validating {len(candidates)} candidates on {n_splits} folds ({len(y)} patients, {len(names)} features)")
    oof = _cross_validated(X, y, folds, seed, method, tuple(names), candidates)
    resamples = bootstrap_weights(len(y), n_bootstrap, seed)
    cv_metrics = {name: metrics_with_ci(y, oof[name], resamples) for name in oof}
    vs_baseline = {name: _auc_difference_ci(y, oof[name], oof["rules_baseline"], resamples) for name in oof if name != "rules_baseline"}
    best, reason = choose_champion(cv_metrics, {n: vs_baseline.get(n, {"value": -np.inf}) for n in LEARNED_CANDIDATES})
    bayes = None
    if true_probabilities is not None:
        truth = _aligned(true_probabilities, table, "true_probabilities").astype(float).to_numpy()
        bayes = metrics_with_ci(y, truth, resamples)["auc"]
    say(f"champion {best}: CV AUC {cv_metrics[best]['auc']['value']:.3f} (baseline {cv_metrics['rules_baseline']['auc']['value']:.3f}; {reason})")

    estimator = _FACTORIES[best](seed, method, tuple(names)).fit(X, y)
    background = X[np.random.default_rng(seed).choice(len(X), size=min(64, len(X)), replace=False)]
    support = None
    if therapy is not None:
        profiles = therapy_profile(table, _aligned(therapy, table, "therapy"))
        support = {str(k): int(v) for k, v in profiles.value_counts().items()}
    model = ResponseModel(
        estimator=estimator,
        candidate=best,
        feature_names=names,
        groups=feature_groups(names),
        background=background,
        recalibration_draws=_platt_draws(y, oof[best], resamples[: min(200, len(resamples))]),
        uses_therapy=therapy is not None,
        encodings_version=encodings()["version"],
        therapy_support=support,
    )
    return {
        "model": model,
        "best_candidate": best,
        "champion_reason": reason,
        "oof": oof,
        "y": y,
        "design": design,
        "feature_names": names,
        "n_empty_features_dropped": len(empty),
        "cv_metrics": cv_metrics,
        "calibration": calibration_summary(y, oof[best], resamples[: min(200, len(resamples))]),
        "calibration_method": method,
        "bayes_optimal_auc": bayes,
        "baseline_auc": cv_metrics["rules_baseline"]["auc"],
        "auc_minus_baseline": vs_baseline.get(best, {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}),
        "auc_minus_baseline_by_candidate": vs_baseline,
        "resamples": resamples,
        "n_patients": int(len(y)),
        "n_splits": n_splits,
    }
