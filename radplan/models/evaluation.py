"""Metrics of probability predictions with bootstrap confidence intervals, and calibration summaries."""

from __future__ import annotations

import numpy as np

METRICS = ("auc", "accuracy", "precision", "recall", "f1", "brier")
THRESHOLD = 0.5


def _weighted_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics for many resamples at once; ``weights[b, i]`` = times patient i is drawn in resample b.

    AUC is the Mann-Whitney probability that a positive scores above a negative
    (ties count one half), computed from weighted counts per distinct score.
    """
    weights = np.atleast_2d(weights).astype(float)
    predicted = (p >= THRESHOLD).astype(float)
    positives, negatives = weights @ y, weights @ (1 - y)
    true_pos = weights @ (y * predicted)
    flagged = weights @ predicted
    correct = weights @ (predicted == y).astype(float)
    values, inverse = np.unique(p, return_inverse=True)
    by_value = np.zeros((len(p), len(values)))
    by_value[np.arange(len(p)), inverse] = 1.0
    pos_at, neg_at = (weights * y) @ by_value, (weights * (1 - y)) @ by_value
    neg_below = np.cumsum(neg_at, axis=1) - neg_at
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos_at * (neg_below + 0.5 * neg_at)).sum(axis=1) / (positives * negatives)
        precision = np.where(flagged > 0, true_pos / flagged, 0.0)
        recall = np.where(positives > 0, true_pos / positives, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    total = weights.sum(axis=1)
    return {
        "auc": np.where((positives > 0) & (negatives > 0), auc, np.nan),
        "accuracy": correct / total,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "brier": (weights @ (p - y) ** 2) / total,
    }


def bootstrap_weights(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """Resample counts (n_bootstrap, n) of patients drawn with replacement, fixed seed."""
    draws = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    return np.stack([np.bincount(row, minlength=n) for row in draws])


def metrics_with_ci(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> dict[str, dict[str, float]]:
    """Point metrics on all patients and percentile 95% CIs over the bootstrap resamples ``weights``."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    point = _weighted_metrics(y, p, np.ones(len(y)))
    draws = _weighted_metrics(y, p, weights)
    return {
        name: {"value": float(point[name][0]), "ci_low": float(np.nanpercentile(draws[name], 2.5)), "ci_high": float(np.nanpercentile(draws[name], 97.5))}
        for name in METRICS
    }


def _auc_difference_ci(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Paired bootstrap of AUC(a) - AUC(b) on the same resamples."""
    y = np.asarray(y, float)
    point = _weighted_metrics(y, p_a, np.ones(len(y)))["auc"][0] - _weighted_metrics(y, p_b, np.ones(len(y)))["auc"][0]
    diffs = _weighted_metrics(y, p_a, weights)["auc"] - _weighted_metrics(y, p_b, weights)["auc"]
    return {"value": float(point), "ci_low": float(np.nanpercentile(diffs, 2.5)), "ci_high": float(np.nanpercentile(diffs, 97.5))}



def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: mean |observed rate - mean prediction| over equal-width probability bins, weighted by bin size."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return float(total / len(y))


def calibration_summary(y: np.ndarray, p: np.ndarray, weights: np.ndarray | None = None, n_bins: int = 10) -> dict[str, float]:
    """Brier score and ECE (10 equal-width bins); with bootstrap ``weights``, 95% CIs of both."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    out = {"brier": float(np.mean((p - y) ** 2)), "ece": expected_calibration_error(y, p, n_bins), "ece_bins": n_bins}
    if weights is not None:
        eces = [expected_calibration_error(np.repeat(y, row), np.repeat(p, row), n_bins) for row in weights]
        briers = (weights @ (p - y) ** 2) / weights.sum(axis=1)
        out.update(brier_ci_low=float(np.percentile(briers, 2.5)), brier_ci_high=float(np.percentile(briers, 97.5)),
                   ece_ci_low=float(np.percentile(eces, 2.5)), ece_ci_high=float(np.percentile(eces, 97.5)))
    return out
