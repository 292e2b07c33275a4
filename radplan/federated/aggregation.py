"""Server-side checks of site updates, weighted averaging (FedAvg) and the server's step (FedAvgM), in plain numpy.

An update is *malformed* when its parameter names or shapes differ from the global model's, a value is not
finite, or its sample count is not a positive number; it is *diverging* when its distance from the global
model is more than :data:`DIVERGENCE_FACTOR` times the median distance of the round's well-formed updates
(only judged with at least three well-formed updates, where the median is another site's). Rejected updates
are left out of the average, with the reason recorded; they never touch the global model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DIVERGENCE_FACTOR = 10.0


@dataclass
class SiteUpdate:
    site: str
    parameters: dict
    n_samples: float


def malformed_reason(global_parameters: dict[str, np.ndarray], update: SiteUpdate) -> str | None:
    """Why the update cannot be averaged with the global model, or None."""
    if not isinstance(update.parameters, dict):
        return f"parameters are a {type(update.parameters).__name__}, not a name -> array mapping"
    if set(update.parameters) != set(global_parameters):
        return f"parameter names {sorted(update.parameters)} differ from the global model's {sorted(global_parameters)}"
    for name, reference in global_parameters.items():
        try:
            value = np.asarray(update.parameters[name], dtype=float)
        except (TypeError, ValueError):
            return f"parameter {name!r} is not numeric"
        if value.shape != np.shape(reference):
            return f"parameter {name!r} has shape {value.shape}, the global model {np.shape(reference)}"
        if not np.isfinite(value).all():
            return f"parameter {name!r} has non-finite values"
    if not isinstance(update.n_samples, (int, float)) or not math.isfinite(update.n_samples) or update.n_samples <= 0:
        return f"sample count {update.n_samples!r} is not a positive number"
    return None


def distance(global_parameters: dict[str, np.ndarray], parameters: dict) -> float:
    return float(math.sqrt(sum(float(((np.asarray(parameters[n], float) - np.asarray(g, float)) ** 2).sum()) for n, g in global_parameters.items())))


def screen_updates(global_parameters: dict[str, np.ndarray], updates: list[SiteUpdate]) -> tuple[list[SiteUpdate], dict[str, str]]:
    """(accepted updates, {site: reason} of the rejected)."""
    rejected: dict[str, str] = {}
    well_formed = []
    for update in updates:
        reason = malformed_reason(global_parameters, update)
        if reason:
            rejected[update.site] = f"malformed update: {reason}"
        else:
            well_formed.append(update)
    distances = {u.site: distance(global_parameters, u.parameters) for u in well_formed}
    accepted = well_formed
    if len(well_formed) >= 3:
        median = float(np.median(list(distances.values())))
        accepted = []
        for update in well_formed:
            if median > 0 and distances[update.site] > DIVERGENCE_FACTOR * median:
                rejected[update.site] = (f"diverging update: distance {distances[update.site]:.3g} from the global model is more than "
                                         f"{DIVERGENCE_FACTOR:g} x the round's median {median:.3g}")
            else:
                accepted.append(update)
    return accepted, rejected


def weighted_average(updates: list[SiteUpdate]) -> dict[str, np.ndarray]:
    """FedAvg: parameters averaged with weights proportional to each site's training sample count."""
    if not updates:
        raise ValueError("no accepted update to average")
    total = sum(u.n_samples for u in updates)
    names = list(updates[0].parameters)
    return {n: sum(np.asarray(u.parameters[n], float) * (u.n_samples / total) for u in updates) for n in names}


@dataclass
class ServerMomentum:
    """FedAvgM (Hsu, Qi & Brown 2019): the server treats the round's average update as a gradient step and keeps a
    momentum of it across rounds, ``v = momentum * v + (average - global)``, ``global += learning_rate * v``.

    With ``momentum=0`` and ``learning_rate=1`` it is plain FedAvg (the new global model is the average). Why one
    would raise either: each of K sites takes only its share of a pooled training's optimizer steps, and the
    average of their moves travels about one site's distance, so the global model lags pooled training in steps
    (benchmarks/bench_federated.py measures whether a server step makes up for it). The velocity is the server's
    own state; nothing of it reaches a site except the global model it produces."""

    momentum: float = 0.0
    learning_rate: float = 1.0
    velocity: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"server momentum {self.momentum!r} must be in [0, 1)")
        if not self.learning_rate > 0.0:
            raise ValueError(f"server learning rate {self.learning_rate!r} must be positive")

    def step(self, global_parameters: dict[str, np.ndarray], average: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next global model from the current one and the round's (weighted) average of the accepted updates.
        Integer-valued entries (counters) take the average as it is."""
        new = {}
        for name, averaged in average.items():
            current = np.asarray(global_parameters[name])
            if not np.issubdtype(current.dtype, np.floating):
                new[name] = averaged
                continue
            velocity = self.momentum * self.velocity.get(name, 0.0) + (np.asarray(averaged, float) - current)
            self.velocity[name] = velocity
            new[name] = current + self.learning_rate * velocity
        return new
