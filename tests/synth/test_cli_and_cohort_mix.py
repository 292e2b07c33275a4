"""``radplan synth`` CLI and the PGx mix and edge cases of a 50-patient cohort (its generation time: benchmarks/bench_e2e.py)."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from radplan.synth.cli import register


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radplan")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_generates_and_refuses_to_overwrite(tmp_path, capsys):
    args = _parser().parse_args(["synth", "--patients", "1", "--seed", "3", "--out", str(tmp_path), "--no-bad-inputs"])
    assert args.seed == 3 and args.bad_inputs is False
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"] == 1 and summary["bad_inputs"] == 0
    assert args.func(args) == 2  # landing/ exists: refuse without --overwrite
    assert "not empty" in capsys.readouterr().out
    assert _parser().parse_args(["synth", "--patients", "2", "--out", str(tmp_path)]).seed == 7


def test_cohort_contains_non_normal_metabolizers_for_several_genes():
    from radplan.synth.cohort import draw_patient

    phenotypes = Counter()
    for index in range(50):
        for gene, call in draw_patient(7, index).pgx.items():
            if call["phenotype"] and not call["phenotype"].startswith("Normal"):
                phenotypes[gene] += 1
    assert len(phenotypes) >= 4
    assert phenotypes["CYP2C19"] >= 5  # ~30 % of people carry *2 or *17


def test_age_and_zip_edge_cases_occur():
    from radplan.synth.cohort import draw_patient

    plans = [draw_patient(7, index) for index in range(50)]
    assert any(plan.age >= 90 for plan in plans)
    assert any(plan.place.get("restricted_zip3") for plan in plans)
