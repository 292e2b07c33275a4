"""Drug-drug interaction knowledge base and alert relevance.

Expected interactions below are written from the cited lists and labels (Phansalkar et al. JAMIA 2012 high-priority
list, US prescribing information), not read back from interactions.yaml.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import yaml

from radplan.decision.interactions import (
    DEFAULT_KB_PATH,
    InteractionKnowledgeBaseError,
    check_interactions,
    load_interaction_kb,
    normalise_drug_name,
)
from radplan.decision.pgx_profile import pgx_profile
from radplan.decision.recommend import recommend_for_patient
from radplan.ehr.features import ingredients_from_description
from radplan.synth.cohort import knowledge as synth_knowledge

KEY = "p0a1b2c3d4e5f6a7b"


@pytest.fixture(scope="module")
def kb():
    return load_interaction_kb()


def found(current, candidates, kb):
    return {(h.interaction.id, frozenset(h.drugs)) for h in check_interactions(current, candidates, kb).hits}


# ----------------------------------------------------------------------------- the knowledge base itself


def test_kb_is_versioned_and_every_entry_cites_a_source(kb):
    assert kb.version and kb.released and len(kb.sha256) == 64
    for entry in kb.interactions:
        assert entry.source and entry.mechanism and entry.management, entry.id
        assert entry.severity in ("contraindicated", "major", "moderate")


def test_every_drug_the_rule_base_can_name_was_reviewed(rule_base, kb):
    drugs = {d for rule in rule_base.rules for d in rule.drugs}
    assert drugs, "the rule base names no drugs"
    assert sorted(drugs - set(kb.reviewed_drugs)) == []


@pytest.mark.parametrize("mutate, problem", [
    (lambda p: p["interactions"][0].update(severity="bad"), "unknown severity"),
    (lambda p: p["interactions"][0].pop("source"), "missing field(s) ['source']"),
    (lambda p: p["interactions"][0].update(a=17), "must be a drug name"),
    (lambda p: p["known_without_entries"].append("warfarin"), "known_without_entries lists drugs"),
])
def test_invalid_kb_is_rejected_naming_the_entry(tmp_path, mutate, problem):
    payload = yaml.safe_load(DEFAULT_KB_PATH.read_text())
    first_id = payload["interactions"][0]["id"]
    mutate(payload)
    path = tmp_path / "interactions.yaml"
    path.write_text(yaml.safe_dump(payload))
    with pytest.raises(InteractionKnowledgeBaseError) as error:
        load_interaction_kb(path)
    assert problem in str(error.value)
    if "known_without" not in problem:
        assert first_id in str(error.value)


# ----------------------------------------------------------------------------- patients built to carry each interaction

# (current medications, candidate drugs the rule base would propose, expected entry, the pair)
CARRIERS = [
    (["warfarin", "ibuprofen"], [], "ddi_anticoagulant_nsaid", {"warfarin", "ibuprofen"}),
    (["warfarin sodium", "naproxen sodium"], [], "ddi_anticoagulant_nsaid", {"warfarin", "naproxen"}),
    (["warfarin", "clopidogrel"], [], "ddi_anticoagulant_antiplatelet", {"warfarin", "clopidogrel"}),
    (["enoxaparin sodium", "aspirin"], [], "ddi_anticoagulant_antiplatelet", {"enoxaparin", "aspirin"}),
    (["methotrexate", "trimethoprim"], [], "ddi_methotrexate_trimethoprim", {"methotrexate", "trimethoprim"}),
    (["citalopram", "ondansetron"], [], "ddi_qt_prolonging_pair", {"citalopram", "ondansetron"}),
    (["terfenadine", "erythromycin"], [], "ddi_qt_prolonging_pair", {"terfenadine", "erythromycin"}),
    (["ondansetron"], ["osimertinib"], "ddi_kinase_inhibitor_qt_prolonging", {"osimertinib", "ondansetron"}),
    (["atazanavir", "omeprazole"], [], "ddi_atazanavir_ppi", {"atazanavir", "omeprazole"}),
    (["simvastatin", "clarithromycin"], [], "ddi_statin_strong_cyp3a_inhibitor", {"simvastatin", "clarithromycin"}),
    (["irinotecan", "carbamazepine"], [], "ddi_irinotecan_strong_cyp3a_inducer", {"irinotecan", "carbamazepine"}),
    (["tizanidine", "ciprofloxacin"], [], "ddi_tizanidine_strong_cyp1a2_inhibitor", {"tizanidine", "ciprofloxacin"}),
    (["ramelteon", "fluvoxamine"], [], "ddi_ramelteon_fluvoxamine", {"ramelteon", "fluvoxamine"}),
    (["ergotamine", "ritonavir"], [], "ddi_ergot_strong_cyp3a_inhibitor", {"ergotamine", "ritonavir"}),
    (["pimozide", "ketoconazole"], [], "ddi_pimozide_strong_cyp3a_inhibitor", {"pimozide", "ketoconazole"}),
    (["sildenafil", "nitroglycerin"], [], "ddi_pde5_inhibitor_nitrate", {"sildenafil", "nitroglycerin"}),
    (["phenelzine", "sertraline"], [], "ddi_maoi_serotonergic", {"phenelzine", "sertraline"}),
    (["clopidogrel", "esomeprazole"], [], "ddi_clopidogrel_omeprazole", {"clopidogrel", "esomeprazole"}),
    (["warfarin", "capecitabine"], [], "ddi_warfarin_fluoropyrimidine", {"warfarin", "capecitabine"}),
    (["tamoxifen", "paroxetine"], [], "ddi_tamoxifen_strong_cyp2d6_inhibitor", {"tamoxifen", "paroxetine"}),
    (["itraconazole"], ["crizotinib"], "ddi_crizotinib_strong_cyp3a_inhibitor", {"crizotinib", "itraconazole"}),
    (["rifampin"], ["lorlatinib"], "ddi_lorlatinib_strong_cyp3a_inducer", {"lorlatinib", "rifampin"}),
    (["phenytoin"], ["osimertinib"], "ddi_osimertinib_strong_cyp3a_inducer", {"osimertinib", "phenytoin"}),
    (["famotidine"], ["sotorasib"], "ddi_sotorasib_acid_reducing_agent", {"sotorasib", "famotidine"}),
    (["ritonavir"], ["selpercatinib"], "ddi_selpercatinib_strong_cyp3a_inhibitor", {"selpercatinib", "ritonavir"}),
    (["voriconazole"], ["olaparib"], "ddi_olaparib_strong_cyp3a_inhibitor", {"olaparib", "voriconazole"}),
    (["warfarin"], ["dabrafenib"], "ddi_dabrafenib_warfarin", {"dabrafenib", "warfarin"}),
    (["ketoconazole"], ["docetaxel"], "ddi_docetaxel_strong_cyp3a_inhibitor", {"docetaxel", "ketoconazole"}),
]


@pytest.mark.parametrize("current, candidates, entry_id, pair", CARRIERS, ids=[c[2] + "-" + "+".join(sorted(c[3])) for c in CARRIERS])
def test_patient_carrying_the_interaction_gets_it(kb, current, candidates, entry_id, pair):
    assert (entry_id, frozenset(pair)) in found(current, candidates, kb)


@pytest.mark.parametrize("current, candidates", [
    (["lisinopril", "metformin", "amlodipine", "hydrochlorothiazide"], []),
    (["metformin", "simvastatin"], ["osimertinib"]),
    (["acetaminophen", "pantoprazole"], ["alectinib", "lorlatinib"]),
    # candidates are alternatives or one designed regimen: never checked against each other
    ([], ["dabrafenib", "trametinib", "crizotinib", "entrectinib"]),
    (["clopidogrel", "pantoprazole"], []),
])
def test_patient_without_interactions_gets_none(kb, current, candidates):
    assert found(current, candidates, kb) == set()


def test_unknown_medication_is_reported_not_assumed_safe(kb):
    check = check_interactions(["Warfarin Sodium", "zorblaxin", "ferrous sulfate"], ["osimertinib"], kb)
    assert check.unknown_medications == ("zorblaxin", "ferrous sulfate")
    assert "warfarin" in check.checked_drugs and normalise_drug_name("zorblaxin", kb) is None


def test_synthetic_generator_vocabulary_carries_exactly_the_expected_interactions(kb):
    # Every medication the generator writes as current: comorbidity drugs and first-line therapy drugs.
    knowledge = synth_knowledge()
    comorbidity = sorted({c["drug"] for c in knowledge["comorbidities"] if c["drug"]})
    therapy = sorted({d for cancer in knowledge["cancers"].values()
                      for d in [*cancer["targeted"].values(), *cancer["standard"]]} | {"trametinib"})
    vocabulary = comorbidity + therapy
    assert check_interactions(vocabulary, [], kb).unknown_medications == ()
    hits = set()
    for x, y in itertools.combinations(vocabulary, 2):
        if x in therapy and y in therapy:
            continue  # one patient gets one first-line regimen
        hits |= {(entry, frozenset(pair)) for entry, pair in found([x, y], [], kb)}
    assert hits == {
        ("ddi_anticoagulant_antiplatelet", frozenset({"warfarin", "clopidogrel"})),
        ("ddi_clopidogrel_omeprazole", frozenset({"clopidogrel", "omeprazole"})),
        ("ddi_warfarin_fluoropyrimidine", frozenset({"warfarin", "capecitabine"})),
        ("ddi_sotorasib_acid_reducing_agent", frozenset({"sotorasib", "omeprazole"})),
        ("ddi_dabrafenib_warfarin", frozenset({"dabrafenib", "warfarin"})),
    }


def test_real_synthea_medications_are_normalised_and_unknown_ones_named(kb, shared_data):
    # Synthea v3 medications.csv (RxNorm clinical drug names with salts): current = no STOP date.
    by_patient: dict[str, set[str]] = {}
    with (shared_data / "ehr" / "synthea_csv" / "medications.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row["STOP"]:
                by_patient.setdefault(row["PATIENT"], set()).update(ingredients_from_description(row["CODE"], row["DESCRIPTION"]))
    unknown = set()
    for medications in by_patient.values():
        check = check_interactions(sorted(medications), [], kb)
        unknown |= set(check.unknown_medications)
        assert check.hits == ()  # none of these active lists combines two drugs of one entry
    assert unknown == {"ferrous sulfate"}
    assert normalise_drug_name("naproxen sodium", kb) == "naproxen"
    assert normalise_drug_name("enoxaparin sodium", kb) == "enoxaparin"
    assert normalise_drug_name("oxycodone hydrochloride", kb) == "oxycodone"


# ----------------------------------------------------------------------------- alert relevance


def facts(**extra):
    base = {"patient_key": KEY, "cancer_type": "nsclc", "stage": "IV", "ecog": 1, "alt_egfr_sensitizing": True,
            "current_medications": ["lisinopril"], "pgx_DPYD_activity_score": 0.5, "pgx_DPYD_diplotype": "*1/*2A",
            "pgx_DPYD_phenotype": "Poor Metabolizer", "pgx_TPMT_phenotype": "Intermediate Metabolizer",
            "pgx_TPMT_diplotype": "*1/*3A", "pgx_UGT1A1_phenotype": "Poor Metabolizer", "pgx_UGT1A1_diplotype": "*28/*28",
            "pgx_CYP2C19_phenotype": "Poor Metabolizer", "pgx_CYP2C19_diplotype": "*2/*2",
            "pgx_VKORC1_phenotype": "-1639 GA", "pgx_VKORC1_diplotype": "rs9923231 reference (C)/rs9923231 variant (T)"}
    base.update(extra)
    return base


def test_pgx_alerts_only_for_drugs_in_play(rule_base):
    table = recommend_for_patient(facts(), rule_base, model_predictions=None, trials=[], versions={})
    # nothing the genotype affects is taken or offered: no alert at all, osimertinib first
    assert not table["is_alert"].any()
    assert table.iloc[0]["therapy"] == "osimertinib"
    taking = recommend_for_patient(facts(current_medications=["lisinopril", "Capecitabine", "clopidogrel"]), rule_base,
                                   model_predictions=None, trials=[], versions={})
    alerts = taking[taking["is_alert"]]
    concerned = {d for drugs in alerts["drugs"] for d in json.loads(drugs)}
    assert {"capecitabine", "clopidogrel"} <= concerned
    assert not concerned & {"mercaptopurine", "azathioprine", "thioguanine", "irinotecan"}
    # every alert names a drug the patient takes or is offered; alerts rank above the proposed therapy
    in_play = {"lisinopril", "capecitabine", "clopidogrel", "osimertinib"}
    for drugs in alerts["drugs"]:
        assert set(json.loads(drugs)) & in_play
    assert alerts["rank"].max() < taking[taking["therapy"] == "osimertinib"]["rank"].min()


def test_pgx_results_for_drugs_not_in_play_go_to_the_profile(rule_base):
    profile = {g.gene: g for g in pgx_profile(facts(), rule_base, {"lisinopril", "osimertinib"})}
    tpmt = profile["TPMT"]
    assert tpmt.diplotype == "*1/*3A" and tpmt.phenotype == "Intermediate Metabolizer"
    assert "mercaptopurine" in tpmt.drugs and "TPMT" in tpmt.guideline
    assert tpmt.actionable and not any(a["in_play"] for a in tpmt.actionable)
    # clopidogrel's CYP2C19 result is shown as what it would mean, though the patient does not take it
    assert profile["CYP2C19"].actionable and profile["CYP2C19"].actionable[0]["drugs"] == ["clopidogrel"]
    vkorc1 = profile["VKORC1"]
    assert vkorc1.phenotype is None and vkorc1.genotype == "rs9923231 C/T (-1639 G/A)"
    assert "warfarin sensitivity" in vkorc1.interpretation
    missing = profile["CYP2D6"]
    assert not missing.called and "missing" in missing.interpretation
    in_play = {g.gene: g for g in pgx_profile(facts(), rule_base, {"capecitabine"})}
    assert in_play["DPYD"].actionable[0]["in_play"]
