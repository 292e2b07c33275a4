"""The site side of a federated run (runs inside each FLARE client's job process, next to that site's lake).

Each round: receive the global weights, evaluate them on the site's held-out patients, train locally
(:class:`radplan.federated.model.LocalTrainer`, FedProx when the server sends ``fedprox_mu`` > 0, DP-SGD when
configured), and send back the new weights, the training sample count and aggregate metrics only. Patient
rows, pseudonyms and keys stay in the site's process.

``--fault`` makes this site misbehave on purpose in each of ``--fault-rounds`` (for the fault tests and the demo):
``dropout`` leaves in the middle of the round (the process ends), ``malformed`` sends weights of the wrong shape, ``diverging``
sends weights scaled far away from the global model. ``--zero-patients`` style sites need no flag: a lake
without eligible training patients answers with ``eligible_patients = 0`` and no weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from radplan.federated.model import LocalTrainer, TrainingConfig, auc_with_ci, design, initial_parameters, predict
from radplan.federated.secure_aggregation import shaped_like
from radplan.federated.sites import read_site

FAULTS = ("none", "dropout", "malformed", "diverging")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="radplan federated site")
    parser.add_argument("--site-dir", required=True)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dp-noise-multiplier", type=float, default=0.0)
    parser.add_argument("--dp-max-grad-norm", type=float, default=1.0)
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("response", "segmentation"), default="response")
    parser.add_argument("--segmentation-recipe", type=json.loads, default={},
                        help="JSON object: overrides of the segmentation CPU recipe's fields (the server uses the same)")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--fault-rounds", default="1", help="comma-separated round numbers (0-based)")
    return parser.parse_args(argv)


def _finite_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _held_out_metrics(params: dict, X_test: np.ndarray, y_test: np.ndarray) -> dict:
    """AUC on the site's held-out patients of each model in ``params`` ("global.<name>", "champion.<name>"), and their count."""
    metrics = {"n_held_out": float(len(y_test)), "n_held_out_responders": float(np.sum(y_test))}
    for prefix in ("global", "champion"):
        weights = {k.split(".", 1)[1]: np.asarray(v, np.float32) for k, v in (params or {}).items() if k.startswith(prefix + ".")}
        if weights and len(y_test):
            metrics[f"{prefix}_held_out_auc"] = auc_with_ci(y_test, predict(weights, X_test), n_bootstrap=1)["value"]
    return metrics


def _received_shapes(parameters: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a model the site receives looks like, as a round's weights and as the validation's ``global.``/``champion.``
    weights: under secure aggregation FLARE's decryptor hands over flat values, given back these shapes."""
    return {**parameters, **{f"{prefix}.{name}": value for prefix in ("global", "champion") for name, value in parameters.items()}}


def main(argv: list[str] | None = None) -> None:
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel

    args = parse_arguments(argv)
    if args.model == "segmentation":
        return segmentation_main(args)
    site = read_site(args.site_dir)
    train_features, train_labels = site.train
    test_features, test_labels = site.held_out
    X_train, y_train = design(train_features, train_labels["therapy"]), train_labels["responded"].to_numpy(int)
    X_test, y_test = design(test_features, test_labels["therapy"]), test_labels["responded"].to_numpy(int)
    config = TrainingConfig(local_epochs=args.local_epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                            dp_noise_multiplier=args.dp_noise_multiplier, dp_max_grad_norm=args.dp_max_grad_norm,
                            dp_delta=args.dp_delta, seed=args.seed)
    fault_rounds = {int(r) for r in args.fault_rounds.split(",") if r.strip()}
    trainer = None
    template = _received_shapes(initial_parameters())
    flare.init()
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        received.params = shaped_like(received.params or {}, template)
        if flare.is_evaluate():
            flare.send(FLModel(params={}, metrics=_finite_metrics(_held_out_metrics(received.params, X_test, y_test))))
            continue
        round_number = received.current_round or 0
        if len(y_train) == 0:
            flare.send(FLModel(params={}, meta={"eligible_patients": 0}, metrics={}))
            continue
        mu = float((received.meta or {}).get("fedprox_mu", 0.0))
        if trainer is None or trainer.config.fedprox_mu != mu:
            trainer = LocalTrainer(X_train, y_train, TrainingConfig(**{**config.__dict__, "fedprox_mu": mu}))
        global_parameters = {k: np.asarray(v, np.float32) for k, v in received.params.items()}
        metrics = {}
        if len(y_test):
            metrics["received_global_auc"] = auc_with_ci(y_test, predict(global_parameters, X_test), n_bootstrap=1)["value"]
        if args.fault == "dropout" and round_number in fault_rounds:
            # the site leaves in the middle of the round, before it answers (its process ends without an error: FLARE
            # fails the whole job when a site's process reports a crash, which ends the run incomplete instead)
            os._exit(0)
        parameters, train_metrics = trainer.train(global_parameters)
        metrics.update(train_metrics)
        if len(y_test):
            metrics["local_auc"] = auc_with_ci(y_test, predict(parameters, X_test), n_bootstrap=1)["value"]
        if args.fault == "malformed" and round_number in fault_rounds:
            parameters = {name: np.zeros(np.asarray(value).size + 1) for name, value in parameters.items()}
        if args.fault == "diverging" and round_number in fault_rounds:
            parameters = {name: np.asarray(value) * 1e6 + 1e3 for name, value in parameters.items()}
        flare.send(FLModel(params=parameters, metrics=_finite_metrics(metrics),
                           meta={"NUM_STEPS_CURRENT_ROUND": float(len(y_train)), "eligible_patients": int(len(y_train))}))


def segmentation_main(args: argparse.Namespace) -> None:
    """The site loop for the lesion segmentation network (weights in, weights and Dice out)."""
    import nvflare.client as flare
    from nvflare.app_common.abstract.fl_model import FLModel

    from radplan.federated.segmentation_site import (OptimizerMoments, federated_segmentation_config, held_out_dice, initial_parameters,
                                                     site_pairs, train_locally)

    train_pairs, test_pairs = site_pairs(args.site_dir)
    config = federated_segmentation_config(**{**args.segmentation_recipe, "seed": args.seed})
    template = _received_shapes(initial_parameters(config))
    moments = OptimizerMoments()  # this site's optimizer state across its rounds (stays in this process)
    flare.init()
    while flare.is_running():
        received = flare.receive()
        if received is None:
            break
        received.params = shaped_like(received.params or {}, template)
        if flare.is_evaluate():
            metrics = {"n_held_out": float(len(test_pairs))}
            for prefix in ("global", "champion"):
                weights = {k.split(".", 1)[1]: v for k, v in (received.params or {}).items() if k.startswith(prefix + ".")}
                if weights and test_pairs:
                    metrics[f"{prefix}_held_out_dice"] = float(held_out_dice(weights, test_pairs, config).mean())
            flare.send(FLModel(params={}, metrics=_finite_metrics(metrics)))
            continue
        if not train_pairs:
            flare.send(FLModel(params={}, meta={"eligible_patients": 0}, metrics={}))
            continue
        round_number = received.current_round or 0
        # The rounds are one training: each round's local epochs continue the learning-rate cosine over all rounds
        # (restarting it every round left the global model at 0.23 Dice against 0.76 pooled, benchmarks/bench_federated.py).
        rounds = received.total_rounds or round_number + 1
        schedule = (round_number * args.local_epochs, rounds * args.local_epochs)
        mu = float((received.meta or {}).get("fedprox_mu", 0.0))  # FedProx when the server sends mu > 0
        parameters, metrics = train_locally(received.params, train_pairs, config, args.local_epochs, seed=args.seed + round_number,
                                            schedule=schedule, moments=moments, fedprox_mu=mu)
        flare.send(FLModel(params=parameters, metrics=_finite_metrics(metrics),
                           meta={"NUM_STEPS_CURRENT_ROUND": float(len(train_pairs)), "eligible_patients": len(train_pairs)}))
