"""The decision subcommands, run through argparse exactly as ``radplan`` runs them."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import yaml

from radplan.decision import cli
from radplan.decision.rules import DEFAULT_RULES_PATH


def run(argv):
    parser = argparse.ArgumentParser(prog="radplan")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_decision_rules_validates(tmp_path, capsys):
    assert run(["decision-rules"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rules"] == sum(summary["per_category"].values()) >= 30
    assert summary["interactions"] >= 40 and summary["interaction_kb_version"]
    payload = yaml.safe_load(DEFAULT_RULES_PATH.read_text())
    payload["rules"][0]["condition"] = {"fact": "tumour_egfr", "is": True}
    broken = tmp_path / "rules.yaml"
    broken.write_text(yaml.safe_dump(payload))
    assert run(["decision-rules", "--rules", str(broken)]) == 2
    assert payload["rules"][0]["id"] in capsys.readouterr().err


def test_decision_recommend_writes_exports(tmp_path, shared_data):
    facts = [{"patient_key": "p1111111111111111", "cancer_type": "nsclc", "alt_egfr_sensitizing": True, "stage": "IV",
              "age_years": 70.0, "ecog": 1, "current_medications": []},
             {"patient_key": "p2222222222222222", "cancer_type": "other"}]
    facts_path = tmp_path / "facts.json"
    facts_path.write_text(json.dumps(facts))
    predictions = tmp_path / "predictions.csv"
    pd.DataFrame([{"patient_key": "p1111111111111111", "probability": 0.6, "ci_low": 0.4, "ci_high": 0.75,
                   "top_attributions": json.dumps([{"feature": "ecog", "attribution": -0.1}]),
                   "model_name": "m", "model_version": "1"}]).to_csv(predictions, index=False)
    out = tmp_path / "exports"
    assert run(["decision-recommend", "--facts", str(facts_path), "--predictions", str(predictions),
                "--trials", str(shared_data / "trials"), "--out", str(out)]) == 0
    table = pd.read_parquet(out / "recommendations.parquet")
    assert set(table["patient_key"]) == {"p1111111111111111"}
    assert "osimertinib" in set(table["therapy"])
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["p1111111111111111.html", "p2222222222222222.html"]
    assert sorted(p.name for p in (out / "fhir").iterdir()) == ["p1111111111111111.json", "p2222222222222222.json"]
