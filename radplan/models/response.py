"""Multimodal treatment-response model: rules baseline vs. prognostic logistic model vs. gradient boosting vs.
Lightning MLP vs. ensemble.

Input is the ``patient_features`` contract table (one row per patient) and a
binary response label per patient. :func:`feature_matrix` turns the table into
a numeric design matrix (documented there). :func:`train_response_models`

1. scores five candidates on the *same* stratified k-fold splits:
   (a) a rules baseline (:func:`rule_scores`), (b) an L2-penalized logistic
   regression on prespecified prognostic covariates
   (:data:`PROGNOSTIC_COVARIATES`), (c) a calibrated
   ``HistGradientBoostingClassifier``, (d) a calibrated Lightning MLP, and
   (e) a soft-voting ensemble of (c) and (d);
2. reports AUC, accuracy, precision, recall, F1 (threshold 0.5) and Brier
   score of the out-of-fold predictions with percentile bootstrap 95% CIs
   (patients resampled with a fixed seed, the same resamples for every
   model), plus the Bayes-optimal AUC of the true probabilities when a
   synthetic cohort supplies them;
3. refits the learned candidate with the best CV AUC on all patients,
   explains its predictions with sampling Shapley values
   (:func:`shapley_attributions`), logs everything to MLflow and registers
   the model through the champion/challenger helper.

Probabilities are calibrated with ``CalibratedClassifierCV`` (sigmoid below
1,000 patients, isotonic above). The per-patient interval returned by
:func:`predict_response` is calibration-based: the 2.5th-97.5th percentile of
the probability after Platt recalibration maps fitted to bootstrap resamples
of the out-of-fold (prediction, outcome) pairs, i.e. how far the observed
response rate of patients scored like this one could plausibly be from the
score.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from radplan.errors import RadplanInputError
from radplan.models import registry

MODEL_ARTIFACT = "model"
CANDIDATES = ("rules_baseline", "prognostic_logistic", "gradient_boosting", "lightning_mlp", "soft_voting_ensemble")
LEARNED_CANDIDATES = CANDIDATES[1:]
METRICS = ("auc", "accuracy", "precision", "recall", "f1", "brier")
THRESHOLD = 0.5


@lru_cache(maxsize=1)
def encodings() -> dict[str, Any]:
    """The packaged encoding tables (levels, ordinal maps, therapy targets; see the file's _about)."""
    text = resources.files("radplan.models").joinpath("data/response_features.json").read_text(encoding="utf-8")
    return json.loads(text)


# ---------------------------------------------------------------- design matrix

NUMERIC_COLUMNS = (
    "age_years",
    "ecog",
    "prior_lines_of_therapy",
    "lab_creatinine_mg_dl",
    "lab_bilirubin_mg_dl",
    "lab_alt_u_l",
    "lab_anc_10e9_l",
    "lab_hemoglobin_g_dl",
    "lesion_count",
    "total_lesion_volume_ml",
    "largest_lesion_volume_ml",
    "pgx_DPYD_activity_score",
)
MODALITY_COLUMNS = ("has_imaging", "has_genomics", "has_ehr", "has_notes")
_PDL1 = re.compile(r"PD-?L1\b.*?(\d+(?:\.\d+)?)\s*%", re.IGNORECASE)
_HER2 = re.compile(r"HER2\b.*?\b([0-3])\s*\+", re.IGNORECASE)
_MSI_HIGH = re.compile(r"\bMSI-?H(?:igh)?\b|\bdMMR\b", re.IGNORECASE)


def _series(frame: pd.DataFrame, column: str, default: Any = np.nan) -> pd.Series:
    return frame[column] if column in frame.columns else pd.Series(default, index=frame.index, dtype=object)


def _as_float(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series.astype(object).where(series.notna(), np.nan), errors="coerce").astype(float)


def _as_flag(series: pd.Series) -> pd.Series:
    """Booleans to 0/1; a missing flag stays NaN (unknown is not 'absent')."""
    return series.astype(object).map(lambda v: np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(bool(v))).astype(float)


def _as_list(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


def _biomarker_value(mentions: Any, pattern: re.Pattern) -> float:
    values = [float(m.group(1)) for text in _as_list(mentions) if (m := pattern.search(text))]
    return max(values) if values else np.nan


def therapy_targets_driver(patient_features: pd.DataFrame, therapy: pd.Series) -> pd.Series:
    """1.0 where the therapy is a targeted drug whose biomarker the patient carries (alt_* flags)."""
    targets = encodings()["therapy_targets"]
    flags = patient_features.reindex(columns=encodings()["alteration_flags"]).fillna(False).astype(bool)
    matched = [
        float(any(flags.at[index, flag] for flag in targets.get(str(drug).strip().lower(), [])))
        for index, drug in zip(patient_features.index, therapy)
    ]
    return pd.Series(matched, index=patient_features.index)


def therapy_class(drug: Any) -> str:
    name = str(drug).strip().lower() if drug is not None else ""
    if name in encodings()["therapy_targets"]:
        return "targeted"
    for klass, members in encodings()["therapy_classes"].items():
        if name in members:
            return klass
    return "other"


def _validated(patient_features: pd.DataFrame) -> pd.DataFrame:
    if "patient_key" not in patient_features.columns:
        raise RadplanInputError("patient_features has no patient_key column")
    keys = patient_features["patient_key"]
    if keys.isna().any() or keys.duplicated().any():
        raise RadplanInputError("patient_features needs one row per patient (patient_key missing or duplicated)")
    return patient_features.set_index("patient_key", drop=False)


def feature_matrix(patient_features: pd.DataFrame, therapy: pd.Series | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Numeric design matrix (index = patient_key, which is never a column) and its column names.

    Columns, in order:
    - ``has_<modality>``: 0/1 missing-modality indicators; a missing modality
      leaves its own features NaN rather than dropping the patient;
    - numeric contract columns as floats (age, ECOG, prior lines, the five
      labs, lesion count/volumes, DPYD activity score), NaN when unknown;
    - ``stage_ordinal`` 1-4 from I-IV;
    - every ``rad_*`` column present (radiomic aggregates), in sorted order;
    - one-hot ``sex_*``, ``cancer_type_*``, ``smoking_status_*`` over fixed
      levels (all zero when unknown, so columns never depend on the cohort);
    - the twelve ``alt_*`` alteration flags as 0/1 and
      ``n_actionable_alterations``;
    - ``pgx_<GENE>_ordinal`` for each PGx gene: CPIC phenotypes ordered by
      activity/function (Poor 0 ... Ultrarapid 4), VKORC1 as the number of
      rs9923231 T alleles; Indeterminate or no call is NaN;
    - from note biomarker mentions: ``pdl1_tps_percent`` (highest PD-L1 %
      mentioned), ``her2_ihc_score`` (0-3), ``msi_high`` (0/1);
    - with ``therapy`` (one drug name per patient): ``therapy_targets_driver``
      (targeted drug matching an actionable flag) and one-hot
      ``therapy_class_{targeted,immunotherapy,chemotherapy,other}``.
    """
    table = _validated(patient_features)
    enc = encodings()
    columns: dict[str, pd.Series] = {}
    for name in MODALITY_COLUMNS:
        columns[name] = _as_flag(_series(table, name, False)).fillna(0.0)
    for name in NUMERIC_COLUMNS:
        columns[name] = _as_float(_series(table, name))
    columns["stage_ordinal"] = _series(table, "stage").map(lambda v: enc["stage_ordinal"].get(str(v).strip().upper(), np.nan) if isinstance(v, str) else np.nan).astype(float)
    for name in sorted(c for c in table.columns if c.startswith("rad_")):
        columns[name] = _as_float(table[name])
    for variable, levels in enc["categorical_levels"].items():
        values = _series(table, variable).map(lambda v: str(v).strip().lower() if isinstance(v, str) else None)
        for level in levels:
            columns[f"{variable}_{level}"] = (values == level.lower()).astype(float)
    for flag in enc["alteration_flags"]:
        columns[flag] = _as_flag(_series(table, flag))
    columns["n_actionable_alterations"] = _series(table, "actionable_alterations").map(lambda v: float(len(_as_list(v)))).astype(float)
    for gene in enc["pgx_genes"]:
        mapping = enc["vkorc1_t_allele_count"] if gene == "VKORC1" else enc["pgx_phenotype_ordinal"]
        columns[f"pgx_{gene}_ordinal"] = _series(table, f"pgx_{gene}_phenotype").map(lambda v, m=mapping: m.get(v, np.nan) if isinstance(v, str) else np.nan).astype(float)
    mentions = _series(table, "biomarker_mentions", None)
    columns["pdl1_tps_percent"] = mentions.map(lambda v: _biomarker_value(v, _PDL1)).astype(float)
    columns["her2_ihc_score"] = mentions.map(lambda v: _biomarker_value(v, _HER2)).astype(float)
    columns["msi_high"] = mentions.map(lambda v: float(any(_MSI_HIGH.search(t) for t in _as_list(v)))).astype(float)
    if therapy is not None:
        drugs = _aligned(therapy, table, "therapy")
        columns["therapy_targets_driver"] = therapy_targets_driver(table, drugs)
        classes = drugs.map(therapy_class)
        for klass in ("targeted", "immunotherapy", "chemotherapy", "other"):
            columns[f"therapy_class_{klass}"] = (classes == klass).astype(float)
    matrix = pd.DataFrame(columns, index=table.index)
    matrix.index.name = "patient_key"
    return matrix, list(matrix.columns)


def feature_groups(feature_names: list[str]) -> dict[str, list[str]]:
    """Attribution players: one-hot columns of one source variable act together, every other column alone."""
    prefixes = [*encodings()["categorical_levels"], "therapy_class"]
    groups: dict[str, list[str]] = {}
    for name in feature_names:
        owner = next((p for p in prefixes if name.startswith(p + "_")), name)
        groups.setdefault(owner, []).append(name)
    return groups


def _aligned(values: pd.Series, table: pd.DataFrame, what: str) -> pd.Series:
    """Align a per-patient series by patient_key index, or by position when it has no key index."""
    if set(table.index).issubset(set(values.index)):
        return values.reindex(table.index)
    if len(values) != len(table):
        raise RadplanInputError(f"{what} has {len(values)} values for {len(table)} patients and is not indexed by patient_key")
    return pd.Series(values.to_numpy(), index=table.index, name=values.name)


# ---------------------------------------------------------------- candidates


def rule_scores(patient_features: pd.DataFrame, therapy: pd.Series | None = None) -> pd.Series:
    """Rules baseline score 0-3: 2 points for a targeted therapy matching an actionable driver, 1 for ECOG <= 1.

    Without a therapy column the first rule becomes "has any actionable
    alteration" (the patient would be offered the matched drug). ECOG unknown
    scores 0 for that rule.
    """
    table = _validated(patient_features)
    if therapy is not None:
        driver = therapy_targets_driver(table, _aligned(therapy, table, "therapy"))
    else:
        flags = table.reindex(columns=encodings()["alteration_flags"]).fillna(False).astype(bool)
        driver = flags.any(axis=1).astype(float)
    fit_ecog = (_as_float(_series(table, "ecog")) <= 1).astype(float)
    return 2.0 * driver + fit_ecog


def _rule_probabilities(train_scores: np.ndarray, train_y: np.ndarray, test_scores: np.ndarray) -> np.ndarray:
    """Response rate per rule score level on the training fold (Laplace-smoothed): the baseline's probability."""
    rates = {level: (train_y[train_scores == level].sum() + 1.0) / ((train_scores == level).sum() + 2.0) for level in np.unique(np.r_[train_scores, test_scores])}
    return np.array([rates[s] for s in test_scores])


class _MLPModule(L.LightningModule):
    def __init__(self, n_inputs: int, hidden_units: tuple[int, ...], dropout: float, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = n_inputs
        for units in hidden_units:
            layers += [torch.nn.Linear(width, units), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = units
        layers.append(torch.nn.Linear(width, 1))
        self.net = torch.nn.Sequential(*layers)
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.loss = torch.nn.BCEWithLogitsLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)


def _single_threaded(function: Callable) -> Callable:
    """Run with one BLAS/OpenMP/torch thread: these models are small, and OpenMP spin-waiting on a
    shared or oversubscribed CPU makes multi-threaded fits orders of magnitude slower."""
    from functools import wraps

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


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning prints device banners on every Trainer; the MLP builds dozens of them."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "pytorch_lightning.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class LightningMLPClassifier(ClassifierMixin, BaseEstimator):
    """A small fully connected network trained with Lightning, behind the scikit-learn classifier API.

    Expects imputed, scaled float inputs (see :func:`make_mlp`). Training is
    seeded, so refits on the same data give the same network.
    """

    def __init__(self, hidden_units: tuple[int, ...] = (32, 16), dropout: float = 0.2, learning_rate: float = 5e-3,
                 weight_decay: float = 1e-2, max_epochs: int = 150, batch_size: int = 256, seed: int = 0) -> None:
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, X, y) -> "LightningMLPClassifier":
        X = np.asarray(X, dtype=np.float32)
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError("LightningMLPClassifier is binary; y must hold exactly two classes")
        with _quiet_lightning():
            L.seed_everything(self.seed, verbose=False)
            self.module_ = _MLPModule(X.shape[1], tuple(self.hidden_units), self.dropout, self.learning_rate, self.weight_decay)
            data = torch.utils.data.TensorDataset(torch.from_numpy(X), torch.from_numpy(encoded.astype(np.float32)))
            loader = torch.utils.data.DataLoader(data, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(self.seed))
            trainer = L.Trainer(max_epochs=self.max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, deterministic=True)
            trainer.fit(self.module_, train_dataloaders=loader)
        self.module_.eval()
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        with torch.no_grad():
            positive = torch.sigmoid(self.module_(torch.from_numpy(np.asarray(X, dtype=np.float32)))).numpy().astype(float)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X) -> np.ndarray:
        return self.classes_[(self.predict_proba(X)[:, 1] >= THRESHOLD).astype(int)]


def calibration_method(n_patients: int) -> str:
    """Sigmoid (2 parameters) for small cohorts, where isotonic regression overfits."""
    return "isotonic" if n_patients >= 1000 else "sigmoid"


# Established prognostic factors for objective response, fixed before any outcome is seen: baseline tumour
# burden, ECOG performance status, stage, and whether the first-line drug targets the patient's driver.
# With tens of patients, estimating four coefficients generalizes where ~60 free features overfit.
PROGNOSTIC_COVARIATES = ("total_lesion_volume_ml", "ecog", "stage_ordinal", "therapy_targets_driver")
# Tumour volume spans orders of magnitude; response depends on it roughly log-linearly.
LOG_SCALED_COVARIATES = frozenset({"total_lesion_volume_ml"})


class PrespecifiedCovariates(BaseEstimator, TransformerMixin):
    """Selects the prespecified covariates present in the design matrix, log-scaling volumes."""

    def __init__(self, feature_names: tuple[str, ...] = ()):
        self.feature_names = feature_names

    def fit(self, X, y=None) -> "PrespecifiedCovariates":
        names = list(self.feature_names)
        self.columns_ = [names.index(c) for c in PROGNOSTIC_COVARIATES if c in names]
        if not self.columns_:
            raise RadplanInputError(f"none of the prognostic covariates {PROGNOSTIC_COVARIATES} is in the design matrix")
        self.log_scaled_ = [i for i, c in enumerate(c for c in PROGNOSTIC_COVARIATES if c in names) if c in LOG_SCALED_COVARIATES]
        return self

    def transform(self, X) -> np.ndarray:
        selected = np.asarray(X, dtype=float)[:, self.columns_].copy()
        if self.log_scaled_:
            selected[:, self.log_scaled_] = np.log1p(np.clip(selected[:, self.log_scaled_], 0.0, None))
        return selected


def make_prognostic_logistic(seed: int, method: str, feature_names: tuple[str, ...]) -> Pipeline:
    """A logistic model is already a probability model: no extra calibration layer."""
    return Pipeline([
        ("select", PrespecifiedCovariates(tuple(feature_names))),
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("logistic", LogisticRegression(C=1.0, max_iter=1000, random_state=seed)),
    ])


def make_gradient_boosting(seed: int, method: str, feature_names: tuple[str, ...] = ()) -> CalibratedClassifierCV:
    trees = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=10,
                                           l2_regularization=1.0, early_stopping=False, random_state=seed)
    return CalibratedClassifierCV(trees, method=method, cv=3)


def make_mlp(seed: int, method: str, feature_names: tuple[str, ...] = ()) -> CalibratedClassifierCV:
    network = Pipeline([
        ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
        ("scale", StandardScaler()),
        ("mlp", LightningMLPClassifier(seed=seed)),
    ])
    return CalibratedClassifierCV(network, method=method, cv=3)


def make_ensemble(seed: int, method: str, feature_names: tuple[str, ...] = ()) -> VotingClassifier:
    return VotingClassifier([("gradient_boosting", make_gradient_boosting(seed, method)), ("lightning_mlp", make_mlp(seed, method))], voting="soft")


_FACTORIES: dict[str, Callable[[int, str, tuple[str, ...]], BaseEstimator]] = {
    "prognostic_logistic": make_prognostic_logistic,
    "gradient_boosting": make_gradient_boosting,
    "lightning_mlp": make_mlp,
    "soft_voting_ensemble": make_ensemble,
}


# ---------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------- explanations


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


# ---------------------------------------------------------------- the fitted model


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


@_single_threaded
def predict_response(model: ResponseModel, patient_features: pd.DataFrame, *, therapy: pd.Series | None = None, top_k: int = 5,
                     n_permutations: int = 16, seed: int = 0) -> pd.DataFrame:
    """patient_key, probability, ci_low, ci_high (calibration-based 95% interval, see module doc), base_value, top_attributions.

    ``top_attributions`` lists the ``top_k`` feature groups by |Shapley
    contribution| as {feature, value (the patient's own value), contribution}.
    """
    return _predict_and_explain(model, patient_features, therapy, top_k, n_permutations, seed)[0]


def _predict_and_explain(model: ResponseModel, patient_features: pd.DataFrame, therapy: pd.Series | None, top_k: int,
                         n_permutations: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = _validated(patient_features)
    if model.uses_therapy and therapy is None:
        raise ValueError("this model uses therapy features: pass therapy=")
    design, _ = feature_matrix(patient_features, therapy if model.uses_therapy else None)
    probability = model.predict_proba(design)[:, 1]
    ci_low, ci_high = model.interval(probability)
    contributions, base = explain(model, design, n_permutations=n_permutations, seed=seed)
    if model.uses_therapy:
        table = table.assign(therapy_class=_aligned(therapy, table, "therapy").map(therapy_class))
    predictions = pd.DataFrame({
        "patient_key": design.index.to_numpy(),
        "probability": probability,
        "ci_low": ci_low,
        "ci_high": ci_high,
        "base_value": base.to_numpy(),
        "top_attributions": _top_attributions(contributions, table, design, top_k),
    })
    return predictions, contributions


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


# ---------------------------------------------------------------- training


def _labels(labels: pd.Series, table: pd.DataFrame) -> np.ndarray:
    aligned = _aligned(labels, table, "labels")
    if aligned.isna().any():
        raise RadplanInputError(f"{int(aligned.isna().sum())} patients have no response label; filter them before training")
    values = aligned.astype(float).to_numpy()
    if not np.isin(values, (0.0, 1.0)).all():
        raise RadplanInputError("response labels must be binary (0/1 or False/True)")
    return values.astype(int)


def _cross_validated(X: np.ndarray, y: np.ndarray, scores: np.ndarray, folds: list, seed: int, method: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities of every candidate on the same folds.

    The soft-voting ensemble's OOF probability is the mean of the two calibrated
    members' OOF probabilities on that fold, which is exactly what a
    ``VotingClassifier(voting="soft")`` of the same seeded members predicts.
    """
    oof = {name: np.zeros(len(y)) for name in CANDIDATES}
    for train, test in folds:
        oof["rules_baseline"][test] = _rule_probabilities(scores[train], y[train], scores[test])
        for name in ("prognostic_logistic", "gradient_boosting", "lightning_mlp"):
            oof[name][test] = _FACTORIES[name](seed, method, names).fit(X[train], y[train]).predict_proba(X[test])[:, 1]
    oof["soft_voting_ensemble"] = (oof["gradient_boosting"] + oof["lightning_mlp"]) / 2.0
    return oof


def _champion_auc(client, model_name: str, patient_features: pd.DataFrame, therapy: pd.Series | None, y: np.ndarray) -> float | None:
    champion = registry.champion_version(client, model_name)
    if champion is None:
        return None
    model: ResponseModel = registry.load_model_version(client, champion)
    design, _ = feature_matrix(patient_features, therapy if model.uses_therapy else None)
    if model.uses_therapy and therapy is None:
        return float("nan")
    return float(roc_auc_score(y, model.predict_proba(design)[:, 1]))


@_single_threaded
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
    """Cross-validate the five candidates, refit and register the best learned one; returns a PHI-free result.

    ``labels`` (and ``therapy``, ``true_probabilities``) are indexed by patient_key
    or given in the row order of ``patient_features``. The champion comparison
    uses the new model's cross-validated AUC and the current champion's AUC on
    the same patients and labels; when the champion was trained on some of
    these patients its value is in-sample, which favours keeping it.
    """
    say = progress or (lambda message: None)
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
    scores = rule_scores(patient_features, therapy).to_numpy()

    say(f"cross-validating {len(CANDIDATES)} candidates on {n_splits} folds ({len(y)} patients, {len(names)} features)")
    oof = _cross_validated(X, y, scores, folds, seed, method, tuple(names))
    resamples = bootstrap_weights(len(y), n_bootstrap, seed)
    cv_metrics = {name: metrics_with_ci(y, oof[name], resamples) for name in CANDIDATES}
    best = max(LEARNED_CANDIDATES, key=lambda name: cv_metrics[name]["auc"]["value"])
    bayes = None
    if true_probabilities is not None:
        truth = _aligned(true_probabilities, table, "true_probabilities").astype(float).to_numpy()
        bayes = metrics_with_ci(y, truth, resamples)["auc"]
    vs_baseline = _auc_difference_ci(y, oof[best], oof["rules_baseline"], resamples)
    say(f"best candidate {best}: CV AUC {cv_metrics[best]['auc']['value']:.3f} (baseline {cv_metrics['rules_baseline']['auc']['value']:.3f})")

    estimator = _FACTORIES[best](seed, method, tuple(names)).fit(X, y)
    background = X[np.random.default_rng(seed).choice(len(X), size=min(64, len(X)), replace=False)]
    model = ResponseModel(
        estimator=estimator,
        candidate=best,
        feature_names=names,
        groups=feature_groups(names),
        background=background,
        recalibration_draws=_platt_draws(y, oof[best], resamples[: min(200, len(resamples))]),
        uses_therapy=therapy is not None,
        encodings_version=encodings()["version"],
    )
    predictions, contributions = _predict_and_explain(model, patient_features, therapy, 5, n_permutations, seed)
    predictions.insert(2, "oof_probability", oof[best])
    global_importance = contributions.abs().mean().sort_values(ascending=False)

    client = registry.mlflow_client(tracking_uri, artifact_root)
    champion_auc = _champion_auc(client, model_name, patient_features, therapy, y)
    experiment_id = registry.ensure_experiment(client, registry.RESPONSE_EXPERIMENT, artifact_root)
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as scratch:
        run_id = run.info.run_id
        mlflow.set_tags({"radplan.model": "response", "radplan.candidate": best})
        mlflow.log_params({
            "candidate": best, "n_patients": len(y), "n_features": len(names), "n_splits": n_splits, "seed": seed,
            "calibration": method, "n_bootstrap": n_bootstrap, "uses_therapy": therapy is not None,
            "attribution_method": f"sampling Shapley, {n_permutations} antithetic permutations, {len(background)} background patients",
            "encodings_version": encodings()["version"], "n_empty_features_dropped": len(empty), "positive_rate": round(float(y.mean()), 4),
        })
        for name in CANDIDATES:
            for metric, stats in cv_metrics[name].items():
                mlflow.log_metrics({f"cv_{name}_{metric}": stats["value"], f"cv_{name}_{metric}_ci_low": stats["ci_low"], f"cv_{name}_{metric}_ci_high": stats["ci_high"]})
        mlflow.log_metrics({"cv_auc": cv_metrics[best]["auc"]["value"], "auc_minus_baseline": vs_baseline["value"]})
        if bayes is not None:
            mlflow.log_metrics({"bayes_optimal_auc": bayes["value"], "bayes_optimal_auc_ci_low": bayes["ci_low"], "bayes_optimal_auc_ci_high": bayes["ci_high"]})
        if champion_auc is not None:
            mlflow.log_metric("champion_auc_same_patients", champion_auc)
        scratch_dir = Path(scratch)
        mlflow.log_artifact(str(importance_plot(contributions, scratch_dir / "feature_importance.png")))
        predictions.assign(top_attributions=predictions["top_attributions"].map(json.dumps)).to_parquet(scratch_dir / "predictions.parquet", index=False)
        mlflow.log_artifact(str(scratch_dir / "predictions.parquet"))
        mlflow.log_dict({"cv_metrics": cv_metrics, "bayes_optimal_auc": bayes, "auc_minus_baseline": vs_baseline,
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
        "cv_metrics": cv_metrics,
        "bayes_optimal_auc": bayes,
        "baseline_auc": cv_metrics["rules_baseline"]["auc"],
        "auc_minus_baseline": vs_baseline,
        "champion_comparison": registration,
        "n_patients": int(len(y)),
        "n_features": len(names),
        "n_splits": n_splits,
        "calibration": method,
        "global_importance": global_importance.round(6).to_dict(),
        "predictions": predictions,
        "model": model,
    }


def model_report_entry(result: dict[str, Any]) -> dict[str, Any]:
    """The response model's entry in lake/exports/model_report.json (no patient-level data)."""
    best = result["best_candidate"]
    return {
        "name": result["model_name"],
        "mlflow_version": result["version"],
        "alias": result["alias"],
        "run_id": result["run_id"],
        "candidate": best,
        "n_patients": result["n_patients"],
        "cv": f"stratified {result['n_splits']}-fold, out-of-fold predictions, bootstrap 95% CIs",
        "calibration": result["calibration"],
        "metrics": result["cv_metrics"][best],
        "all_candidates": {name: {"auc": m["auc"]} for name, m in result["cv_metrics"].items()},
        "bayes_optimal_auc": result["bayes_optimal_auc"],
        "baseline_auc": result["baseline_auc"],
        "auc_minus_baseline": result["auc_minus_baseline"],
        "champion_comparison": result["champion_comparison"],
        "top_global_features": dict(list(result["global_importance"].items())[:10]),
    }
