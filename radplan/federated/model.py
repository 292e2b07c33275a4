"""The federated response model: a logistic model on the prespecified prognostic covariates, in torch.

This is the federated counterpart of the ``prognostic_logistic`` candidate (:mod:`radplan.models.candidates`):
the same covariates (:data:`PROGNOSTIC_COVARIATES`, tumour volume log-scaled), but trained by gradient steps
so that weights can be averaged across sites. Imputation and scaling cannot be fitted on pooled data, so the
inputs are standardized with fixed reference constants (:data:`REFERENCE_SCALING`, clinical ranges, not fitted
to any site) and a missing value becomes the reference centre plus a missing indicator.

Local training is mini-batch SGD with an optional FedProx proximal term (``mu``) and optional
DP-SGD through Opacus (per-sample clipping and Gaussian noise, with the RDP accountant's epsilon reported).
Every setting (site alone, pooled, federated) uses this same model and the same optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from radplan.models.features import LOG_SCALED_COVARIATES, PROGNOSTIC_COVARIATES, feature_matrix
from radplan.models.evaluation import bootstrap_weights, metrics_with_ci

# covariate -> (centre, scale) after log1p of log-scaled covariates: typical values, fixed before any data is seen
REFERENCE_SCALING = {
    "total_lesion_volume_ml": (3.5, 1.5),
    "ecog": (1.0, 1.0),
    "stage_ordinal": (3.0, 1.0),
    "therapy_targets_driver": (0.3, 0.5),
}
FEATURE_NAMES = tuple([*PROGNOSTIC_COVARIATES, *(f"{c}_missing" for c in PROGNOSTIC_COVARIATES)])


def design(patient_features: pd.DataFrame, therapy: pd.Series) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float32 inputs: standardized covariates, then 0/1 missing indicators."""
    if len(patient_features) == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    matrix, _ = feature_matrix(patient_features, therapy.set_axis(patient_features["patient_key"]) if therapy is not None else None)
    columns, missing = [], []
    for name in PROGNOSTIC_COVARIATES:
        values = matrix[name].to_numpy(float)
        if name in LOG_SCALED_COVARIATES:
            values = np.log1p(np.clip(values, 0.0, None))
        centre, scale = REFERENCE_SCALING[name]
        absent = np.isnan(values)
        columns.append(np.where(absent, 0.0, (values - centre) / scale))
        missing.append(absent.astype(float))
    return np.column_stack(columns + missing).astype(np.float32)


@dataclass(frozen=True)
class TrainingConfig:
    local_epochs: int = 5
    learning_rate: float = 0.1
    batch_size: int = 32
    fedprox_mu: float = 0.0  # 0 = FedAvg; > 0 adds (mu/2)||w - w_global||^2 to the local loss
    dp_noise_multiplier: float = 0.0  # 0 = no differential privacy
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0


class ResponseNet(torch.nn.Module):
    def __init__(self, n_inputs: int = len(FEATURE_NAMES)) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(n_inputs, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


def initial_parameters() -> dict[str, np.ndarray]:
    return to_numpy(ResponseNet())


def to_numpy(net: torch.nn.Module) -> dict[str, np.ndarray]:
    # Opacus wraps the module as _module.<name>; the exchanged names are the plain ones
    return {name.removeprefix("_module."): tensor.detach().cpu().numpy().copy() for name, tensor in net.state_dict().items()}


def from_numpy(parameters: dict[str, np.ndarray]) -> ResponseNet:
    net = ResponseNet()
    net.load_state_dict({name: torch.as_tensor(np.asarray(value, dtype=np.float32)) for name, value in parameters.items()})
    return net


class LocalTrainer:
    """One site's trainer: keeps its Opacus accountant across rounds, so epsilon accumulates over the whole run."""

    def __init__(self, X: np.ndarray, y: np.ndarray, config: TrainingConfig) -> None:
        self.X, self.y, self.config = X, y.astype(np.float32), config
        self.accountant = None
        if config.dp_noise_multiplier > 0:
            from opacus.accountants import RDPAccountant

            self.accountant = RDPAccountant()
        self.rounds = 0

    def train(self, global_parameters: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Local epochs from the global weights; returns the new weights and training metrics."""
        config = self.config
        torch.manual_seed(config.seed + self.rounds)
        self.rounds += 1
        net = from_numpy(global_parameters)
        anchor = [p.detach().clone() for p in net.parameters()]
        optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate)
        data = torch.utils.data.TensorDataset(torch.from_numpy(self.X), torch.from_numpy(self.y))
        loader = torch.utils.data.DataLoader(data, batch_size=min(config.batch_size, len(data)), shuffle=True,
                                             generator=torch.Generator().manual_seed(config.seed + self.rounds))
        if self.accountant is not None:
            from opacus import PrivacyEngine

            engine = PrivacyEngine(accountant="rdp")
            engine.accountant = self.accountant  # one budget across all rounds
            net, optimizer, loader = engine.make_private(module=net, optimizer=optimizer, data_loader=loader,
                                                         noise_multiplier=config.dp_noise_multiplier, max_grad_norm=config.dp_max_grad_norm)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        total, batches = 0.0, 0
        for _ in range(config.local_epochs):
            for x, target in loader:
                if len(x) == 0:  # Poisson sampling under DP can draw an empty batch
                    continue
                optimizer.zero_grad()
                loss = loss_fn(net(x), target)
                if config.fedprox_mu > 0:
                    loss = loss + config.fedprox_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchor))
                loss.backward()
                optimizer.step()
                total, batches = total + float(loss.detach()), batches + 1
        metrics = {"train_loss": total / max(batches, 1), "n_train": float(len(self.y))}
        if self.accountant is not None:
            metrics["dp_epsilon"] = float(self.accountant.get_epsilon(delta=config.dp_delta))
            metrics["dp_delta"] = config.dp_delta
        return to_numpy(net), metrics


def train_centrally(X: np.ndarray, y: np.ndarray, config: TrainingConfig, epochs: int) -> dict[str, np.ndarray]:
    """The same model and optimizer on one data set (a site alone, or all sites pooled), ``epochs`` epochs."""
    trainer = LocalTrainer(X, y, TrainingConfig(**{**config.__dict__, "local_epochs": epochs, "fedprox_mu": 0.0}))
    parameters, _ = trainer.train(initial_parameters())
    return parameters


def predict(parameters: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(from_numpy(parameters)(torch.from_numpy(X))).numpy().astype(float)


def auc_with_ci(y: np.ndarray, p: np.ndarray, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """AUC with a percentile bootstrap 95% CI (the response model's own metric code), and n."""
    auc = metrics_with_ci(np.asarray(y, float), p, bootstrap_weights(len(y), n_bootstrap, seed))["auc"]
    return {**auc, "n": int(len(y))}
