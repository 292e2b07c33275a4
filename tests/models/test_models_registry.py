"""Champion/challenger registration against a real sqlite MLflow store."""

from __future__ import annotations

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from radplan.models import registry


def _log_run(client, tracking_uri: str, artifact_root, C: float) -> str:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    experiment_id = registry.ensure_experiment(client, registry.RESPONSE_EXPERIMENT, artifact_root)
    with registry.active_tracking(tracking_uri), mlflow.start_run(experiment_id=experiment_id) as run:
        model = LogisticRegression(C=C).fit(X, y)
        mlflow.sklearn.log_model(model, name="model", signature=infer_signature(X, model.predict_proba(X)),
                                 pip_requirements=registry.pinned_requirements("scikit-learn"))
    return run.info.run_id


def test_champion_challenger_aliases_tags_and_loading(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = registry.mlflow_client(tracking_uri, tmp_path / "artifacts")
    experiment = client.get_experiment_by_name(registry.RESPONSE_EXPERIMENT)
    assert experiment.artifact_location == (tmp_path / "artifacts" / registry.RESPONSE_EXPERIMENT).resolve().as_uri()
    assert registry.load_champion(client, "toy") is None

    register = lambda run_id, new, champion: registry.register_with_champion_challenger(  # noqa: E731
        client, model_name="toy", run_id=run_id, artifact_path="model", metric_name="auc",
        new_value=new, higher_is_better=True, champion_value_on_same_data=champion)

    first = register(_log_run(client, tracking_uri, tmp_path / "artifacts", C=1.0), 0.70, None)
    assert (first["version"], first["alias"], first["promoted"]) == (1, "champion", True)

    with pytest.raises(ValueError, match="champion_value_on_same_data"):
        register(_log_run(client, tracking_uri, tmp_path / "artifacts", C=0.5), 0.9, None)

    worse = register(_log_run(client, tracking_uri, tmp_path / "artifacts", C=0.1), 0.65, 0.72)
    assert (worse["version"], worse["alias"], worse["promoted"], worse["champion_version_before"]) == (2, "challenger", False, 1)
    tags = client.get_model_version("toy", 2).tags
    assert tags["comparison.decision"] == "challenger"
    assert float(tags["comparison.new_value"]) == 0.65 and float(tags["comparison.champion_value_same_data"]) == 0.72

    tie = register(_log_run(client, tracking_uri, tmp_path / "artifacts", C=0.2), 0.72, 0.72)
    assert tie["alias"] == "challenger", "a tie must not replace the champion"

    better = register(_log_run(client, tracking_uri, tmp_path / "artifacts", C=10.0), 0.80, 0.72)
    assert (better["version"], better["alias"], better["promoted"]) == (4, "champion", True)
    assert int(client.get_model_version_by_alias("toy", "champion").version) == 4
    assert int(client.get_model_version_by_alias("toy", "challenger").version) == 3

    model, version = registry.load_champion(client, "toy")
    assert version == 4 and isinstance(model, LogisticRegression) and model.C == 10.0


def test_lower_is_better_and_nan_never_promotes(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = registry.mlflow_client(tracking_uri, tmp_path / "artifacts")
    register = lambda new, champion: registry.register_with_champion_challenger(  # noqa: E731
        client, model_name="loss", run_id=_log_run(client, tracking_uri, tmp_path / "artifacts", C=1.0), artifact_path="model",
        metric_name="brier", new_value=new, higher_is_better=False, champion_value_on_same_data=champion)
    assert register(0.20, None)["alias"] == "champion"
    assert register(0.15, 0.18)["alias"] == "champion"
    assert register(float("nan"), 0.18)["alias"] == "challenger"
