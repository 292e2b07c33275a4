"""The NVIDIA FLARE controller (runs inside the FLARE server's job process): FedAvg / FedProx / FedAvgM rounds.

Each round sends the global weights to every site, waits until ``min_sites`` sites have answered (plus
``grace_s`` for the others, at most ``round_timeout_s``), screens the updates
(:func:`radplan.federated.aggregation.screen_updates`) and averages the accepted ones; the new global model is that
average, or with a server momentum or learning rate the server's step along it
(:class:`~radplan.federated.aggregation.ServerMomentum`). A site that sent nothing (dropped out, timed out),
reported zero eligible patients, or sent a malformed or diverging update is left out of that round, and the event is written to the server's event log. A round with fewer than ``min_sites``
accepted updates ends the run as *incomplete*.

What the server keeps, all in its run folder (downloaded with the job result):

- ``received_updates.jsonl``: every result as received (site, round, parameters - values, or for large models
  names, shapes and digests -, meta, metrics), so that what left each site can be audited;
- ``federated_events.jsonl``: dropped-out, zero-patient, rejected sites, and the run's end;
- ``federated_summary.json``: status (complete/incomplete), rounds, per-round per-site and global metrics;
- ``global_model.npz``: the global weights, written only when every round completed; with ``secure_aggregation``
  ``global_model.encrypted.npz`` instead, ciphertexts the server cannot decrypt
  (:mod:`radplan.federated.secure_aggregation`: the updates arrive encrypted and are averaged as they are).

No patient data reaches the server: sites send weights and aggregate metrics only (see the privacy test).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController

from radplan.federated import secure_aggregation
from radplan.federated.aggregation import ServerMomentum, SiteUpdate, screen_updates, weighted_average


def initial_parameters(model_kind: str, seed: int, segmentation_recipe: dict | None = None) -> dict[str, np.ndarray]:
    """Round 0 weights: the response model's (zeros) or the segmentation network's (seeded initialization, the
    architecture of ``segmentation_recipe``: overrides of the CPU recipe the sites train with)."""
    if model_kind == "response":
        from radplan.federated.model import initial_parameters as response_parameters

        return response_parameters()
    if model_kind == "segmentation":
        from radplan.federated.segmentation_site import federated_segmentation_config
        from radplan.federated.segmentation_site import initial_parameters as segmentation_parameters

        return segmentation_parameters(federated_segmentation_config(**{**(segmentation_recipe or {}), "seed": seed}))
    raise ValueError(f"unknown model kind {model_kind!r} (response or segmentation)")

SUMMARY_FILE = "federated_summary.json"
EVENTS_FILE = "federated_events.jsonl"
RECEIVED_FILE = "received_updates.jsonl"
GLOBAL_MODEL_FILE = "global_model.npz"
ELIGIBLE_META = "eligible_patients"
AUDIT_ALL_VALUES_UP_TO = 10_000


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _audited(params: Any) -> Any:
    """What the audit file keeps of received weights: every value for small models; names, shapes and a SHA-256 of
    the bytes for large ones (a segmentation network's weights would make a file of tens of MB per round); for
    ciphertexts, their number of values and a SHA-256 of their serialized bytes."""
    if isinstance(params, dict) and params and any(secure_aggregation.is_ciphertext(v) for v in params.values()):
        return {name: {"encrypted_values": value.size(), "sha256": hashlib.sha256(value.serialize()).hexdigest()}
                if secure_aggregation.is_ciphertext(value) else value for name, value in params.items()}
    if not isinstance(params, dict) or sum(np.size(v) for v in params.values()) <= AUDIT_ALL_VALUES_UP_TO:
        return params
    return {name: {"shape": list(np.shape(value)), "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
            for name, value in params.items()}


class RadplanFedAvg(ModelController):
    def __init__(self, num_rounds: int = 2, min_sites: int = 2, round_timeout_s: int = 120, grace_s: int = 10,
                 fedprox_mu: float = 0.0, champion_parameters: dict | None = None, model_kind: str = "response", seed: int = 0,
                 server_momentum: float = 0.0, server_learning_rate: float = 1.0, segmentation_recipe: dict | None = None,
                 secure_aggregation: bool = False) -> None:
        # resilient: a site's error result is left out of the round; this controller decides if the round holds
        super().__init__(ignore_result_error=True, allow_empty_global_weights=True)
        self.num_rounds = num_rounds
        self.min_sites = min_sites
        self.round_timeout_s = round_timeout_s
        self.grace_s = grace_s
        self.fedprox_mu = fedprox_mu
        # momentum 0 and learning rate 1: plain FedAvg; otherwise FedAvgM / a server step size (aggregation.ServerMomentum)
        self.server_momentum = server_momentum
        self.server_learning_rate = server_learning_rate
        # the registered champion's weights (name -> nested lists), evaluated beside the new model on the same sites
        self.champion_parameters = champion_parameters
        self.model_kind = model_kind
        self.seed = seed
        self.segmentation_recipe = segmentation_recipe or {}
        self.secure_aggregation = secure_aggregation

    def _run_dir(self) -> Path:
        return Path(self.engine.get_workspace().get_run_dir(self.fl_ctx.get_job_id()))

    def _append(self, file_name: str, record: dict) -> None:
        with open(self._run_dir() / file_name, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_jsonable(record), sort_keys=True) + "\n")

    def _event(self, kind: str, **details: Any) -> None:
        self._append(EVENTS_FILE, {"event": kind, "time": time.time(), **details})
        self.warning(f"federated event {kind}: {details}")

    def run(self) -> None:
        global_parameters = initial_parameters(self.model_kind, self.seed, self.segmentation_recipe)
        shapes = {name: list(np.shape(value)) for name, value in global_parameters.items()}
        if self.secure_aggregation:
            secure_aggregation.register_ciphertext_transport()
        server = ServerMomentum(momentum=self.server_momentum, learning_rate=self.server_learning_rate)
        sites = sorted(client.name for client in self.engine.get_clients())
        rounds: list[dict] = []
        status, reason = "complete", ""
        for round_number in range(self.num_rounds):
            # round 0 sends the initial weights in the clear (they hold nothing of any site); later rounds the encrypted average
            encrypted = self.secure_aggregation and round_number > 0
            model = FLModel(params=secure_aggregation.serialized(global_parameters) if encrypted else global_parameters,
                            current_round=round_number, total_rounds=self.num_rounds,
                            meta={"fedprox_mu": self.fedprox_mu, **(secure_aggregation.encrypted_meta(list(shapes)) if encrypted else {})})
            results = self.broadcast_model(task_name="train", data=model, targets=sites, min_responses=self.min_sites,
                                           timeout=self.round_timeout_s, wait_time_after_min_received=self.grace_s, blocking=True)
            if self.abort_signal.triggered:
                status, reason = "incomplete", "aborted"
                break
            updates, site_metrics, answered = [], {}, set()
            for result in results:
                site = result.meta.get("client_name", "?")
                answered.add(site)
                self._append(RECEIVED_FILE, {"round": round_number, "site": site, "params": _audited(result.params),
                                             "params_type": str(result.params_type), "meta": {k: v for k, v in result.meta.items() if k != "props"},
                                             "metrics": result.metrics})
                site_metrics[site] = dict(result.metrics or {})
                if result.meta.get(ELIGIBLE_META) == 0:
                    self._event("zero_eligible_patients", round=round_number, site=site)
                    continue
                updates.append(SiteUpdate(site, result.params, result.meta.get("NUM_STEPS_CURRENT_ROUND", float("nan"))))
            for site in sorted(set(sites) - answered):
                self._event("no_update", round=round_number, site=site, detail="dropped out, failed or timed out this round")
            accepted, rejected = self._screen(global_parameters, shapes, updates)
            for site, why in sorted(rejected.items()):
                self._event("update_rejected", round=round_number, site=site, reason=why)
            record = {"round": round_number, "sites_answered": sorted(answered), "sites_accepted": sorted(u.site for u in accepted),
                      "site_metrics": site_metrics}
            if len(accepted) < self.min_sites:
                rounds.append(record)
                status, reason = "incomplete", f"round {round_number}: {len(accepted)} accepted update(s) < min_sites {self.min_sites}"
                self._event("round_failed", round=round_number, reason=reason)
                break
            if self.secure_aggregation:
                global_parameters = secure_aggregation.weighted_average([(u.parameters, u.n_samples) for u in accepted])
            else:
                global_parameters = server.step(global_parameters, weighted_average(accepted))
            shared = set.intersection(*(set(site_metrics.get(u.site, {})) for u in accepted)) - {"n_train"}
            record["global_metrics"] = {name: float(np.average([site_metrics[u.site][name] for u in accepted], weights=[u.n_samples for u in accepted]))
                                        for name in sorted(shared) if not name.startswith("dp_")}
            rounds.append(record)
            self.info(f"round {round_number}: averaged {len(accepted)} of {len(sites)} sites")
        evaluation: dict[str, dict] = {}
        if status == "complete":
            evaluation = self._evaluate(global_parameters, sites)
            if self.secure_aggregation:
                secure_aggregation.save_encrypted(self._run_dir() / secure_aggregation.ENCRYPTED_GLOBAL_MODEL_FILE, global_parameters)
            else:
                np.savez(self._run_dir() / GLOBAL_MODEL_FILE, **global_parameters)
        self._event("run_end", status=status, reason=reason, rounds_completed=sum(1 for r in rounds if "global_metrics" in r))
        summary = {"status": status, "reason": reason, "num_rounds": self.num_rounds, "min_sites": self.min_sites,
                   "fedprox_mu": self.fedprox_mu, "server_momentum": self.server_momentum,
                   "server_learning_rate": self.server_learning_rate, "sites": sites, "rounds": rounds, "evaluation": evaluation,
                   "model": self.model_kind, "segmentation_recipe": self.segmentation_recipe,
                   "secure_aggregation": self.secure_aggregation, "parameter_shapes": shapes}
        tmp = self._run_dir() / (SUMMARY_FILE + ".tmp")  # written last: its presence means the run ended
        tmp.write_text(json.dumps(_jsonable(summary), indent=1, sort_keys=True))
        os.replace(tmp, self._run_dir() / SUMMARY_FILE)

    def _screen(self, global_parameters: dict, shapes: dict[str, list[int]], updates: list[SiteUpdate]) -> tuple[list[SiteUpdate], dict[str, str]]:
        """(accepted, {site: reason} of the rejected): the plain checks, or on ciphertexts the structural ones only."""
        if not self.secure_aggregation:
            return screen_updates(global_parameters, updates)
        sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
        reasons = {u.site: secure_aggregation.malformed_reason(sizes, u.parameters, u.n_samples) for u in updates}
        return ([u for u in updates if reasons[u.site] is None],
                {site: f"malformed update: {why}" for site, why in reasons.items() if why is not None})

    def _evaluate(self, global_parameters: dict, sites: list[str]) -> dict[str, dict]:
        """Each site scores the final global model (and the champion, when given) on its held-out patients."""
        sent = secure_aggregation.serialized(global_parameters) if self.secure_aggregation else global_parameters
        params = {f"global.{k}": v for k, v in sent.items()}
        params.update({f"champion.{k}": np.asarray(v, np.float32) for k, v in (self.champion_parameters or {}).items()})
        meta = {}
        if self.secure_aggregation:  # the global model's names are encrypted, the champion's (already registered) are not
            meta = secure_aggregation.encrypted_meta([f"global.{k}" for k in global_parameters],
                                                     plain=[name for name in params if name.startswith("champion.")])
        results = self.broadcast_model(task_name="validate", data=FLModel(params=params, meta=meta), targets=sites, min_responses=self.min_sites,
                                       timeout=self.round_timeout_s, wait_time_after_min_received=self.grace_s, blocking=True)
        evaluation = {}
        for result in results:
            site = result.meta.get("client_name", "?")
            self._append(RECEIVED_FILE, {"task": "validate", "site": site, "params": result.params,
                                         "meta": {k: v for k, v in result.meta.items() if k != "props"}, "metrics": result.metrics})
            evaluation[site] = dict(result.metrics or {})
        return evaluation
