"""`radplan federated-demo`: the response model (or, with ``--model segmentation``, the lesion segmentation network on
each site's CT images) trained across three synthetic hospitals on NVIDIA FLARE.

Writes three site lakes (different sizes, case mixes, scanners, keys) under <home>/lake/models/federated,
starts FLARE's server and one client process per site on 127.0.0.1, runs FedAvg (or FedProx / DP-SGD; with
``--secure-aggregation`` on encrypted updates),
logs per-site and global metrics to the home's MLflow and registers the global model when every round
completed. ``--fault site-2:malformed:1`` makes a site misbehave on purpose (dropout, malformed, diverging) to
show that the round completes with the rest. Prints a PHI-free JSON summary.
"""

from __future__ import annotations

import argparse
import json

from radplan.settings import HOME_ENV_VAR


def _fault(text: str) -> tuple[str, str, int]:
    site, fault, round_number = text.split(":")
    return site, fault, int(round_number)


def _federated_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from radplan.federated.demo import run_federated_training
    from radplan.federated.engine import SEGMENTATION_ROUND_TIMING, FederatedJobConfig
    from radplan.settings import Settings, use_home

    if args.home:
        use_home(args.home)
    settings = Settings.from_env()
    faults: dict[str, tuple[str, tuple[int, ...]]] = {}
    for site, fault, round_number in args.fault or []:
        previous = faults.get(site, (fault, ()))[1]
        faults[site] = (fault, (*previous, round_number))
    extra = SEGMENTATION_ROUND_TIMING if args.model == "segmentation" else {}
    try:
        config = FederatedJobConfig(model=args.model, num_rounds=args.rounds, local_epochs=args.local_epochs, min_sites=args.min_sites,
                                    fedprox_mu=args.fedprox_mu, server_momentum=args.server_momentum,
                                    server_learning_rate=args.server_learning_rate, dp_noise_multiplier=args.dp_noise_multiplier, faults=faults,
                                    secure_aggregation=args.secure_aggregation,
                                    segmentation_recipe=args.segmentation_recipe or {}, **extra)
    except ValueError as error:
        raise SystemExit(f"federated-demo: {error}") from None
    sizes = args.sizes or (SEGMENTATION_SIZES if args.model == "segmentation" else RESPONSE_SIZES)
    summary = run_federated_training(settings.lake_dir / "models" / "federated", tracking_uri=settings.mlflow_tracking_uri,
                                     artifact_root=Path(settings.mlflow_artifact_root), sizes=tuple(sizes), config=config, progress=print)
    print(json.dumps(summary, indent=1, default=str))
    return 0 if summary["status"] == "complete" else 1


RESPONSE_SIZES, SEGMENTATION_SIZES = [120, 80, 50], [12, 10, 8]


def register(subparsers) -> None:
    parser = subparsers.add_parser("federated-demo", help="train the response model (or the segmentation network) across three synthetic "
                                   "hospitals on NVIDIA FLARE (127.0.0.1)")
    parser.add_argument("--home", help=f"data home (default ${HOME_ENV_VAR} or ./.radplan)")
    parser.add_argument("--model", choices=("response", "segmentation"), default="response",
                        help="response: the response model on tabular features; segmentation: the lesion network on each site's CT images")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help=f"patients per site, one number per site (default {RESPONSE_SIZES}; segmentation {SEGMENTATION_SIZES})")
    parser.add_argument("--segmentation-recipe", type=json.loads, metavar="JSON",
                        help='overrides of the segmentation CPU recipe, e.g. \'{"channels": [8, 16, 32, 64]}\' (the server uses the same)')
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--min-sites", type=int, default=2, help="accepted updates a round needs, else the run ends incomplete")
    parser.add_argument("--fedprox-mu", type=float, default=0.0, help="FedProx proximal coefficient (0: FedAvg)")
    parser.add_argument("--server-momentum", type=float, default=0.0, help="FedAvgM: the server's momentum over rounds (0: FedAvg)")
    parser.add_argument("--server-learning-rate", type=float, default=1.0, help="the server's step along the averaged update (1: FedAvg)")
    parser.add_argument("--dp-noise-multiplier", type=float, default=0.0, help="DP-SGD noise multiplier at each site (0: off)")
    parser.add_argument("--secure-aggregation", action="store_true",
                        help="homomorphic encryption of every update (FLARE's HE provisioning, TenSEAL CKKS): the server averages "
                        "ciphertexts it cannot decrypt (plain FedAvg: no server momentum or learning rate)")
    parser.add_argument("--fault", type=_fault, action="append", metavar="SITE:FAULT:ROUND",
                        help="make a site misbehave: FAULT is dropout, malformed or diverging (repeatable)")
    parser.set_defaults(func=_federated_demo)
