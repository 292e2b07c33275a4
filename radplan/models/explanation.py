"""Per-patient explanations of a fitted response model: sampling Shapley values of feature groups."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from radplan.models.training import ResponseModel


def shapley_attributions(
    predict: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    background: np.ndarray,
    groups: list[list[int]],
    *,
    n_permutations: int = 16,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Sampling Shapley values (Strumbelj & Kononenko 2014) of feature groups, interventional background.

    For each permutation of the groups and each patient, a background patient
    is drawn; the groups are switched from the background's values to the
    patient's in permutation order, and each switch's change in predicted
    probability is that group's marginal contribution. Permutations come in
    antithetic pairs (a permutation and its reverse) to reduce variance.
    Returns (contributions [n_patients, n_groups], base values [n_patients]);
    base + contributions.sum(1) equals predict(X) exactly, for every patient.
    """
    rng = np.random.default_rng(seed)
    n, n_groups = X.shape[0], len(groups)
    contributions = np.zeros((n, n_groups))
    base = np.zeros(n)
    permutation = None
    for m in range(n_permutations):
        permutation = rng.permutation(n_groups) if m % 2 == 0 else permutation[::-1]
        current = background[rng.integers(0, len(background), size=n)].copy()
        path = np.empty((n_groups + 1, n, X.shape[1]))
        path[0] = current
        for step, group in enumerate(permutation, start=1):
            current[:, groups[group]] = X[:, groups[group]]
            path[step] = current
        predictions = predict(path.reshape(-1, X.shape[1])).reshape(n_groups + 1, n)
        contributions[:, permutation] += np.diff(predictions, axis=0).T
        base += predictions[0]
    return contributions / n_permutations, base / n_permutations


def _display_value(value: Any) -> Any:
    """JSON-friendly raw value of a feature for a patient."""
    if value is None:
        return None
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else round(float(value), 4)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value if isinstance(value, (str, list)) else str(value)


def _group_source_column(group: str) -> str:
    """The contract column a design group came from (for showing the patient's own value)."""
    if group.startswith("pgx_") and group.endswith("_ordinal"):
        return group.replace("_ordinal", "_phenotype")
    return {"stage_ordinal": "stage", "n_actionable_alterations": "actionable_alterations"}.get(group, group)



def explain(model: ResponseModel, X: pd.DataFrame, *, n_permutations: int = 16, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Per-patient, per-group Shapley contributions (probability scale) and base values."""
    names = list(model.groups)
    column_index = {c: i for i, c in enumerate(model.feature_names)}
    groups = [[column_index[c] for c in model.groups[g]] for g in names]
    contributions, base = shapley_attributions(lambda a: model.estimator.predict_proba(a)[:, 1], model._array(X), model.background,
                                               groups, n_permutations=n_permutations, seed=seed)
    return pd.DataFrame(contributions, index=X.index, columns=names), pd.Series(base, index=X.index, name="base_value")


def _top_attributions(contributions: pd.DataFrame, table: pd.DataFrame, design: pd.DataFrame, top_k: int) -> list[list[dict]]:
    out = []
    for key, row in contributions.iterrows():
        ranked = row.abs().sort_values(ascending=False).index[:top_k]
        entries = []
        for group in ranked:
            source = _group_source_column(group)
            value = table.at[key, source] if source in table.columns else design.at[key, group] if group in design.columns else None
            entries.append({"feature": group, "value": _display_value(value), "contribution": round(float(row[group]), 5)})
        out.append(entries)
    return out



def importance_plot(contributions: pd.DataFrame, path: Path, top_n: int = 20) -> Path:
    """Horizontal bar chart of mean |Shapley contribution| per feature group (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    importance = contributions.abs().mean().sort_values(ascending=True).tail(top_n)
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(importance) + 1.2))
    axis.barh(importance.index, importance.to_numpy(), color="#3b6ea8")
    axis.set_xlabel("mean |Shapley contribution| to response probability")
    axis.set_title("Response model: global feature importance")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
