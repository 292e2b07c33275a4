"""The whole graph on a small synthetic cohort, through the same `radplan demo` a user runs.

One session-scoped run (``demo_home`` in conftest.py) feeds the checks below: exports exist and validate, nothing past
de-identification (Dagster's own storage and MLflow included) contains a planted canary,
every planted bad input is quarantined with a reason, and the notebook runs on the lake and draws.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from radplan.privacy import CanaryMatcher, load_canaries, scan_tree
from support.demo import DEMO_PATIENTS

# The first test to use demo_home pays for building it (~3 min quiet, far more on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_exports_exist_for_every_patient(demo_home):
    exports = demo_home / "lake" / "exports"
    recommendations = pd.read_parquet(exports / "recommendations.parquet")
    patients = sorted(p.stem for p in (exports / "fhir").glob("*.json"))
    assert len(patients) == DEMO_PATIENTS  # every patient, also one that no rule matched
    assert all(re.fullmatch(r"p[0-9a-f]{16}", p) for p in patients)
    assert set(recommendations["patient_key"]) <= set(patients)
    assert len(pd.read_csv(exports / "recommendations.csv")) == len(recommendations)
    for key in patients:
        bundle = json.loads((exports / "fhir" / f"{key}.json").read_text())
        assert bundle["resourceType"] == "Bundle"
        html = (exports / "reports" / f"{key}.html").read_text()
        assert "not a diagnosis" in html.lower()
    report = json.loads((exports / "model_report.json").read_text())
    assert "response_model" in report


def test_no_canary_past_deidentification(demo_home):
    canaries = load_canaries(demo_home / "truth" / "phi_canaries.json")
    assert len(CanaryMatcher(canaries).canaries) > 50 * 1  # names, ids, dates, addresses, original UIDs
    # The canaries really are in what arrived (so zero hits below means something).
    planted, _ = scan_tree(demo_home / "landing", canaries, exclude=())
    assert len({h.canary for h in planted}) > 20
    hits, scanned = scan_tree(demo_home, canaries)
    assert scanned > 100
    assert hits == [], "\n".join(h.redacted() for h in hits[:20])


def test_dagster_storage_holds_only_pseudonymous_partition_keys(demo_home):
    with sqlite3.connect(demo_home / "dagster_home" / "history" / "runs" / "index.db") as db:
        keys = [r[0] for r in db.execute("SELECT partition FROM dynamic_partitions")]
    with sqlite3.connect(demo_home / "dagster_home" / "history" / "runs.db") as db:
        tags = [r for r in db.execute("SELECT key, value FROM run_tags")]
    partition_tags = [value for key, value in tags if key == "dagster/partition"]
    assert partition_tags and set(partition_tags) <= set(keys)
    assert len(keys) == DEMO_PATIENTS
    assert all(re.fullmatch(r"p[0-9a-f]{16}", k) for k in keys)


def test_demo_runs_are_listed_on_their_job_pages_with_check_evaluations(demo_home, monkeypatch):
    """The demo launches like production: each run carries the code location the UI filters a job's runs by, and every
    blocking check of a per-patient asset has an evaluation for every patient."""
    from dagster import AssetCheckKey, AssetKey, DagsterInstance
    from dagster._core.storage.dagster_run import RunsFilter
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    from jobs import DEMO_STAGES

    monkeypatch.setenv("DAGSTER_HOME", str(demo_home / "dagster_home"))
    instance = DagsterInstance.get()
    label = "__repository__@radplan"  # workspace.yaml's location name
    for job in DEMO_STAGES:
        listed = instance.get_runs(RunsFilter(job_name=job.name, tags={REPOSITORY_LABEL_TAG: label}))
        expected = DEMO_PATIENTS if job.partitions_def else 1
        assert len(listed) >= expected, f"{job.name}: {len(listed)} runs on its job page"
        assert all(run.remote_job_origin is not None for run in listed)
    for asset, check in (("imaging_metadata", "imaging_metadata_valid"), ("clinical_features", "clinical_features_valid"),
                         ("variants", "variants_valid")):
        history = instance.event_log_storage.get_asset_check_execution_history(AssetCheckKey(AssetKey(asset), check), limit=1000)
        assert len(history) >= DEMO_PATIENTS, f"{check}: {len(history)} evaluations for {DEMO_PATIENTS} patients"


def test_every_planted_bad_input_is_quarantined_with_a_reason(demo_home):
    from radplan.lake import file_sha256

    bad_inputs = json.loads((demo_home / "truth" / "bad_inputs.json").read_text())
    reasons = [json.loads(p.read_text()) for p in (demo_home / "lake" / "quarantine").rglob("reason.json")]
    for reason in reasons:
        assert {"stage", "error_class", "message", "sha256"} <= set(reason)
    # Every bad file is quarantined (matched by content), and nothing good is: one reason per bad file.
    bad_files = {file_sha256(demo_home / b["path"]) for b in bad_inputs if "line" not in b}
    assert {r["sha256"] for r in reasons} == bad_files
    assert len(reasons) == len(bad_files)
    # The malformed CSV row is quarantined with its line number; the rest of the table goes on.
    rejected = [json.loads(line) for p in (demo_home / "lake" / "quarantine" / "ehr").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert {(r["table"], r["line"]) for r in rejected} >= {("conditions", b["line"]) for b in bad_inputs if "line" in b}


def test_notebook_run_from_notebooks_folder_finds_the_data_through_settings_and_draws(demo_home, tmp_path):
    """As `make notebook` runs it: the kernel starts in the clone's notebooks/ with no RADPLAN_HOME, finds the
    clone's .radplan/ through radplan.settings, runs every cell without an error and draws its plots inline."""
    import base64

    import nbformat
    from nbclient import NotebookClient

    clone = tmp_path / "clone"
    (clone / "notebooks").mkdir(parents=True)
    (clone / ".radplan").symlink_to(demo_home, target_is_directory=True)
    notebook = nbformat.read(REPO_ROOT / "notebooks" / "cohort_overview.ipynb", as_version=4)
    saved_home = os.environ.pop("RADPLAN_HOME", None)
    try:
        # allow_errors=False: the first cell error raises CellExecutionError and fails the test.
        NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=False,
                       resources={"metadata": {"path": str(clone / "notebooks")}}).execute()
    finally:
        if saved_home is not None:
            os.environ["RADPLAN_HOME"] = saved_home
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [o for cell in code_cells for o in cell.outputs if o.output_type == "error"]
    stdout = "".join(o.get("text", "") for cell in code_cells for o in cell.outputs if o.get("name") == "stdout")
    assert f"{DEMO_PATIENTS} patients in {demo_home.resolve() / 'lake'}" in stdout
    summary = json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))
    assert summary["patients"] == DEMO_PATIENTS
    plotting_cells = [cell for cell in code_cells if "plt.subplots" in cell.source]
    assert len(plotting_cells) == 2
    for cell in plotting_cells:
        images = [o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"no inline plot from cell {cell.get('id')}"
        assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)


def test_one_patient_has_one_key_and_one_date_shift_across_dicom_vcf_and_ehr(demo_home):
    import datetime as dt

    import pydicom

    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    pseudonymizer = Pseudonymizer(DEMO_KEY)
    truth = json.loads((demo_home / "truth" / "truth.json").read_text())["patients"]
    lake = demo_home / "lake"
    for mrn, patient in truth.items():
        key, shift = pseudonymizer.patient_key(mrn), pseudonymizer.date_shift_days(mrn)
        study = patient["studies"][0]
        deid_study = lake / "deid" / "dicom" / key / pseudonymizer.uid(study["study_instance_uid"])
        instance = pydicom.dcmread(next(deid_study.rglob("*.dcm")), stop_before_pixels=True)
        assert instance.PatientID == key
        assert dt.datetime.strptime(instance.StudyDate, "%Y%m%d").date() == dt.date.fromisoformat(study["study_date"]) + dt.timedelta(days=shift)

        variants = pd.read_parquet(lake / "features" / "variants" / f"patient_key={key}")
        assert set(variants["sample"]) == {key}

        conditions = pd.read_parquet(lake / "deid" / "ehr_conditions" / f"patient_key={key}")
        cancer = conditions[conditions["CODE"].astype(str) == patient["cancer_snomed"]]
        assert cancer["START"].dt.date.tolist() == [dt.date.fromisoformat(patient["diagnosis_date"]) + dt.timedelta(days=shift)]


# Planted alteration -> the tumour types where the rule base recommends a targeted therapy for it in any line.
# (KRAS G12C inhibitors are approved only after prior systemic therapy, so a first-line patient rightly gets none.)
TARGETED = {
    ("EGFR", "p.L858R"): {"nsclc"},
    ("EGFR", "p.E746_A750del"): {"nsclc"},
    ("ALK", "EML4-ALK fusion"): {"nsclc"},
    ("BRAF", "p.V600E"): {"melanoma", "nsclc"},
    ("ERBB2", "amplification"): {"breast"},
    ("PIK3CA", "p.H1047R"): {"breast"},
    ("PIK3CA", "p.E545K"): {"breast"},
}


def test_every_planted_actionable_variant_gets_its_targeted_therapy(demo_home):
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    pseudonymizer = Pseudonymizer(DEMO_KEY)
    truth = json.loads((demo_home / "truth" / "truth.json").read_text())["patients"]
    recommendations = pd.read_parquet(demo_home / "lake" / "exports" / "recommendations.parquet")
    checked = 0
    for mrn, patient in truth.items():
        mine = recommendations[recommendations["patient_key"] == pseudonymizer.patient_key(mrn)]
        targeted = mine[mine["action"].isin(["recommend", "consider"])]
        for variant in patient["somatic_variants"]:
            if patient["cancer_type"] not in TARGETED.get((variant["gene"], variant["protein_change"]), set()):
                continue
            checked += 1
            gene = variant["gene"].lower()
            assert targeted["rule_ids"].str.lower().str.contains(gene).any(), (variant["gene"], variant["protein_change"], patient["cancer_type"])
            assert targeted["guideline"].notna().all() and targeted["rule_base_version"].notna().all()
    assert checked >= 1


# Independent of the rule file: which CPIC/DPWG action each planted phenotype calls for, and the
# current medication (RxNorm ingredient code) the rule needs, if any.
RXNORM = {"clopidogrel": "32968", "warfarin": "11289", "simvastatin": "36567", "tamoxifen": "10324"}
# Issue 17: a drug-specific PGx alert only when the drug is taken (no rule proposes these drugs).
FLUOROPYRIMIDINES = {"194000", "4492"}  # capecitabine, fluorouracil
THIOPURINES = {"103", "1256", "10485"}  # mercaptopurine, azathioprine, thioguanine
IRINOTECAN = {"51499"}
INTERMEDIATE = {"Intermediate Metabolizer", "Possible Intermediate Metabolizer"}


def expected_pgx_rules(pgx: dict, medications: set[str]) -> set[str]:
    expected = set()
    dpyd_score = pgx["DPYD"]["activity_score"]
    if medications & FLUOROPYRIMIDINES and 1 <= dpyd_score <= 1.5:
        expected.add("pgx_dpyd_intermediate_fluoropyrimidine")
    elif medications & FLUOROPYRIMIDINES and dpyd_score <= 0.5:
        expected.add("pgx_dpyd_poor_fluoropyrimidine")
    for gene in ("TPMT", "NUDT15"):
        phenotype = pgx[gene]["phenotype"]
        if medications & THIOPURINES and phenotype in INTERMEDIATE:
            expected.add(f"pgx_{gene.lower()}_intermediate_thiopurine")
        elif medications & THIOPURINES and phenotype == "Poor Metabolizer":
            expected.add(f"pgx_{gene.lower()}_poor_thiopurine")
    if medications & IRINOTECAN and pgx["UGT1A1"]["phenotype"] == "Poor Metabolizer":
        expected.add("pgx_ugt1a1_poor_irinotecan")
    if RXNORM["clopidogrel"] in medications and pgx["CYP2C19"]["phenotype"] in {"Poor Metabolizer", "Intermediate Metabolizer"}:
        expected.add("pgx_cyp2c19_clopidogrel_alternative")
    warfarin_sensitive = pgx["CYP2C9"]["phenotype"] in {"Intermediate Metabolizer", "Poor Metabolizer"} or "T" in pgx["VKORC1"]["rs9923231_genotype"]
    if RXNORM["warfarin"] in medications and warfarin_sensitive:
        expected.add("pgx_cyp2c9_vkorc1_warfarin")
    if RXNORM["simvastatin"] in medications:
        if pgx["SLCO1B1"]["phenotype"] in {"Decreased Function", "Possible Decreased Function"}:
            expected.add("pgx_slco1b1_decreased_simvastatin")
        elif pgx["SLCO1B1"]["phenotype"] == "Poor Function":
            expected.add("pgx_slco1b1_poor_simvastatin")
    if RXNORM["tamoxifen"] in medications and pgx["CYP2D6"]["phenotype"] == "Poor Metabolizer":
        expected.add("pgx_cyp2d6_poor_tamoxifen")
    return expected


def test_every_planted_pgx_metabolizer_gets_its_cpic_adjustment_and_no_other(demo_home):
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    pseudonymizer = Pseudonymizer(DEMO_KEY)
    truth = json.loads((demo_home / "truth" / "truth.json").read_text())["patients"]
    recommendations = pd.read_parquet(demo_home / "lake" / "exports" / "recommendations.parquet")
    pgx_rows = recommendations[recommendations["category"] == "pgx"]
    planted = 0
    for mrn, patient in truth.items():
        mine = pgx_rows[pgx_rows["patient_key"] == pseudonymizer.patient_key(mrn)]
        fired = {rule for ids in mine["rule_ids"] for rule in json.loads(ids)} if len(mine) else set()
        expected = expected_pgx_rules(patient["pgx"], set(patient["medications_rxnorm"]))
        planted += len(expected)
        assert fired == expected, (pseudonymizer.patient_key(mrn), sorted(fired), sorted(expected))
        assert mine["action"].isin(["adjust_dose", "avoid"]).all()
        assert mine["guideline"].notna().all() and mine["rule_base_version"].notna().all()
    assert planted >= 0  # with few patients, no planted metabolizer may take an affected drug


# Independent of interactions.yaml: the interacting pairs the generator's medication vocabulary can produce
# (RxNorm ingredient codes as in truth.json), from the cited labels.
PLANTED_PAIRS = {
    frozenset({"11289", "32968"}): "ddi_anticoagulant_antiplatelet",      # warfarin + clopidogrel
    frozenset({"32968", "7646"}): "ddi_clopidogrel_omeprazole",           # clopidogrel + omeprazole
    frozenset({"11289", "194000"}): "ddi_warfarin_fluoropyrimidine",      # warfarin + capecitabine
    frozenset({"2550714", "7646"}): "ddi_sotorasib_acid_reducing_agent",  # sotorasib + omeprazole
    frozenset({"1424911", "11289"}): "ddi_dabrafenib_warfarin",           # dabrafenib + warfarin
}


def test_alerts_concern_drugs_in_play_and_interactions_are_found_where_planted(demo_home):
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    pseudonymizer = Pseudonymizer(DEMO_KEY)
    truth = json.loads((demo_home / "truth" / "truth.json").read_text())["patients"]
    recommendations = pd.read_parquet(demo_home / "lake" / "exports" / "recommendations.parquet")
    by_code = {code: name for name, code in json.loads((REPO_ROOT / "radplan" / "synth" / "data" / "knowledge.json").read_text())["drugs_rxnorm"].items()}
    for mrn, patient in truth.items():
        mine = recommendations[recommendations["patient_key"] == pseudonymizer.patient_key(mrn)]
        taken = {by_code[c] for c in patient["medications_rxnorm"] if c in by_code}
        offered = {d for drugs in mine.loc[mine["action"].isin(["recommend", "consider"]), "drugs"] for d in json.loads(drugs)}
        for drugs in mine.loc[mine["is_alert"], "drugs"]:
            assert set(json.loads(drugs)) & (taken | offered), (pseudonymizer.patient_key(mrn), drugs)
        codes = set(patient["medications_rxnorm"])
        expected = {entry for pair, entry in PLANTED_PAIRS.items() if pair <= codes}
        found = {r for ids in mine.loc[mine["category"] == "interaction", "rule_ids"] for r in json.loads(ids)}
        offered_with_current = {entry for pair, entry in PLANTED_PAIRS.items()
                                if len(pair & codes) == 1 and {by_code.get(c) for c in pair - codes} & offered}
        assert expected <= found, (pseudonymizer.patient_key(mrn), sorted(expected), sorted(found))
        assert found <= expected | offered_with_current, (pseudonymizer.patient_key(mrn), sorted(found))
