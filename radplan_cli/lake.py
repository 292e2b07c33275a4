"""`radplan lake verify` and `radplan lake restore`: is the lake what was written, and put back what is not.

`verify` re-reads every dataset (cohort table, patient partition, patient folder) against the content manifest
recorded when it was written (``radplan.lake_integrity``) and prints a JSON report: datasets and files missing,
partial (truncated) or altered, plus the files no manifest covers (written by path, such as exports; not
verified). With ``RADPLAN_LAKE_S3_BUCKET`` set it re-reads the bucket, the system of record (``--local``: the
working folder instead). Exit 1 on any problem, or when there are files but no manifest at all (indeterminate:
nothing could be verified); ``--strict`` also fails on unrecorded files.

`restore --from BACKUP` copies datasets back from a copy of the lake folder (``cp -a``, a snapshot): the ones
`verify` finds damaged, or those named with ``--dataset``; each only when the copy matches its own manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radplan.lake import ZONES
from radplan.lake_integrity import restore, verify_local_lake
from radplan.settings import HOME_ENV_VAR, Settings, use_home


def _settings(args: argparse.Namespace) -> Settings:
    if args.home:
        use_home(args.home)
    return Settings.from_env()


def _verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    zones = tuple(args.zone or ZONES)
    if settings.s3_lake is not None and not args.local:
        from radplan_resources.s3_lake import s3_lake_from_settings

        lake = s3_lake_from_settings(str(settings.lake_dir), settings.s3_lake)
        report = lake.verify_integrity(zones)
        where = f"s3://{settings.s3_lake.bucket}/{settings.s3_lake.prefix}"
    else:
        if not settings.lake_dir.is_dir():
            print(f"radplan lake verify: no lake at {settings.lake_dir}", file=sys.stderr)
            return 2
        report = verify_local_lake(settings.lake_dir, zones)
        where = str(settings.lake_dir)
    print(json.dumps({"lake": where, **report.as_dict()}, indent=2))
    failed = not report.ok or (args.strict and report.unrecorded)
    summary = ", ".join(f"{count} {problem}" for problem, count in sorted(report.counts().items())) or "no problems"
    if report.indeterminate:
        summary = "indeterminate: files but no manifest to verify them against"
    print(
        f"radplan lake verify: {report.datasets_checked} datasets, {report.files_hashed} files hashed: {summary}; "
        f"{sum(report.unrecorded.values())} files not covered by a manifest (not verified)",
        file=sys.stderr,
    )
    return 1 if failed else 0


def _restore(args: argparse.Namespace) -> int:
    settings = _settings(args)
    backup = Path(args.backup)
    if not backup.is_dir():
        print(f"radplan lake restore: no lake copy at {backup}", file=sys.stderr)
        return 2
    datasets = args.dataset or verify_local_lake(settings.lake_dir).damaged_datasets()
    outcomes = restore(settings.lake_dir, backup, datasets)
    after = verify_local_lake(settings.lake_dir)
    print(json.dumps({"restored": [vars(o) for o in outcomes], "verify_after": after.as_dict()}, indent=2))
    return 0 if all(o.restored for o in outcomes) and after.ok else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("lake", help="lake integrity: verify against the write-time manifests, restore from a copy")
    commands = parser.add_subparsers(dest="lake_command", required=True)
    verify = commands.add_parser("verify", help="re-read the lake and report missing, partial or altered files (exit 1 on problems)")
    verify.add_argument("--home", help=f"data home (default ${HOME_ENV_VAR} or ./.radplan)")
    verify.add_argument("--zone", action="append", choices=ZONES, help="only this zone (repeatable; default every zone)")
    verify.add_argument("--local", action="store_true", help="with the S3 lake: verify the local working folder, not the bucket")
    verify.add_argument("--strict", action="store_true", help="also fail when files are not covered by any manifest")
    verify.set_defaults(func=_verify)
    restore_parser = commands.add_parser("restore", help="copy damaged or named datasets back from a copy of the lake folder, then verify")
    restore_parser.add_argument("--from", dest="backup", required=True, help="the copy's lake folder (same layout: <copy>/features/...)")
    restore_parser.add_argument("--home", help=f"data home (default ${HOME_ENV_VAR} or ./.radplan)")
    restore_parser.add_argument("--dataset", action="append", help="dataset to restore, e.g. features/variants/patient_key=p… (default: every damaged one)")
    restore_parser.set_defaults(func=_restore)
