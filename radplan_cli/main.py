"""The ``radplan`` command (``python -m radplan_cli.main``): one subcommand per tool, each using the same code path as its asset.

``radplan --help`` and every ``radplan <command> --help`` must answer at once: this module and the
domain modules it registers import only argparse-level things; each command imports what it needs
(pandas, pydicom, SimpleITK, torch, dagster, ...) when it runs.
"""

from __future__ import annotations

import argparse
import sys

from radplan.errors import MissingKeyError
from radplan.settings import disable_telemetry

# Each domain module exposes ``register(subparsers)`` adding its subcommands;
# a subcommand sets ``func`` (args -> exit code) as its parser default.
SUBCOMMAND_MODULES = (
    "radplan.synth.cli",
    "radplan.imaging.deid_cli",
    "radplan.imaging.radiomics_cli",
    "radplan.genomics.cli",
    "radplan.ehr.cli",
    "radplan.decision.cli",
    "radplan_cli.demo",
    "radplan.privacy",
    "radplan_cli.audit",
    "radplan_cli.lake",
    "radplan_cli.architecture",
    "radplan_cli.notebook",
    "radplan_cli.federated",
)
VERBOSE_HELP = "show the libraries' informational log lines too (default: radplan's messages and all warnings)"


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="radplan", description="radplan: personalized treatment planning pipeline tools")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for subparser in subparsers.choices.values():
        # `radplan demo --verbose` as well as `radplan --verbose demo`; SUPPRESS keeps the latter's value.
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    from radplan import progress
    from radplan_cli.logs import configure_logging

    disable_telemetry()
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        with progress.display(f"radplan {args.command}", enabled=None if getattr(args, "progress_display", True) else False):
            return int(args.func(args) or 0)
    except MissingKeyError as error:
        # A configuration error, not a crash: one clear line (it names the variable, never the key).
        print(f"radplan {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
