"""Secure aggregation on NVIDIA FLARE's own processes: a deployment provisioned with FLARE's HE builder (TenSEAL CKKS
contexts in every kit, the secret key only at the sites), its server and four site processes on 127.0.0.1.

The same two-round job runs twice on the same sites, in the clear and encrypted; site-2 sends a malformed update in
round 1 and site-4 has no eligible patient in both. The encrypted run must reach the plain run's global model, with
the same sites accepted and the same events, while the server only ever holds ciphertexts it cannot decrypt. A small
segmentation network trains encrypted as well.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tenseal as ts
from dagster import materialize

from radplan.federated.engine import FederatedJobConfig, FlareDeployment, server_process_files
from radplan.federated.flare_server import GLOBAL_MODEL_FILE, RECEIVED_FILE
from radplan.federated.reporting import log_and_register
from radplan.federated.secure_aggregation import ENCRYPTED_GLOBAL_MODEL_FILE, decrypt_global_model
from radplan.models import registry
from radplan_assets.federated import federated_response_model
from radplan_resources import LakeResource, MlflowResource
from support.federation import SITES, SMALL_SEGMENTATION_RECIPE, listening_addresses, tiny_sites

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def secure_federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure-federation")
    sites = tiny_sites(root)
    site_dirs, segmentation_dirs = sites["site_dirs"], sites["segmentation_dirs"]
    settings = {"num_rounds": 2, "min_sites": 2, "grace_s": 20, "round_timeout_s": 90, "faults": {"site-2": ("malformed", (1,))}}
    with FlareDeployment(root / "flare", list(SITES), secure_aggregation=True) as deployment:
        listening = listening_addresses(deployment.port)
        contexts = {participant: ts.context_from(deployment.he_context_file(participant).read_bytes()) for participant in ("server", *SITES)}
        server_context_file = deployment.he_context_file("server")
        plain = deployment.run(site_dirs, FederatedJobConfig(**settings), job_name="plain", timeout_s=240)
        encrypted_config = FederatedJobConfig(**settings, secure_aggregation=True)
        encrypted = deployment.run(site_dirs, encrypted_config, job_name="encrypted", timeout_s=240)
        # DP-SGD and FedProx at the sites, their updates then encrypted: the site-side options compose with it
        private = deployment.run({s: site_dirs[s] for s in SITES[:3]}, FederatedJobConfig(
            num_rounds=2, min_sites=3, grace_s=20, round_timeout_s=90, dp_noise_multiplier=1.0, fedprox_mu=0.1, secure_aggregation=True),
            job_name="private", timeout_s=240)
        segmentation = deployment.run(segmentation_dirs, FederatedJobConfig(
            model="segmentation", num_rounds=2, local_epochs=1, min_sites=3, grace_s=20, round_timeout_s=180,
            segmentation_recipe=SMALL_SEGMENTATION_RECIPE, secure_aggregation=True), job_name="segmentation", timeout_s=300)
    yield {"plain": plain, "encrypted": encrypted, "segmentation": segmentation, "private": private, "encrypted_config": encrypted_config, "contexts": contexts, "listening": listening,
           "server_context_file": server_context_file, "root": root,
           # what the server process kept of the encrypted job: its downloaded run folder (the plain job's is left out)
           "encrypted_server_files": [p for p in encrypted.server_files.rglob("*") if p.is_file()],
           "server_logs": [p for p in server_process_files(deployment) if p.suffix in (".txt", ".json", ".log")]}


def _received(run) -> list[dict]:
    return [json.loads(line) for line in (run.server_files / RECEIVED_FILE).read_text().splitlines()]


def test_only_the_sites_hold_the_secret_key(secure_federation):
    assert secure_federation["listening"] == ["127.0.0.1"]
    contexts = secure_federation["contexts"]
    assert not contexts["server"].is_private()
    assert all(contexts[site].is_private() for site in SITES)


def test_the_encrypted_average_is_the_plain_average(secure_federation):
    plain, encrypted = secure_federation["plain"], secure_federation["encrypted"]
    assert plain.complete and encrypted.complete, (encrypted.job_status, encrypted.summary.get("reason"), encrypted.events)
    assert encrypted.summary["secure_aggregation"] and not plain.summary["secure_aggregation"]
    assert [r["sites_accepted"] for r in encrypted.summary["rounds"]] == [r["sites_accepted"] for r in plain.summary["rounds"]] \
        == [["site-1", "site-2", "site-3"], ["site-1", "site-3"]]
    # the server still sees what structure tells: the malformed update (9 values for 8) and the site with no patient
    events = [(e["event"], e.get("round"), e.get("site")) for e in encrypted.events]
    assert events == [(e["event"], e.get("round"), e.get("site")) for e in plain.events]
    assert ("update_rejected", 1, "site-2") in events and ("zero_eligible_patients", 0, "site-4") in events
    assert set(encrypted.global_parameters) == set(plain.global_parameters)
    for name, value in plain.global_parameters.items():
        assert encrypted.global_parameters[name].shape == value.shape
        np.testing.assert_allclose(encrypted.global_parameters[name], value, atol=1e-5)  # CKKS is approximate: ~1e-7 here
    assert np.abs(plain.global_parameters["linear.weight"]).max() > 0.01  # the comparison is of a trained model
    # the sites scored the model they decrypted
    assert set(encrypted.summary["evaluation"]) == set(SITES)


def test_the_server_holds_only_ciphertexts(secure_federation):
    plain, encrypted = secure_federation["plain"], secure_federation["encrypted"]
    # every update the encrypted job's server received was ciphertexts only
    updates = [r for r in _received(encrypted) if r.get("task") != "validate" and r["params"]]
    assert len(updates) == 6  # 3 sites with patients x 2 rounds
    assert all(set(value) == {"encrypted_values", "sha256"} for r in updates for value in r["params"].values())
    # Round 0 of both jobs starts from the same weights on the same data, so each site sent the same values. The plain
    # server kept them (the control); the encrypted server's files hold them in no form: text, float32 or float64.
    sent = {(r["site"], name): np.asarray(value, float).ravel() for r in _received(plain) if r.get("round") == 0 and r["params"]
            for name, value in r["params"].items()}
    assert len(sent) == 6
    needles = set()
    for values in sent.values():
        for v in values:
            if abs(v) > 1e-4:
                needles |= {repr(float(v)).encode(), f"{v:.6g}".encode(), struct.pack("<f", v), struct.pack("<d", v)}
    plain_received = (plain.server_files / RECEIVED_FILE).read_bytes()
    assert any(repr(float(v)).encode() in plain_received for values in sent.values() for v in values if abs(v) > 1e-4)
    assert len(needles) > 20
    assert not (encrypted.server_files / GLOBAL_MODEL_FILE).exists()
    scanned = 0
    for path in secure_federation["encrypted_server_files"] + secure_federation["server_logs"]:
        content = path.read_bytes()
        scanned += 1
        leaked = [n for n in needles if n in content]
        assert not leaked, f"{path} holds a site's update in the clear: {leaked[:3]}"
    assert scanned > 10


def test_dp_sgd_and_fedprox_at_the_sites_compose_with_it(secure_federation):
    run = secure_federation["private"]
    assert run.complete, (run.job_status, run.summary.get("reason"), run.events)
    assert run.summary["fedprox_mu"] == 0.1
    epsilons = [m["dp_epsilon"] for r in run.summary["rounds"] for m in r["site_metrics"].values()]
    assert len(epsilons) == 6 and all(0 < e < float("inf") for e in epsilons)
    updates = [r for r in _received(run) if r.get("task") != "validate"]
    assert len(updates) == 6 and all(set(v) == {"encrypted_values", "sha256"} for r in updates for v in r["params"].values())


def test_the_segmentation_network_trains_on_ciphertexts(secure_federation):
    run = secure_federation["segmentation"]
    assert run.complete, (run.job_status, run.summary.get("reason"), run.events)
    assert all(r["sites_accepted"] == ["site-1", "site-2", "site-3"] for r in run.summary["rounds"])
    updates = [r for r in _received(run) if r.get("task") != "validate"]
    assert len(updates) == 6
    # 38,145 weights in 37 tensors: each arrives as one encrypted vector of its size (several ciphertexts for the large ones)
    assert all(set(value) == {"encrypted_values", "sha256"} for r in updates for value in r["params"].values())
    shapes = run.summary["parameter_shapes"]
    assert sum(r["params"][name]["encrypted_values"] for name in shapes for r in updates[:1]) == sum(int(np.prod(s)) for s in shapes.values())
    assert {name: list(value.shape) for name, value in run.global_parameters.items()} == shapes
    assert all(0.0 <= m["global_held_out_dice"] <= 1.0 for m in run.summary["evaluation"].values())


def test_the_server_cannot_decrypt_the_model_it_kept_and_a_site_can(secure_federation):
    encrypted = secure_federation["encrypted"]
    stored = encrypted.server_files / ENCRYPTED_GLOBAL_MODEL_FILE
    shapes = encrypted.summary["parameter_shapes"]
    with pytest.raises(ValueError, match="no secret key"):
        decrypt_global_model(stored, secure_federation["server_context_file"], shapes)
    server_context = secure_federation["contexts"]["server"]
    with np.load(stored) as kept:
        vector = ts.ckks_vector_from(server_context, kept["linear.weight"].tobytes())
    with pytest.raises(ValueError):
        vector.decrypt()  # TenSEAL refuses: the context holds no secret key
    site_context = secure_federation["root"] / "site-key.tenseal"
    site_context.write_bytes(secure_federation["contexts"]["site-3"].serialize(save_secret_key=True))
    for name, value in decrypt_global_model(stored, site_context, shapes).items():
        np.testing.assert_array_equal(value, encrypted.global_parameters[name])


def test_secure_aggregation_is_registered_like_any_candidate_and_refuses_what_it_cannot_do(secure_federation):
    root = secure_federation["root"]
    tracking = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": root / "mlartifacts"}
    result = log_and_register(secure_federation["encrypted"], secure_federation["encrypted_config"], **tracking)
    assert result["registered"], result
    client = registry.mlflow_client(tracking["tracking_uri"], tracking["artifact_root"], ())
    assert client.get_run(result["run_id"]).data.params["secure_aggregation"] == "True"
    with pytest.raises(ValueError, match="server_momentum"):
        FederatedJobConfig(secure_aggregation=True, server_momentum=0.5)
    with pytest.raises(ValueError, match="provisioned"):
        FlareDeployment(root / "unused", ["site-1"]).run({"site-1": root}, FederatedJobConfig(secure_aggregation=True))


def test_the_dagster_asset_trains_with_secure_aggregation(tmp_path):
    mlflow = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "mlartifacts"))
    config = {"site_sizes": [16, 14, 12], "num_rounds": 2, "local_epochs": 1, "secure_aggregation": True}
    result = materialize([federated_response_model], resources={"lake": LakeResource(root=str(tmp_path / "lake")), "mlflow": mlflow},
                         run_config={"ops": {"federated_response_model": {"config": config}}})
    assert result.success
    metadata = result.asset_materializations_for_node("federated_response_model")[0].metadata
    assert metadata["status"].value == "complete" and metadata["rounds_completed"].value == 2
    assert metadata["registered"].value is True and 0.0 <= metadata["held_out_auc"].value <= 1.0
    client = registry.mlflow_client(mlflow.tracking_uri, tmp_path / "mlartifacts", ())
    version = registry.champion_version(client, metadata["registered_model"].value)
    assert client.get_run(version.run_id).data.params["secure_aggregation"] == "True"
