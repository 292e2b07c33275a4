"""The response model's candidate estimators, all behind the scikit-learn classifier API.

(a) a rules baseline (:func:`rule_scores`, turned into a probability per score level),
(b) an L2-penalized logistic regression on prespecified prognostic covariates
(:data:`PROGNOSTIC_COVARIATES`), (c) a calibrated ``HistGradientBoostingClassifier``,
(d) a calibrated Lightning MLP and (e) a soft-voting ensemble of (c) and (d).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from radplan.errors import RadplanInputError
from radplan.models.evaluation import THRESHOLD
from radplan.models.features import LOG_SCALED_COVARIATES, PROGNOSTIC_COVARIATES, encodings  # noqa: F401 (re-exported)

CANDIDATES = ("rules_baseline", "prognostic_logistic", "gradient_boosting", "lightning_mlp", "soft_voting_ensemble")
LEARNED_CANDIDATES = CANDIDATES[1:]


def design_rule_scores(X: np.ndarray, feature_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Rules baseline score 0-3 from design-matrix columns: 2 points for a targeted therapy matching an
    actionable driver, 1 for ECOG <= 1.

    Without therapy columns the first rule becomes "has any actionable
    alteration" (the patient would be offered the matched drug). ECOG unknown
    scores 0 for that rule.
    """
    names = list(feature_names)
    X = np.asarray(X, dtype=float)
    if "therapy_targets_driver" in names:
        driver = np.nan_to_num(X[:, names.index("therapy_targets_driver")]) > 0
    else:
        flags = [names.index(f) for f in encodings()["alteration_flags"] if f in names]
        driver = (np.nan_to_num(X[:, flags]) > 0).any(axis=1) if flags else np.zeros(len(X), bool)
    ecog = X[:, names.index("ecog")] if "ecog" in names else np.full(len(X), np.nan)
    with np.errstate(invalid="ignore"):
        fit_ecog = (ecog <= 1).astype(float)
    return 2.0 * driver.astype(float) + fit_ecog


def rule_scores(patient_features: pd.DataFrame, therapy: pd.Series | None = None) -> pd.Series:
    """:func:`design_rule_scores` of a contract table (and optional therapy per patient), indexed by patient_key."""
    from radplan.models.features import feature_matrix

    design, names = feature_matrix(patient_features, therapy)
    return pd.Series(design_rule_scores(design.to_numpy(dtype=float), names), index=design.index)


class RulesBaselineClassifier(ClassifierMixin, BaseEstimator):
    """The rules baseline as a classifier: the training response rate (Laplace-smoothed) per rule score level.

    A score level absent from training gets (0 + 1) / (0 + 2) = 0.5. Being an
    estimator over the design matrix, it can be cross-validated, refit and
    registered like the learned candidates, and be champion when none of them
    beats it on held-out data.
    """

    def __init__(self, feature_names: tuple[str, ...] = ()):
        self.feature_names = feature_names

    def fit(self, X, y) -> "RulesBaselineClassifier":
        y = np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        scores = design_rule_scores(X, self.feature_names)
        self.rates_ = {float(level): (y[scores == level].sum() + 1.0) / ((scores == level).sum() + 2.0) for level in np.unique(scores)}
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        positive = np.array([self.rates_.get(float(s), 0.5) for s in design_rule_scores(X, self.feature_names)])
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= THRESHOLD).astype(int)


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


def make_rules_baseline(seed: int, method: str, feature_names: tuple[str, ...] = ()) -> RulesBaselineClassifier:
    return RulesBaselineClassifier(tuple(feature_names))


_FACTORIES: dict[str, Callable[[int, str, tuple[str, ...]], BaseEstimator]] = {
    "rules_baseline": make_rules_baseline,
    "prognostic_logistic": make_prognostic_logistic,
    "gradient_boosting": make_gradient_boosting,
    "lightning_mlp": make_mlp,
    "soft_voting_ensemble": make_ensemble,
}
