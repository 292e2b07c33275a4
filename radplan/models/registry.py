"""MLflow tracking and model-registry helpers shared by the radplan models.

Everything runs against an explicit tracking URI (``sqlite:///<path>`` by
default, an MLflow server in production) and a local artifact folder; MLflow's
file store is never used.

Champion/challenger: every training run registers a new model version. The
version becomes alias ``champion`` only when it beats the current champion
*on the same validation data* (the caller re-evaluates the current champion
on the data the new model was validated on); otherwise it becomes alias
``challenger``. Both values and the decision are written as version tags, so
the MLflow UI shows why a version was or was not promoted.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
# One experiment per model family; the artifact location is <artifact_root>/<experiment>.
SEGMENTATION_EXPERIMENT = "radplan-segmentation"
RESPONSE_EXPERIMENT = "radplan-response"
DEFAULT_EXPERIMENTS = (SEGMENTATION_EXPERIMENT, RESPONSE_EXPERIMENT)


def mlflow_client(
    tracking_uri: str, artifact_root: Path, experiment_names: tuple[str, ...] = DEFAULT_EXPERIMENTS
) -> mlflow.MlflowClient:
    """A client on ``tracking_uri`` whose experiments store artifacts under ``artifact_root``."""
    artifact_root = Path(artifact_root).resolve()
    artifact_root.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for name in experiment_names:
        ensure_experiment(client, name, artifact_root)
    return client


def ensure_experiment(client: mlflow.MlflowClient, name: str, artifact_root: Path) -> str:
    """Experiment id of ``name``, created with artifact location ``artifact_root/name`` if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (Path(artifact_root).resolve() / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


@contextmanager
def active_tracking(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (start_run, log_model) at ``tracking_uri`` for the block.

    The fluent API only knows a process-global URI; it is restored afterwards.
    Not thread-safe: one training at a time per process.
    """
    previous_tracking = mlflow.get_tracking_uri()
    previous_registry = mlflow.get_registry_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous_tracking)
        mlflow.set_registry_uri(previous_registry)


def champion_version(client: mlflow.MlflowClient, model_name: str) -> ModelVersion | None:
    """The version holding alias ``champion``, or None (no model, or no champion yet)."""
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def _logged_model_id(client: mlflow.MlflowClient, run_id: str, artifact_path: str) -> str:
    """Id of the model logged under ``artifact_path`` (its name) in run ``run_id``."""
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    matches = [o.model_id for o in outputs if client.get_logged_model(o.model_id).name == artifact_path]
    if len(matches) != 1:
        raise ValueError(f"run {run_id} has {len(matches)} logged models named {artifact_path!r}; expected exactly one")
    return matches[0]


def _beats(new_value: float, champion_value: float, higher_is_better: bool) -> bool:
    """Strictly better; a NaN on either side never promotes over an existing champion."""
    if math.isnan(new_value) or math.isnan(champion_value):
        return False
    return new_value > champion_value if higher_is_better else new_value < champion_value


def register_with_champion_challenger(
    client: mlflow.MlflowClient,
    *,
    model_name: str,
    run_id: str,
    artifact_path: str,
    metric_name: str,
    new_value: float,
    higher_is_better: bool,
    champion_value_on_same_data: float | None,
) -> dict[str, Any]:
    """Register the model logged at ``run_id``/``artifact_path`` and assign ``champion`` or ``challenger``.

    ``champion_value_on_same_data`` is the current champion's ``metric_name`` on the
    validation data of this run (None when there is no champion yet). The first
    version becomes champion; later ones only when strictly better.
    """
    before = champion_version(client, model_name)
    if before is not None and champion_value_on_same_data is None:
        raise ValueError(
            f"model {model_name!r} has champion version {before.version}: re-evaluate it on the same "
            "validation data and pass champion_value_on_same_data"
        )
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = _logged_model_id(client, run_id, artifact_path)
    # The registry resolves a models:/ source through the process-global tracking URI.
    with active_tracking(client.tracking_uri):
        version = client.create_model_version(model_name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id)
    if before is None:
        promoted, reason = True, "no champion before"
    else:
        promoted = _beats(float(new_value), float(champion_value_on_same_data), higher_is_better)
        reason = "beats champion on same validation data" if promoted else "does not beat champion on same validation data"
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(model_name, alias, version.version)
    tags = {
        "comparison.metric": metric_name,
        "comparison.higher_is_better": str(higher_is_better).lower(),
        "comparison.new_value": repr(float(new_value)),
        "comparison.champion_value_same_data": "" if champion_value_on_same_data is None else repr(float(champion_value_on_same_data)),
        "comparison.champion_version_before": "" if before is None else str(before.version),
        "comparison.decision": alias,
        "comparison.reason": reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    return {
        "version": int(version.version),
        "alias": alias,
        "champion_version_before": None if before is None else int(before.version),
        "new_value": float(new_value),
        "champion_value": None if champion_value_on_same_data is None else float(champion_value_on_same_data),
        "promoted": promoted,
        "metric": metric_name,
    }


def pinned_requirements(*distributions: str) -> list[str]:
    """``name==installed version`` pins for a logged model (skips MLflow's slow requirement inference)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in distributions]


def _flavor_loader(flavors: dict[str, Any]):
    if "pytorch" in flavors:
        import mlflow.pytorch

        return mlflow.pytorch.load_model
    if "sklearn" in flavors:
        import mlflow.sklearn

        return mlflow.sklearn.load_model
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model


def load_model_version(client: mlflow.MlflowClient, model_version: ModelVersion) -> Any:
    """Load a registered version in its native flavour (pytorch module, sklearn estimator, else pyfunc)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    if model_version.model_id:
        location = client.get_logged_model(model_version.model_id).artifact_location
    else:
        location = client.get_model_version_download_uri(model_version.name, model_version.version)
    local_dir = download_artifacts(artifact_uri=location, tracking_uri=client.tracking_uri)
    flavors = Model.load(Path(local_dir) / "MLmodel").flavors
    return _flavor_loader(flavors)(local_dir)


def load_champion(client: mlflow.MlflowClient, model_name: str) -> tuple[Any, int] | None:
    """(model, version number) of the current champion, or None when there is none."""
    version = champion_version(client, model_name)
    if version is None:
        return None
    return load_model_version(client, version), int(version.version)
