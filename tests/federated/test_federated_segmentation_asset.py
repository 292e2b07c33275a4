"""The federated_segmentation_model asset, materialized by Dagster: FLARE's server and three site processes train a
small segmentation network on each site's CT images; MLflow gets the run and the registered global network."""

from __future__ import annotations

import pytest
from dagster import materialize

from radplan.federated.reporting import FEDERATED_SEGMENTATION_MODEL_NAME
from radplan.models import registry
from radplan_assets.federated import federated_segmentation_model
from radplan_resources import LakeResource, MlflowResource
from support.federation import SMALL_SEGMENTATION_RECIPE

pytestmark = pytest.mark.slow



def test_the_asset_trains_across_site_processes_and_registers_the_global_network(tmp_path):
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "mlartifacts"))
    config = {"site_sizes": [4, 4, 4], "num_rounds": 2, "local_epochs": 1, "min_sites": 3, "segmentation_recipe": SMALL_SEGMENTATION_RECIPE}
    result = materialize([federated_segmentation_model], resources={"lake": LakeResource(root=str(tmp_path / "lake")), "mlflow": mlflow},
                         run_config={"ops": {"federated_segmentation_model": {"config": config}}})
    assert result.success
    metadata = result.asset_materializations_for_node("federated_segmentation_model")[0].metadata
    assert metadata["status"].value == "complete" and metadata["rounds_completed"].value == 2
    assert metadata["registered"].value is True and metadata["registered_model"].value == FEDERATED_SEGMENTATION_MODEL_NAME
    assert 0.0 <= metadata["held_out_dice"].value <= 1.0
    # Each site's lake and images stay under the lake's models zone; FLARE's workspace is removed after the run.
    federated = tmp_path / "lake" / "models" / "federated"
    assert sorted(p.name for p in (federated / "segmentation-sites").iterdir()) == ["site-1", "site-2", "site-3"]
    assert not (federated / "flare").exists()
    client = registry.mlflow_client(mlflow.tracking_uri, tmp_path / "mlartifacts", ())
    assert registry.champion_version(client, FEDERATED_SEGMENTATION_MODEL_NAME) is not None
