"""Federated learning across hospitals: one asset per federated round set (NVIDIA FLARE, MLflow).

FLARE, torch and MLflow are imported when the asset runs, not when the code location loads (every run pays for that).
"""

from typing import Any

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from radplan_resources import LakeResource, MlflowResource


class _FederatedRoundsConfig(Config):
    """What every federated round set sets: sites, rounds, FedProx and the server step (FedAvgM)."""

    site_sizes: list[int] = [120, 80, 50]
    num_rounds: int = 5
    local_epochs: int = 2
    min_sites: int = 2
    fedprox_mu: float = 0.0
    server_momentum: float = 0.0
    server_learning_rate: float = 1.0
    # Every update encrypted (FLARE's HE provisioning, TenSEAL CKKS): the server averages ciphertexts it cannot decrypt.
    # Plain FedAvg only (no server momentum or learning rate); radplan.federated.secure_aggregation says why.
    secure_aggregation: bool = False

    def job_settings(self) -> dict[str, Any]:
        """The FederatedJobConfig fields these settings give."""
        return {"num_rounds": self.num_rounds, "local_epochs": self.local_epochs, "min_sites": self.min_sites, "fedprox_mu": self.fedprox_mu,
                "server_momentum": self.server_momentum, "server_learning_rate": self.server_learning_rate,
                "secure_aggregation": self.secure_aggregation}


class FederatedTrainingConfig(_FederatedRoundsConfig):
    dp_noise_multiplier: float = 0.0


@asset(
    group_name="models",
    description="The response model trained where the data lives: FedAvg (FedProx with fedprox_mu > 0, FedAvgM with "
    "server_momentum > 0 or a server_learning_rate, DP-SGD with dp_noise_multiplier > 0) on NVIDIA FLARE across "
    "synthetic hospital sites, each with its own lake and key; the server aggregates weights only (with secure_aggregation: "
    "encrypted weights it cannot decrypt). Per-site and global metrics in MLflow; the global model is registered as "
    "radplan-response-federated (champion/challenger) only when every round completed.",
)
def federated_response_model(context: AssetExecutionContext, config: FederatedTrainingConfig, lake: LakeResource,
                             mlflow: MlflowResource) -> MaterializeResult:
    from radplan.federated.demo import run_federated_training
    from radplan.federated.engine import FederatedJobConfig

    job_config = FederatedJobConfig(**config.job_settings(), dp_noise_multiplier=config.dp_noise_multiplier)
    summary = run_federated_training(lake.zone("models") / "federated", tracking_uri=mlflow.tracking_uri, artifact_root=mlflow.artifact_path,
                                     sizes=tuple(config.site_sizes), config=job_config, progress=context.log.info)
    return _federated_result(context, summary)


def _federated_result(context: AssetExecutionContext, summary: dict) -> MaterializeResult:
    """The run's events as warnings in the run's log, its outcome as the materialization's metadata (PHI-free)."""
    for event in summary["events"]:
        if event["event"] != "run_end":
            context.log.warning(f"federated event {event['event']}: round {event.get('round')} {event.get('site')} {event.get('reason', '')}")
    metric = f"held_out_{summary['held_out_metric']}"
    return MaterializeResult(metadata={
        "status": summary["status"],
        "rounds_completed": sum(1 for r in summary["rounds"] if "global_metrics" in r),
        "sites": MetadataValue.json(summary["sites"]),
        metric: summary[metric] if summary[metric] is not None else "missing (run incomplete)",
        "registered": summary["registered"],
        "registered_model": summary["model_name"],
        "registration": MetadataValue.json(summary["registration"] or {}),
        "events": MetadataValue.json([{k: e.get(k) for k in ("event", "round", "site", "reason")} for e in summary["events"]]),
        "mlflow_run_id": summary["mlflow_run_id"],
    })


class FederatedSegmentationConfig(_FederatedRoundsConfig):
    site_sizes: list[int] = [12, 10, 8]
    num_rounds: int = 8
    # Overrides of the segmentation CPU recipe's fields (radplan.models.segmentation.SegmentationTrainingConfig), the
    # same at the server and every site, e.g. {"channels": [8, 16, 32, 64]}; empty: the recipe as it is.
    segmentation_recipe: dict[str, Any] = {}


@asset(
    group_name="models",
    description="The lesion segmentation network trained where the images live: FedAvg (FedProx with fedprox_mu > 0, FedAvgM "
    "with server_momentum > 0 or a server_learning_rate) on NVIDIA FLARE across synthetic hospital sites, each with its own "
    "lake, key and CT scanner settings; the server aggregates weights only (with secure_aggregation: encrypted weights it cannot "
    "decrypt). Per-site Dice and losses in MLflow; the global "
    "network is registered as radplan-segmentation-federated (champion/challenger on the sites' held-out images) only when "
    "every round completed.",
)
def federated_segmentation_model(context: AssetExecutionContext, config: FederatedSegmentationConfig, lake: LakeResource,
                                 mlflow: MlflowResource) -> MaterializeResult:
    from radplan.federated.demo import run_federated_training
    from radplan.federated.engine import SEGMENTATION_ROUND_TIMING, FederatedJobConfig

    job_config = FederatedJobConfig(model="segmentation", **config.job_settings(), segmentation_recipe=dict(config.segmentation_recipe),
                                    **SEGMENTATION_ROUND_TIMING)
    summary = run_federated_training(lake.zone("models") / "federated", tracking_uri=mlflow.tracking_uri, artifact_root=mlflow.artifact_path,
                                     sizes=tuple(config.site_sizes), config=job_config, progress=context.log.info)
    return _federated_result(context, summary)
