"""Site lakes, update screening, FedProx and DP-SGD at a site: the parts of federated training that need no engine."""

from __future__ import annotations

import numpy as np
import pytest

from radplan.federated.aggregation import ServerMomentum, SiteUpdate, screen_updates, weighted_average
from radplan.federated.model import LocalTrainer, TrainingConfig, design, initial_parameters
from radplan.federated.sites import KEY_FILE, SiteSpec, default_site_specs, read_site, write_site_lakes


@pytest.fixture(scope="module")
def site_lakes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    return write_site_lakes(default_site_specs((40, 30, 30)), root)


def test_sites_share_no_patient_and_keep_their_own_key_and_case_mix(site_lakes):
    sites = {name: read_site(path) for name, path in site_lakes.items()}
    keys = [set(site.labels["patient_key"]) for site in sites.values()]
    assert sum(len(k) for k in keys) == len(set().union(*keys)) == 100
    assert len({(path / KEY_FILE).read_bytes() for path in site_lakes.values()}) == 3
    assert all(oct((path / KEY_FILE).stat().st_mode)[-3:] == "600" for path in site_lakes.values())
    lung = {name: (site.patient_features["cancer_type"] == "nsclc").mean() for name, site in sites.items()}
    melanoma = {name: (site.patient_features["cancer_type"] == "melanoma").mean() for name, site in sites.items()}
    assert lung["site-1"] > lung["site-3"] and melanoma["site-3"] > melanoma["site-1"]
    for site in sites.values():
        train, held_out = site.train[1], site.held_out[1]
        assert len(train) + len(held_out) == len(site.labels) and len(held_out) > 0
        assert not set(train["patient_key"]) & set(held_out["patient_key"])


def test_sites_with_one_seed_would_share_patients_and_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shared seed"):
        write_site_lakes([SiteSpec("a", 5, 1), SiteSpec("b", 5, 1)], tmp_path)


def test_malformed_and_diverging_updates_are_left_out_of_the_average():
    base = initial_parameters()
    good = [SiteUpdate(f"s{i}", {k: v + 0.1 * (i + 1) for k, v in base.items()}, n) for i, n in enumerate((10.0, 30.0))]
    wrong_shape = SiteUpdate("bad-shape", {k: np.zeros(np.size(v) + 1) for k, v in base.items()}, 5.0)
    not_finite = SiteUpdate("nan", {k: np.full(np.shape(v), np.nan) for k, v in base.items()}, 5.0)
    far = SiteUpdate("far", {k: v + 1e4 for k, v in base.items()}, 5.0)
    no_count = SiteUpdate("no-count", dict(base), 0.0)
    accepted, rejected = screen_updates(base, [*good, wrong_shape, not_finite, far, no_count])
    assert [u.site for u in accepted] == ["s0", "s1"]
    assert rejected["bad-shape"].startswith("malformed") and "shape" in rejected["bad-shape"]
    assert "non-finite" in rejected["nan"] and "sample count" in rejected["no-count"]
    assert rejected["far"].startswith("diverging")
    averaged = weighted_average(accepted)
    np.testing.assert_allclose(averaged["linear.bias"], base["linear.bias"] + 0.1 * 0.25 + 0.2 * 0.75)



def test_server_momentum_is_fedavg_at_zero_and_accumulates_the_rounds_updates_otherwise():
    start = {"w": np.zeros(3), "count": np.array(4, dtype=np.int64)}
    plain, momentum = ServerMomentum(), ServerMomentum(momentum=0.5)
    # every round the sites' average lands one unit past the global model it was sent
    g_plain, g_momentum = start, start
    for _ in range(3):
        g_plain = plain.step(g_plain, {"w": g_plain["w"] + 1.0, "count": np.array(5, dtype=np.int64)})
        g_momentum = momentum.step(g_momentum, {"w": g_momentum["w"] + 1.0, "count": np.array(5, dtype=np.int64)})
    np.testing.assert_allclose(g_plain["w"], 3.0)  # FedAvg: the global model is the average
    np.testing.assert_allclose(g_momentum["w"], 1.0 + 1.5 + 1.75)  # velocity 1, 1.5, 1.75
    assert g_momentum["count"] == 5 and g_momentum["count"].dtype == np.int64  # counters are averaged, not stepped
    doubled = ServerMomentum(learning_rate=2.0).step(start, {"w": np.full(3, 0.5), "count": np.array(5)})
    np.testing.assert_allclose(doubled["w"], 1.0)  # twice the averaged move
    with pytest.raises(ValueError, match="momentum"):
        ServerMomentum(momentum=1.0)
    with pytest.raises(ValueError, match="learning rate"):
        ServerMomentum(learning_rate=0.0)

def _site_arrays(site_lakes, name):
    features, labels = read_site(site_lakes[name]).train
    return design(features, labels["therapy"]), labels["responded"].to_numpy(int)


def test_fedprox_keeps_the_local_model_nearer_the_global_one(site_lakes):
    X, y = _site_arrays(site_lakes, "site-1")
    start = initial_parameters()
    drift = {}
    for mu in (0.0, 5.0):
        parameters, _ = LocalTrainer(X, y, TrainingConfig(local_epochs=20, fedprox_mu=mu)).train(start)
        drift[mu] = sum(float(np.linalg.norm(parameters[k] - start[k])) for k in start)
    assert drift[5.0] < 0.8 * drift[0.0]


def test_dp_sgd_reports_a_privacy_budget_that_grows_with_every_round(site_lakes):
    X, y = _site_arrays(site_lakes, "site-2")
    trainer = LocalTrainer(X, y, TrainingConfig(local_epochs=1, dp_noise_multiplier=1.0, dp_max_grad_norm=1.0, batch_size=8))
    parameters, first = trainer.train(initial_parameters())
    _, second = trainer.train(parameters)
    assert 0 < first["dp_epsilon"] < second["dp_epsilon"] and first["dp_delta"] == 1e-5
    assert set(parameters) == set(initial_parameters())  # Opacus' module wrapper does not leak into the exchanged names
