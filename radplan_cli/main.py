"""The ``radplan`` command: one subcommand per tool, each using the same code path as its asset."""

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
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="radplan", description="radplan: personalized treatment planning pipeline tools")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    disable_telemetry()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MissingKeyError as error:
        # A configuration error, not a crash: one clear line (it names the variable, never the key).
        print(f"radplan {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
