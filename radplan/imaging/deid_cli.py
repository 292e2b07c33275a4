"""``radplan deid-dicom``: de-identify a folder of DICOM files (same code path as the Dagster asset)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radplan.errors import MissingKeyError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deid-dicom",
        help="De-identify DICOM files (PS3.15 Basic Profile; modified dates, patient characteristics, "
        "clean descriptors)",
        description="Writes OUT_DIR/<patient_key>/<study_uid>/<series_uid>/<sop_uid>.dcm. The key comes from "
        "RADPLAN_DEID_KEY (or the demo key with RADPLAN_DEMO=1). Unreadable or burned-in inputs are quarantined.",
    )
    parser.add_argument("in_dir", type=Path, metavar="IN_DIR")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--quarantine", type=Path, default=None, metavar="DIR",
                        help="quarantine folder (default: OUT_DIR/../quarantine)")
    parser.add_argument("--burned-in", choices=("quarantine", "flag"), default="quarantine",
                        help="what to do with instances that may carry burned-in annotation")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from radplan import progress
    from radplan.imaging.deid import DeidOptions, deidentify_folder
    from radplan.pseudonym import Pseudonymizer

    if not args.in_dir.is_dir():
        print(f"error: input folder {args.in_dir} does not exist", file=sys.stderr)
        return 2
    try:
        pseudonymizer = Pseudonymizer.from_environment()
    except MissingKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quarantine_dir = args.quarantine or args.out_dir.resolve().parent / "quarantine"
    options = DeidOptions(burned_in_policy=args.burned_in)
    with progress.task("de-identifying DICOM files") as bar:
        summary = deidentify_folder(args.in_dir, args.out_dir, pseudonymizer, quarantine_dir, options, progress=bar.callback)
    summary["key_fingerprint"] = pseudonymizer.key_fingerprint
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0
