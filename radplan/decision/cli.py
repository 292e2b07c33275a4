"""``radplan decision-rules`` and ``radplan decision-recommend``: the decision library from the command line.

``decision-rules`` validates a rule file (exit 2 with the rule id and problem) and
the packaged drug-drug interaction knowledge base it takes its drug classes from.
``decision-recommend`` runs the same functions as the recommendation assets on a
facts file (a ``patient_features`` Parquet table, or JSON: one object or a list)
and writes the exports (tables, FHIR bundles, HTML reports) to a folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("decision-rules", help="validate a decision rule base and the interaction knowledge base, and summarise them")
    check.add_argument("--rules", type=Path, default=None, help="rule file (default: the packaged rules.yaml)")
    check.set_defaults(func=run_check_rules)

    run = subparsers.add_parser("decision-recommend", help="recommendations + FHIR + HTML for patients in a facts file")
    run.add_argument("--facts", type=Path, required=True, help="patient_features Parquet, or JSON object/list of objects")
    run.add_argument("--predictions", type=Path, default=None, help="model predictions (Parquet or CSV)")
    run.add_argument("--trials", type=Path, nargs="*", default=None,
                     help="ClinicalTrials.gov records (API v2 JSON or legacy XML): files or folders; "
                          "none = the sample catalogue shipped in radplan/decision/data/trials")
    run.add_argument("--rules", type=Path, default=None, help="rule file (default: the packaged rules.yaml)")
    run.add_argument("--out", type=Path, required=True, help="exports folder")
    run.set_defaults(func=run_recommend)


def run_check_rules(args: argparse.Namespace) -> int:
    from radplan.decision import interactions, rules

    try:
        rule_base = rules.load_rule_base(args.rules)
    except rules.RuleBaseError as exc:
        print(f"invalid rule base: {exc}", file=sys.stderr)
        return 2
    per_category: dict[str, int] = {}
    for rule in rule_base.rules:
        per_category[rule.category] = per_category.get(rule.category, 0) + 1
    kb = interactions.load_interaction_kb()
    print(json.dumps({"rule_base_version": rule_base.version, "released": rule_base.released,
                      "rules": len(rule_base.rules), "per_category": per_category, "sha256": rule_base.sha256,
                      "interaction_kb_version": kb.version, "interactions": len(kb.interactions),
                      "interaction_kb_sha256": kb.sha256}, indent=2))
    return 0


def _read_facts(path: Path) -> list[dict]:
    import numpy as np
    import pandas as pd

    if path.suffix.lower() == ".parquet":
        records = pd.read_parquet(path).to_dict(orient="records")
    else:
        payload = json.loads(path.read_text(encoding="utf-8"))
        records = payload if isinstance(payload, list) else [payload]
    return [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()} for record in records]


def run_recommend(args: argparse.Namespace) -> int:
    import pandas as pd

    from radplan import progress
    from radplan.decision import export, recommend, rules, trials

    try:
        rule_base = rules.load_rule_base(args.rules)
    except rules.RuleBaseError as exc:
        print(f"invalid rule base: {exc}", file=sys.stderr)
        return 2
    catalogue = trials.load_trial_catalog(args.trials or [])
    predictions = None
    if args.predictions is not None:
        reader = pd.read_parquet if args.predictions.suffix.lower() == ".parquet" else pd.read_csv
        predictions = reader(args.predictions)
    versions = {"trial_catalog": trials.catalog_version(catalogue)}
    tables, bundles, reports = [], {}, {}
    patients = _read_facts(args.facts)
    bar = progress.task("recommendations (patients)", total=len(patients))
    for facts in patients:
        table = recommend.recommend_for_patient(facts, rule_base, model_predictions=predictions, trials=catalogue,
                                                versions=versions)
        key = str(facts["patient_key"])
        tables.append(table)
        bundles[key] = export.fhir_bundle(key, table, facts)
        attributions = table["top_attributions"].dropna()
        reports[key] = export.render_report_html(
            key, facts, table, key_slice_png=None,
            attribution_png=export.attribution_png(attributions.iloc[0]) if len(attributions) else None,
            variants=None, pgx=None,
            radiomics_highlights={k: v for k, v in facts.items() if k.startswith("rad_")},
        )
        bar.advance()
    bar.close()
    non_empty = [t for t in tables if not t.empty] or tables
    if not non_empty:
        print("no patients in the facts file", file=sys.stderr)
        return 2
    summary = export.write_exports(pd.concat(non_empty, ignore_index=True), bundles, reports, args.out)
    print(json.dumps(summary, indent=2))
    return 0
