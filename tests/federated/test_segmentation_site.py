"""A site's local fit of the segmentation network in a federated round (radplan.federated.segmentation_site)."""

from __future__ import annotations

import numpy as np
import pytest

from models.models_synthetic import sphere_volumes
from radplan.federated.segmentation_site import OptimizerMoments, initial_parameters, train_locally
from radplan.models.segmentation import SegmentationTrainingConfig

TINY = SegmentationTrainingConfig(roi_size=(24, 24, 16), samples_per_volume=2, batch_size=2, channels=(4, 8, 16, 32), val_every_n_epochs=1)


def _steps(moments: OptimizerMoments) -> set[int]:
    return {int(state["step"]) for state in moments.state["state"].values()}


def test_a_site_carries_its_optimizer_state_from_round_to_round(tmp_path):
    pairs = sphere_volumes(tmp_path, 2, shape=(32, 32, 20))
    moments = OptimizerMoments()
    first, _ = train_locally(initial_parameters(TINY), pairs, TINY, 1, schedule=(0, 4), moments=moments)
    (steps_one_round,) = _steps(moments)
    assert steps_one_round > 0
    # The next round starts from the averaged weights and from this site's AdamW moments and step counts.
    train_locally(first, pairs, TINY, 1, seed=1, schedule=(1, 4), moments=moments)
    assert _steps(moments) == {2 * steps_one_round}
    # A fit without carried moments starts its optimizer afresh.
    fresh = OptimizerMoments()
    train_locally(first, pairs, TINY, 1, seed=1, schedule=(1, 4), moments=fresh)
    assert _steps(fresh) == {steps_one_round}


def test_fedprox_keeps_a_sites_segmentation_weights_near_the_global_model(tmp_path):
    pairs = sphere_volumes(tmp_path, 2, shape=(32, 32, 20))
    start = initial_parameters(TINY)

    def moved(parameters) -> float:
        return float(np.sqrt(sum(((parameters[k] - start[k]) ** 2).sum() for k in start if np.issubdtype(start[k].dtype, np.floating))))

    plain, _ = train_locally(start, pairs, TINY, 2, seed=3)
    proximal, _ = train_locally(start, pairs, TINY, 2, seed=3, fedprox_mu=100.0)
    assert moved(proximal) < 0.9 * moved(plain)


def test_a_segmentation_job_sends_its_recipe_to_every_site_and_refuses_what_its_sites_do_not_run(tmp_path):
    from radplan.federated.engine import FederatedJobConfig
    from radplan.federated.flare_client import parse_arguments
    from radplan.federated.segmentation_site import federated_segmentation_config

    job = FederatedJobConfig(model="segmentation", segmentation_recipe={"roi_size": [24, 24, 16], "channels": [4, 8, 16, 32]})
    # What the site process receives (FLARE splits on whitespace) is the same recipe, tuples restored.
    site = parse_arguments(job.site_arguments("site-1", tmp_path).split())
    recipe = federated_segmentation_config(**site.segmentation_recipe)
    assert (recipe.roi_size, recipe.channels) == ((24, 24, 16), (4, 8, 16, 32))
    with pytest.raises(ValueError, match="unknown segmentation recipe fields"):
        FederatedJobConfig(model="segmentation", segmentation_recipe={"chanels": [4]})
    with pytest.raises(ValueError, match="response model only"):
        FederatedJobConfig(model="segmentation", faults={"site-1": ("dropout", (1,))})
    with pytest.raises(ValueError, match="response model only"):
        FederatedJobConfig(model="segmentation", dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="segmentation model only"):
        FederatedJobConfig(segmentation_recipe={"batch_size": 1})
    with pytest.raises(ValueError, match="whitespace"):
        FederatedJobConfig().site_arguments("site-1", tmp_path / "a folder")
