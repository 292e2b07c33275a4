"""MLflow for federated runs: per-site and global metrics, and registration of a complete global model only.

A run that did not complete every round (too few accepted updates, aborted, timed out) is logged with its
events and status, and nothing is registered: there is no partial global model. A complete run's global model
is registered like any other champion candidate (:func:`radplan.models.registry.register_with_champion_challenger`),
compared with the current champion on the same sites' held-out patients (each site scored both in the
evaluation task of the same job).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import infer_signature

from radplan.federated.engine import FederatedJobConfig, FederatedRun
from radplan.federated.model import FEATURE_NAMES, from_numpy, to_numpy
from radplan.models import registry

FEDERATED_EXPERIMENT = "radplan-federated"
FEDERATED_MODEL_NAME = "radplan-response-federated"
MODEL_ARTIFACT = "federated_response_model"


def held_out_auc(evaluation: dict[str, dict], prefix: str) -> float | None:
    """Mean of the sites' held-out AUC of the ``prefix`` model, weighted by held-out patients; None if no site scored it."""
    scored = [(m[f"{prefix}_held_out_auc"], m["n_held_out"]) for m in evaluation.values() if f"{prefix}_held_out_auc" in m and m.get("n_held_out")]
    if not scored:
        return None
    return float(np.average([a for a, _ in scored], weights=[n for _, n in scored]))


def champion_parameters(tracking_uri: str, artifact_root: Path, model_name: str = FEDERATED_MODEL_NAME) -> dict[str, np.ndarray] | None:
    """The registered federated champion's weights (to be scored beside a new global model), or None."""
    client = registry.mlflow_client(tracking_uri, artifact_root, (FEDERATED_EXPERIMENT,))
    loaded = registry.load_champion(client, model_name)
    return None if loaded is None else to_numpy(loaded[0])


def log_and_register(run: FederatedRun, config: FederatedJobConfig, *, tracking_uri: str, artifact_root: Path,
                     model_name: str = FEDERATED_MODEL_NAME) -> dict[str, Any]:
    """Log the run's per-site and global metrics to MLflow; register the global model only when the run is complete."""
    client = registry.mlflow_client(tracking_uri, artifact_root, (FEDERATED_EXPERIMENT,))
    experiment_id = registry.ensure_experiment(client, FEDERATED_EXPERIMENT, artifact_root)
    summary = run.summary
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as mlflow_run:
        mlflow.set_tags({"radplan.model": "response-federated", "radplan.federated.status": summary.get("status", "incomplete"),
                         "radplan.federated.engine": "nvflare", "radplan.federated.job_id": run.job_id})
        parameters = {k: v for k, v in asdict(config).items() if k != "faults"}
        parameters.update(sites=",".join(summary.get("sites", [])), algorithm="fedprox" if config.fedprox_mu > 0 else "fedavg",
                          faults_injected=",".join(f"{s}:{f}@{r}" for s, (f, r) in sorted(config.faults.items())) or "none")
        mlflow.log_params(parameters)
        for record in summary.get("rounds", []):
            step = int(record["round"])
            for site, metrics in record.get("site_metrics", {}).items():
                mlflow.log_metrics({f"site.{site}.{name}": float(value) for name, value in metrics.items()}, step=step)
            mlflow.log_metrics({f"global.{name}": float(value) for name, value in record.get("global_metrics", {}).items()}, step=step)
            mlflow.log_metric("sites_accepted", len(record.get("sites_accepted", [])), step=step)
        for site, metrics in summary.get("evaluation", {}).items():
            mlflow.log_metrics({f"site.{site}.{name}": float(value) for name, value in metrics.items()})
        epsilons = [m["dp_epsilon"] for r in summary.get("rounds", []) for m in r.get("site_metrics", {}).values() if "dp_epsilon" in m]
        if epsilons:
            mlflow.log_metrics({"dp_epsilon_max_site": max(epsilons)})
        mlflow.log_dict({"summary": summary, "events": run.events}, "federated_run.json")
        new_auc = held_out_auc(summary.get("evaluation", {}), "global")
        if not run.complete:
            return {"registered": False, "status": summary.get("status"), "reason": summary.get("reason") or run.job_status,
                    "run_id": mlflow_run.info.run_id, "events": run.events}
        if new_auc is None:
            return {"registered": False, "status": "complete", "reason": "no site scored the global model on held-out patients",
                    "run_id": mlflow_run.info.run_id, "events": run.events}
        mlflow.log_metric("global.held_out_auc", new_auc)
        network = from_numpy(run.global_parameters)
        example = torch.zeros((1, len(FEATURE_NAMES)), dtype=torch.float32)
        with torch.no_grad():
            signature = infer_signature(example.numpy(), network(example).numpy())
        mlflow.pytorch.log_model(network, name=MODEL_ARTIFACT, signature=signature, serialization_format="pickle",
                                 pip_requirements=registry.pinned_requirements("torch", "numpy"))
        run_id = mlflow_run.info.run_id
    registration = registry.register_with_champion_challenger(
        client, model_name=model_name, run_id=run_id, artifact_path=MODEL_ARTIFACT, metric_name="federated_held_out_auc",
        new_value=new_auc, higher_is_better=True, champion_value_on_same_data=held_out_auc(summary.get("evaluation", {}), "champion"))
    return {"registered": True, "status": "complete", "run_id": run_id, "held_out_auc": new_auc, "registration": registration, "events": run.events}
