"""MLflow for federated runs: per-site and global metrics, and registration of a complete global model only.

A run that did not complete every round (too few accepted updates, aborted, timed out) is logged with its
events and status, and nothing is registered: there is no partial global model. A complete run's global model
is registered like any other champion candidate (:func:`radplan.models.registry.register_with_champion_challenger`),
compared with the current champion on the same sites' held-out patients (each site scored both in the
evaluation task of the same job): the response model by held-out AUC, the segmentation network by held-out Dice,
each under its own registered name.
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
FEDERATED_SEGMENTATION_MODEL_NAME = "radplan-segmentation-federated"
# Per model kind (FederatedJobConfig.model): registered name, MLflow artifact, held-out metric the sites report.
MODEL_KINDS = {
    "response": {"name": FEDERATED_MODEL_NAME, "artifact": "federated_response_model", "metric": "auc"},
    "segmentation": {"name": FEDERATED_SEGMENTATION_MODEL_NAME, "artifact": "federated_segmentation_model", "metric": "dice"},
}


def held_out_metric(evaluation: dict[str, dict], prefix: str, metric: str = "auc") -> float | None:
    """Mean of the sites' held-out ``metric`` (auc, dice) of the ``prefix`` model, weighted by held-out patients;
    None if no site scored it."""
    name = f"{prefix}_held_out_{metric}"
    scored = [(m[name], m["n_held_out"]) for m in evaluation.values() if name in m and m.get("n_held_out")]
    if not scored:
        return None
    return float(np.average([a for a, _ in scored], weights=[n for _, n in scored]))


def _network_and_example(run: FederatedRun, config: FederatedJobConfig) -> tuple[torch.nn.Module, torch.Tensor]:
    """The global model as a torch module, and an input of the shape it takes (for the MLflow signature)."""
    if config.model == "segmentation":
        from radplan.federated.segmentation_site import federated_segmentation_config, network_from

        recipe = federated_segmentation_config(**{**config.segmentation_recipe, "seed": config.seed})
        return network_from(run.global_parameters, recipe), torch.zeros((1, 1, *recipe.roi_size), dtype=torch.float32)
    return from_numpy(run.global_parameters), torch.zeros((1, len(FEATURE_NAMES)), dtype=torch.float32)


def champion_parameters(tracking_uri: str, artifact_root: Path, model_name: str = FEDERATED_MODEL_NAME) -> dict[str, np.ndarray] | None:
    """The registered federated champion's weights (to be scored beside a new global model), or None."""
    client = registry.mlflow_client(tracking_uri, artifact_root, (FEDERATED_EXPERIMENT,))
    loaded = registry.load_champion(client, model_name)
    return None if loaded is None else to_numpy(loaded[0])


def log_and_register(run: FederatedRun, config: FederatedJobConfig, *, tracking_uri: str, artifact_root: Path,
                     model_name: str | None = None) -> dict[str, Any]:
    """Log the run's per-site and global metrics to MLflow; register the global model only when the run is complete
    (under ``model_name``, by default the model kind's name in MODEL_KINDS)."""
    kind = MODEL_KINDS[config.model]
    model_name, metric = model_name or kind["name"], kind["metric"]
    client = registry.mlflow_client(tracking_uri, artifact_root, (FEDERATED_EXPERIMENT,))
    experiment_id = registry.ensure_experiment(client, FEDERATED_EXPERIMENT, artifact_root)
    summary = run.summary
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as mlflow_run:
        mlflow.set_tags({"radplan.model": f"{config.model}-federated", "radplan.federated.status": summary.get("status", "incomplete"),
                         "radplan.federated.engine": "nvflare", "radplan.federated.job_id": run.job_id})
        parameters = {k: v for k, v in asdict(config).items() if k not in ("faults", "segmentation_recipe")}
        parameters.update({f"segmentation_recipe.{k}": v for k, v in sorted(config.segmentation_recipe.items())})
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
        new_value = held_out_metric(summary.get("evaluation", {}), "global", metric)
        if not run.complete:
            return {"registered": False, "status": summary.get("status"), "reason": summary.get("reason") or run.job_status,
                    "run_id": mlflow_run.info.run_id, "events": run.events}
        if new_value is None:
            return {"registered": False, "status": "complete", "reason": "no site scored the global model on held-out patients",
                    "run_id": mlflow_run.info.run_id, "events": run.events}
        champion_value = held_out_metric(summary.get("evaluation", {}), "champion", metric)
        if champion_value is None and registry.champion_version(client, model_name) is not None:
            # Champion and challenger are compared on the same held-out patients or not at all.
            return {"registered": False, "status": "complete", "run_id": mlflow_run.info.run_id, "events": run.events,
                    "reason": f"the current {model_name} champion was not scored on the sites' held-out patients in this run "
                              "(another architecture, or no site could score it): not compared, not registered"}
        mlflow.log_metric(f"global.held_out_{metric}", new_value)
        network, example = _network_and_example(run, config)
        network.eval()
        with torch.no_grad():
            signature = infer_signature(example.numpy(), network(example).numpy())
        requirements = ("torch", "monai", "numpy") if config.model == "segmentation" else ("torch", "numpy")
        mlflow.pytorch.log_model(network, name=kind["artifact"], signature=signature, serialization_format="pickle",
                                 pip_requirements=registry.pinned_requirements(*requirements))
        run_id = mlflow_run.info.run_id
    registration = registry.register_with_champion_challenger(
        client, model_name=model_name, run_id=run_id, artifact_path=kind["artifact"], metric_name=f"federated_held_out_{metric}",
        new_value=new_value, higher_is_better=True, champion_value_on_same_data=champion_value)
    return {"registered": True, "status": "complete", "run_id": run_id, f"held_out_{metric}": new_value, "registration": registration,
            "events": run.events}
