"""``radplan synth``: write a synthetic hospital delivery (DICOM, VCF, EHR, notes) and its hidden truth."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="generate a synthetic cohort (landing zone + hidden truth)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--seed", type=int, default=7, help="random seed; the same seed gives byte-identical output (default 7)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (gets landing/ and truth/)")
    parser.add_argument("--no-bad-inputs", dest="bad_inputs", action="store_false", help="do not plant deliberately broken files")
    parser.add_argument("--overwrite", action="store_true", help="replace landing/ and truth/ if they already exist")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from radplan.synth.generator import generate_cohort

    started = time.perf_counter()
    try:
        summary = generate_cohort(args.out, args.patients, args.seed, bad_inputs=args.bad_inputs, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as error:
        print(f"radplan synth: {error}")
        return 2
    summary["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary, sort_keys=True))
    return 0
