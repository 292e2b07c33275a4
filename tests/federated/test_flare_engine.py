"""NVIDIA FLARE's own server and one client process per site, over 127.0.0.1, on tiny site lakes.

One deployment (server + four site processes) runs three jobs:

- three healthy sites, two FedAvg rounds: the run completes, the global model is registered in MLflow, and
  nothing the server received or stored contains a patient pseudonym, a source identity or a site key;
- faults: a site with zero eligible patients (every round), a diverging update (round 0), a malformed update
  (rounds 1 and 3), a site that leaves mid-round (round 2: its process ends before it answers): rounds 0-2 complete with the rest, each event
  is logged, round 3 has too few accepted updates, and no global model is stored or registered;
- the segmentation network (a small recipe) on three sites' CT images, two rounds with FedProx: every site trains
  in its own process and the server's global model has the recipe's architecture.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from radplan.federated.aggregation import ServerMomentum, SiteUpdate, weighted_average
from radplan.federated.engine import FederatedJobConfig, FlareDeployment, server_process_files
from radplan.federated.flare_server import RECEIVED_FILE
from radplan.federated.flare_server import initial_parameters as round_zero_parameters
from radplan.federated.model import FEATURE_NAMES, initial_parameters
from radplan.federated.reporting import FEDERATED_MODEL_NAME, FEDERATED_SEGMENTATION_MODEL_NAME, log_and_register
from radplan.federated.sites import KEY_FILE
from radplan.models import registry
from radplan.synth.tabular import patient_key
from support.federation import SITES, SMALL_SEGMENTATION_RECIPE, listening_addresses, tiny_sites

pytestmark = pytest.mark.slow

ALLOWED_METRICS = {"train_loss", "n_train", "local_auc", "received_global_auc", "n_held_out", "n_held_out_responders",
                   "global_held_out_auc", "champion_held_out_auc", "dp_epsilon", "dp_delta", "global_held_out_dice", "champion_held_out_dice"}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    sites = tiny_sites(root)
    specs, site_dirs = sites["specs"], sites["site_dirs"]
    segmentation_specs, segmentation_dirs = sites["segmentation_specs"], sites["segmentation_dirs"]
    tracking = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": root / "mlartifacts"}
    with FlareDeployment(root / "flare", list(SITES)) as deployment:
        listening = listening_addresses(deployment.port)
        healthy_config = FederatedJobConfig(num_rounds=2, min_sites=2, grace_s=20, round_timeout_s=90, server_momentum=0.5)
        healthy = deployment.run({s: site_dirs[s] for s in SITES[:3]}, healthy_config, job_name="healthy", timeout_s=240)
        fault_config = FederatedJobConfig(num_rounds=4, min_sites=2, grace_s=6, round_timeout_s=90, faults={
            "site-1": ("diverging", (0,)), "site-2": ("malformed", (1, 3)), "site-3": ("dropout", (2,))})
        faulty = deployment.run(site_dirs, fault_config, job_name="faults", timeout_s=240)
        segmentation_config = FederatedJobConfig(model="segmentation", num_rounds=2, local_epochs=1, min_sites=3, grace_s=20,
                                                 round_timeout_s=180, fedprox_mu=0.01, segmentation_recipe=SMALL_SEGMENTATION_RECIPE)
        segmentation = deployment.run(segmentation_dirs, segmentation_config, job_name="segmentation", timeout_s=300)
    server_files = server_process_files(deployment)  # after the stop: what the server left on disk
    runs = (healthy, faulty, segmentation)
    yield {"specs": specs, "site_dirs": site_dirs, "healthy": healthy, "faulty": faulty, "tracking": tracking,
           "segmentation": segmentation, "segmentation_specs": segmentation_specs, "segmentation_dirs": segmentation_dirs,
           "server_files": server_files + [p for run in runs for p in run.server_files.rglob("*") if p.is_file()],
           "configs": (healthy_config, fault_config, segmentation_config), "listening": listening}


def test_three_site_processes_complete_two_fedavg_rounds_and_the_model_is_registered(federation):
    assert federation["listening"] == ["127.0.0.1"]  # the engine's server port, loopback only
    run = federation["healthy"]
    assert run.complete, (run.job_status, run.summary.get("reason"), run.events)
    rounds = run.summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["sites_accepted"] == ["site-1", "site-2", "site-3"] for r in rounds)
    assert all(set(r["site_metrics"]) == {"site-1", "site-2", "site-3"} for r in rounds)
    assert any(not np.allclose(run.global_parameters[k], v) for k, v in initial_parameters().items())
    assert set(run.summary["evaluation"]) == {"site-1", "site-2", "site-3"}
    # The server's global model is what its FedAvgM step makes of the updates it received and kept, round by round.
    received = [json.loads(line) for line in (run.server_files / RECEIVED_FILE).read_text().splitlines()]
    server, expected = ServerMomentum(momentum=0.5), initial_parameters()
    for round_number in (0, 1):
        updates = [SiteUpdate(r["site"], {k: np.asarray(v) for k, v in r["params"].items()}, r["meta"]["NUM_STEPS_CURRENT_ROUND"])
                   for r in received if r.get("round") == round_number]
        expected = server.step(expected, weighted_average(updates))
    for name, value in expected.items():
        np.testing.assert_allclose(run.global_parameters[name], value, rtol=1e-6, atol=1e-9)
    assert run.summary["server_momentum"] == 0.5
    result = log_and_register(run, federation["configs"][0], **federation["tracking"])
    assert result["registered"] and result["registration"]["alias"] == "champion"
    client = registry.mlflow_client(federation["tracking"]["tracking_uri"], federation["tracking"]["artifact_root"], ())
    logged = client.get_run(result["run_id"]).data.metrics
    assert {"site.site-1.train_loss", "site.site-2.global_held_out_auc", "global.train_loss", "global.held_out_auc"} <= set(logged)


def test_faults_are_logged_rounds_complete_with_the_rest_and_no_partial_model_is_registered(federation):
    run = federation["faulty"]
    events = [(e["event"], e.get("round"), e.get("site")) for e in run.events]
    assert ("zero_eligible_patients", 0, "site-4") in events
    assert ("update_rejected", 0, "site-1") in events  # diverging
    assert ("update_rejected", 1, "site-2") in events  # malformed
    assert ("no_update", 2, "site-3") in events  # dropped out mid-round
    reasons = {(e.get("round"), e.get("site")): e.get("reason", "") for e in run.events if e["event"] == "update_rejected"}
    assert reasons[(0, "site-1")].startswith("diverging") and reasons[(1, "site-2")].startswith("malformed")
    rounds = run.summary["rounds"]
    assert [r["sites_accepted"] for r in rounds[:3]] == [["site-2", "site-3"], ["site-1", "site-3"], ["site-1", "site-2"]]
    assert run.summary["status"] == "incomplete" and "round 3" in run.summary["reason"]
    assert run.global_parameters is None and not run.complete
    assert not (run.server_files / "global_model.npz").exists()
    tracking = federation["tracking"]
    client = registry.mlflow_client(tracking["tracking_uri"], tracking["artifact_root"], ())
    versions_before = len(client.search_model_versions(f"name='{FEDERATED_MODEL_NAME}'"))
    result = log_and_register(run, federation["configs"][1], **tracking)
    assert not result["registered"] and result["status"] == "incomplete"
    assert len(client.search_model_versions(f"name='{FEDERATED_MODEL_NAME}'")) == versions_before


def test_the_segmentation_network_trains_in_three_site_processes_with_fedprox(federation):
    run, config = federation["segmentation"], federation["configs"][2]
    assert run.complete, (run.job_status, run.summary.get("reason"), run.events)
    rounds = run.summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(r["sites_accepted"] == ["site-1", "site-2", "site-3"] for r in rounds)
    # Every site trained on its own images: a loss from each, each over its two training patients.
    assert all(m["n_train"] == 2 and np.isfinite(m["train_loss"]) for r in rounds for m in r["site_metrics"].values())
    # The server started from the recipe's network and moved it; the sites sent weights of the same architecture.
    start = round_zero_parameters("segmentation", config.seed, config.segmentation_recipe)
    assert {k: v.shape for k, v in run.global_parameters.items()} == {k: v.shape for k, v in start.items()}
    assert any(not np.allclose(run.global_parameters[k], v) for k, v in start.items())
    assert run.summary["fedprox_mu"] == 0.01 and run.summary["segmentation_recipe"] == SMALL_SEGMENTATION_RECIPE
    # Each site scored the global model on its held-out patient.
    assert set(run.summary["evaluation"]) == {"site-1", "site-2", "site-3"}
    assert all(0.0 <= m["global_held_out_dice"] <= 1.0 and m["n_held_out"] == 1 for m in run.summary["evaluation"].values())
    # Registered under its own name by held-out Dice; the registered network holds the server's global weights.
    tracking = federation["tracking"]
    result = log_and_register(run, config, **tracking)
    expected_dice = np.mean([m["global_held_out_dice"] for m in run.summary["evaluation"].values()])
    assert result["registered"] and result["registration"]["alias"] == "champion"
    assert result["held_out_dice"] == pytest.approx(expected_dice)
    client = registry.mlflow_client(tracking["tracking_uri"], tracking["artifact_root"], ())
    logged = client.get_run(result["run_id"])
    assert logged.data.tags["radplan.model"] == "segmentation-federated"
    assert logged.data.params["segmentation_recipe.channels"] == "[4, 8, 16, 32]"
    network, _ = registry.load_champion(client, FEDERATED_SEGMENTATION_MODEL_NAME)
    state = network.state_dict()
    assert set(state) == set(run.global_parameters)
    for name, value in run.global_parameters.items():  # the server averages in float64; the network holds float32
        np.testing.assert_array_equal(state[name].numpy(), np.asarray(value).astype(state[name].numpy().dtype))
    # Now that there is a champion, a run whose sites did not score it is logged but neither compared nor registered.
    versions = len(client.search_model_versions(f"name='{FEDERATED_SEGMENTATION_MODEL_NAME}'"))
    again = log_and_register(run, config, **tracking)
    assert not again["registered"] and "not scored" in again["reason"]
    assert len(client.search_model_versions(f"name='{FEDERATED_SEGMENTATION_MODEL_NAME}'")) == versions == 1


def test_the_server_receives_and_stores_only_model_updates(federation):
    secrets_of_sites = []
    for specs, site_dirs in ((federation["specs"], federation["site_dirs"]), (federation["segmentation_specs"], federation["segmentation_dirs"])):
        for spec in specs:
            site_dir = site_dirs[spec.name]
            pseudonyms = pd.read_parquet(site_dir / "lake" / "response_labels.parquet")["patient_key"].tolist()
            secrets_of_sites += pseudonyms + [patient_key(spec.seed, i) for i in range(spec.n_patients)]
            secrets_of_sites.append((site_dir / KEY_FILE).read_bytes().hex())
    assert len(secrets_of_sites) > 60
    needles = [s.encode() for s in secrets_of_sites]
    scanned = 0
    for path in federation["server_files"]:
        content = path.read_bytes()
        scanned += 1
        leaked = [n.decode() for n in needles if n in content]
        assert not leaked, f"{path} holds site data: {leaked[:3]}"
    assert scanned > 10
    # what the server received: model weights of the model's own shapes and aggregate metrics, nothing else
    shapes = {k: np.shape(v) for k, v in initial_parameters().items()}
    received = [json.loads(line) for run in (federation["healthy"], federation["faulty"])
                for line in (run.server_files / RECEIVED_FILE).read_text().splitlines()]
    assert len(received) > 10
    for record in received:
        assert set(record["metrics"] or {}) <= ALLOWED_METRICS
        assert set(record["meta"]) <= {"NUM_STEPS_CURRENT_ROUND", "eligible_patients", "client_name", "initial_metrics"}
        assert set(record["meta"].get("initial_metrics", {})) <= ALLOWED_METRICS
        params = record["params"] or {}
        if record["site"] == "site-2" and record.get("round") in (1, 3):
            continue  # the deliberately malformed update (rejected): zeros of the wrong shape
        assert all(np.shape(v) == shapes[k] for k, v in params.items()), record["site"]
    assert len(FEATURE_NAMES) == shapes["linear.weight"][1]
