"""Draw one synthetic patient: demographics (with PHI), cancer, genome, PGx, labs, lesions and outcome.

Everything is drawn from a numpy ``Generator`` seeded with ``(seed, patient_index)``, so a patient
depends only on the cohort seed and its index. The facts drawn from (codes, hotspots, allele
tables) live in ``data/knowledge.json``.

Outcome model (also written to ``truth.json`` as ``outcome_model``): the probability that the
patient responds to first-line therapy (RECIST partial/complete response at follow-up) is

    logit(p) = 0.4
               - 0.9 * (ln(baseline tumour volume in ml) - 2.0)
               - 0.7 * ECOG
               + 1.8 * targeted_match          (first-line drug targets a planted driver)
               - 1.2 * (texture_heterogeneity - 0.5)   (lesion HU noise level, 0..1)
               - 0.5 * stage_iv

and the label is a Bernoulli draw with that probability. A patient with a targetable driver gets the
matched drug (dabrafenib with trametinib) except in STANDARD_DESPITE_DRIVER of cases, who get the
cancer's standard regimen like everyone else. The true probability is recorded, so the Bayes-optimal
AUC of any model can be computed from truth.json, and so is the probability under each first-line
option the patient had (standard regimen; matched targeted regimen if any), by regimen name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

KNOWLEDGE_PATH = Path(__file__).with_name("data") / "knowledge.json"

# Cohort "today": every date is relative to this fixed day (no wall clock anywhere).
REFERENCE_DATE = dt.date(2024, 6, 1)

# Share of patients with a targetable driver who start standard therapy instead of the matched drug.
STANDARD_DESPITE_DRIVER = 0.35

OUTCOME_COEFFICIENTS = {
    "intercept": 0.4,
    "log_tumour_volume_ml_centered_at_2": -0.9,
    "ecog": -0.7,
    "targeted_match": 1.8,
    "texture_heterogeneity_centered_at_0.5": -1.2,
    "stage_iv": -0.5,
}


@lru_cache(maxsize=1)
def knowledge() -> dict:
    return json.loads(KNOWLEDGE_PATH.read_text(encoding="utf-8"))


def patient_rng(seed: int, index: int, purpose: str) -> np.random.Generator:
    """Independent stream per (seed, patient, purpose), stable across code changes elsewhere."""
    digest = hashlib.sha256(f"{seed}/{index}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def stable_uid(seed: int, *parts: object) -> str:
    """A deterministic DICOM UID under the 2.25 (UUID-derived) root."""
    digest = hashlib.sha256("/".join([str(seed), *map(str, parts)]).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def stable_uuid(seed: int, *parts: object) -> str:
    digest = bytearray(hashlib.sha256("/".join([str(seed), *map(str, parts)]).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Lesion:
    center_mm: tuple[float, float, float]  # patient coordinates (LPS)
    radii_mm: tuple[float, float, float]
    lobes: list[tuple[tuple[float, float, float], float]]  # extra blobs: (offset mm, radius scale)
    mean_hu: float
    heterogeneity: float  # 0..1, scales the HU noise inside the lesion
    site: str


@dataclass
class Study:
    index: int
    date: dt.date
    time: str
    accession: str
    study_id: str
    description: str
    n_slices: int
    pixel_spacing: float
    slice_thickness: float
    lesions: list[Lesion]
    has_seg: bool
    physician: str
    operator: str


@dataclass
class PatientPlan:
    index: int
    mrn: str
    sex: str
    first: str
    last: str
    prefix: str
    birth_date: dt.date
    age: int
    ssn: str
    drivers_license: str
    passport: str
    street: str
    place: dict
    phone: str
    other_mrn: str
    institution: dict
    oncologist: str
    cancer_type: str
    stage_tnm: str
    stage_group: str
    ecog: int
    smoking: str
    pack_years: int
    diagnosis_date: dt.date
    somatic: list[dict]
    tested_markers: dict[str, bool]
    pgx: dict[str, dict]
    pgx_alt_alleles: dict[str, list[str]]  # rsID -> the ALT allele carried on each non-reference haplotype
    therapy: list[str]
    targeted_match: bool
    comorbidities: list[dict]
    labs: dict[str, float]
    creatinine_in_umol: bool
    weight_kg: float
    height_cm: float
    studies: list[Study]
    heterogeneity: float
    outcome_features: dict[str, float]
    outcome_probability: float
    probability_by_therapy: dict[str, float]  # regimen name (see regimen_name) -> true probability under it
    responder: bool
    csq_annotated: bool

    @property
    def full_name(self) -> str:
        return f"{self.first} {self.last}"

    @property
    def dicom_name(self) -> str:
        return f"{self.last}^{self.first}"

    @property
    def address_line(self) -> str:
        return f"{self.street}, {self.place['city']}, {self.place['state_code']} {self.place['zip']}"


def age_on(plan: "PatientPlan", day: dt.date) -> int:
    """Completed years of age on ``day``."""
    return day.year - plan.birth_date.year - ((day.month, day.day) < (plan.birth_date.month, plan.birth_date.day))


def _choice(rng: np.random.Generator, items: list, weights: list[float] | None = None):
    if weights is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _draw_pgx(rng: np.random.Generator) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """Per gene: two alleles by population frequency, the CPIC phenotype, and the alt alleles per rsID."""
    calls: dict[str, dict] = {}
    alt_alleles: dict[str, list[str]] = {}
    for gene, spec in knowledge()["pgx"].items():
        alleles = spec["alleles"]
        weights = [a["frequency"] for a in alleles]
        while True:
            pair = sorted((_choice(rng, alleles, weights), _choice(rng, alleles, weights)), key=lambda a: alleles.index(a))
            # *3B + *3C unphased looks exactly like *1/*3A: keep the truth unambiguous.
            if {pair[0]["name"], pair[1]["name"]} != {"*3B", "*3C"}:
                break
        calls[gene] = {
            "diplotype": f"{pair[0]['name']}/{pair[1]['name']}",
            "phenotype": cpic_phenotype(spec["phenotype_rule"], pair),
        }
        if any("pharmcat_name" in a for a in pair):
            calls[gene]["pharmcat_diplotype"] = "/".join(a.get("pharmcat_name", a["name"]) for a in pair)
        if spec["phenotype_rule"] == "vkorc1":  # plus-strand rs9923231 genotype, C reference / T variant
            variant_copies = sum("rs9923231" in a["variants"] for a in pair)
            calls[gene]["rs9923231_genotype"] = "/".join(["C"] * (2 - variant_copies) + ["T"] * variant_copies)
        if "activity" in pair[0]:
            calls[gene]["activity_score"] = pair[0]["activity"] + pair[1]["activity"]
        for allele in pair:
            for rsid, alt in allele["variants"].items():
                alt_alleles.setdefault(rsid, []).append(alt)
    return calls, alt_alleles


def cpic_phenotype(rule: str, pair: list[dict]) -> str | None:
    """CPIC phenotype of a diplotype (rules from the CPIC guidelines listed in knowledge.json)."""
    functions = [a.get("function") for a in pair]
    if rule == "cyp2c19":
        n_no, n_inc = functions.count("no"), functions.count("increased")
        if n_no == 2:
            return "Poor Metabolizer"
        if n_no == 1:
            return "Intermediate Metabolizer"
        if n_inc == 2:
            return "Ultrarapid Metabolizer"
        if n_inc == 1:
            return "Rapid Metabolizer"
        return "Normal Metabolizer"
    if rule == "activity_cyp2c9":
        score = pair[0]["activity"] + pair[1]["activity"]
        return "Normal Metabolizer" if score == 2 else "Intermediate Metabolizer" if score >= 1 else "Poor Metabolizer"
    if rule == "activity_dpyd":
        score = pair[0]["activity"] + pair[1]["activity"]
        return "Normal Metabolizer" if score == 2 else "Intermediate Metabolizer" if score >= 1 else "Poor Metabolizer"
    if rule == "no_function_count":
        n_no = functions.count("no")
        return ["Normal Metabolizer", "Intermediate Metabolizer", "Poor Metabolizer"][n_no]
    if rule == "slco1b1":
        n_no = functions.count("no")
        return ["Normal Function", "Decreased Function", "Poor Function"][n_no]
    if rule == "ugt1a1":
        n_dec = functions.count("decreased")
        return ["Normal Metabolizer", "Intermediate Metabolizer", "Poor Metabolizer"][n_dec]
    if rule == "vkorc1":
        return None  # CPIC warfarin dosing uses the rs9923231 genotype itself, not a phenotype
    raise ValueError(f"unknown phenotype rule {rule!r}")


def _draw_lesion(rng: np.random.Generator, site: str, heterogeneity: float) -> Lesion:
    # Centres inside the phantom anatomy of ct.py (lungs at x=±45 mm, soft tissue anterior).
    if site == "lung":
        side = 1 if rng.random() < 0.5 else -1
        center = (side * float(rng.uniform(35, 55)), float(rng.uniform(-20, 15)), float(rng.uniform(-25, 25)))
        mean_hu = float(rng.uniform(10, 50))
    else:
        center = (float(rng.uniform(-25, 25)), float(rng.uniform(-45, -25)), float(rng.uniform(-25, 25)))
        mean_hu = float(rng.uniform(55, 110))
    radius = float(rng.uniform(6, 20))
    radii = (radius * float(rng.uniform(0.8, 1.2)), radius * float(rng.uniform(0.8, 1.2)), radius * float(rng.uniform(0.8, 1.1)))
    lobes = [
        (tuple(float(v) for v in rng.normal(0, radius * 0.5, 3)), float(rng.uniform(0.4, 0.7)))
        for _ in range(int(rng.integers(0, 3)))
    ]
    return Lesion(center, radii, lobes, mean_hu, heterogeneity, site)


def _scaled_lesion(lesion: Lesion, factor: float) -> Lesion:
    return Lesion(lesion.center_mm, tuple(r * factor for r in lesion.radii_mm), lesion.lobes, lesion.mean_hu, lesion.heterogeneity, lesion.site)


def regimen_name(drugs: list[str]) -> str:
    """A regimen as the truth names it: lower-case drug names, sorted, joined by " + "."""
    return " + ".join(sorted({d.lower() for d in drugs}))


def outcome_probability(features: dict[str, float]) -> float:
    """The documented logistic outcome model (see the module docstring)."""
    logit = OUTCOME_COEFFICIENTS["intercept"] + sum(OUTCOME_COEFFICIENTS[name] * value for name, value in features.items())
    return 1.0 / (1.0 + math.exp(-logit))


def approx_lesion_volume_ml(lesion: Lesion) -> float:
    """Ellipsoid volume of the main blob (used by the outcome model before rasterisation)."""
    a, b, c = lesion.radii_mm
    return 4.0 / 3.0 * math.pi * a * b * c / 1000.0


def draw_patient(seed: int, index: int) -> PatientPlan:
    kb = knowledge()
    rng = patient_rng(seed, index, "patient")
    sex = "M" if rng.random() < 0.5 else "F"
    first = _choice(rng, kb["first_names"][sex])
    last = _choice(rng, kb["last_names"])
    # ~10 % are 90+ so Safe Harbor age aggregation is exercised.
    age = int(rng.integers(90, 97)) if rng.random() < 0.1 else int(rng.integers(38, 89))
    birth_date = REFERENCE_DATE - dt.timedelta(days=int(age * 365.25 + rng.integers(1, 360)))
    age = (REFERENCE_DATE - birth_date).days * 100 // 36525
    restricted = [p for p in kb["places"] if p.get("restricted_zip3")]
    ordinary = [p for p in kb["places"] if not p.get("restricted_zip3")]
    place = _choice(rng, restricted) if rng.random() < 0.2 else _choice(rng, ordinary)
    mrn = f"MRN{int(rng.integers(1_000_000, 9_999_999)):07d}"
    cancer_names = list(kb["cancers"])
    cancer_type = _choice(rng, cancer_names, [kb["cancers"][c]["weight"] for c in cancer_names])
    cancer = kb["cancers"][cancer_type]
    stage_tnm, stage_group = _choice(rng, cancer["stages"])
    ecog = int(_choice(rng, [0, 1, 2, 3], [0.35, 0.4, 0.18, 0.07]))
    if cancer_type == "nsclc":
        smoking = _choice(rng, ["never", "former", "current"], [0.25, 0.5, 0.25])
    else:
        smoking = _choice(rng, ["never", "former", "current"], [0.55, 0.3, 0.15])
    pack_years = 0 if smoking == "never" else int(rng.integers(5, 60))

    driver_keys = [d[0] for d in cancer["drivers"]]
    driver = _choice(rng, driver_keys, [d[1] for d in cancer["drivers"]])
    somatic_keys = [driver] if driver else []
    for passenger, probability in cancer["passengers"]:
        if rng.random() < probability and not any(k.split("_")[0] == passenger.split("_")[0] for k in somatic_keys):
            somatic_keys.append(passenger)
    somatic = []
    for key in somatic_keys:
        hotspot = dict(kb["somatic_hotspots"][key], key=key)
        hotspot["depth"] = int(rng.integers(180, 900))
        hotspot["vaf"] = round(float(rng.uniform(0.08, 0.55)), 3)
        somatic.append(hotspot)
    mutated_genes = {s["gene"] for s in somatic}
    tested = {marker: marker in mutated_genes for marker in cancer["tested_markers"]}

    targeted_drug = next((cancer["targeted"][g] for g in cancer["targeted"] if g in mutated_genes and (g != "KRAS" or driver == "KRAS_G12C")), None)
    standard = list(cancer["standard"])
    matched = [targeted_drug] + (["trametinib"] if targeted_drug == "dabrafenib" else []) if targeted_drug else None  # BRAF + MEK
    # Real practice varies: a patient with a targetable driver starts standard therapy in a share of cases (an own
    # stream, so the rest of the patient is the same draw as before), which makes the therapy effect learnable.
    given_standard = matched is None or patient_rng(seed, index, "therapy").random() < STANDARD_DESPITE_DRIVER
    therapy = standard if given_standard else matched
    targeted_match = not given_standard

    pgx, alt_alleles = _draw_pgx(patient_rng(seed, index, "pgx"))
    comorbidities = [c for c in kb["comorbidities"] if rng.random() < c["probability"]]

    weight = round(float(rng.normal(78 if sex == "M" else 66, 12)), 1)
    height = round(float(rng.normal(176 if sex == "M" else 163, 7)), 1)
    creatinine = round(float(rng.lognormal(math.log(0.95 if sex == "M" else 0.8), 0.25)), 2)
    labs = {
        "creatinine_mgdl": creatinine,
        "anc": round(float(rng.lognormal(math.log(4.2), 0.35)), 2),
        "bilirubin": round(float(rng.lognormal(math.log(0.7), 0.35)), 2),
        "alt": round(float(rng.lognormal(math.log(24), 0.4)), 0),
        "hemoglobin": round(float(rng.normal(13.5 if sex == "M" else 12.3, 1.4)), 1),
    }

    diagnosis_date = REFERENCE_DATE - dt.timedelta(days=int(rng.integers(200, 900)))
    heterogeneity = float(rng.uniform(0, 1))
    site_weights = cancer["lesion_site_weights"]
    sites = list(site_weights)
    baseline_lesions = [
        _draw_lesion(rng, _choice(rng, sites, [site_weights[s] for s in sites]), heterogeneity)
        for _ in range(int(rng.integers(1, 4)))
    ]
    baseline_volume = sum(approx_lesion_volume_ml(les) for les in baseline_lesions)
    outcome_features = {
        "log_tumour_volume_ml_centered_at_2": math.log(baseline_volume) - 2.0,
        "ecog": float(ecog),
        "targeted_match": float(targeted_match),
        "texture_heterogeneity_centered_at_0.5": heterogeneity - 0.5,
        "stage_iv": float(stage_group.startswith("IV")),
    }
    probability = outcome_probability(outcome_features)
    # The truth under every first-line option the patient had: only the targeted_match term depends on the therapy.
    options = {regimen_name(standard): outcome_probability({**outcome_features, "targeted_match": 0.0})}
    if matched:
        options[regimen_name(matched)] = outcome_probability({**outcome_features, "targeted_match": 1.0})
    responder = bool(rng.random() < probability)

    institution = _choice(rng, kb["institutions"])
    oncologist = _choice(rng, kb["physicians"])
    studies = []
    n_studies = 2 if rng.random() < 0.6 else 1
    study_date = diagnosis_date + dt.timedelta(days=int(rng.integers(3, 20)))
    for s in range(n_studies):
        if s == 0:
            lesions = baseline_lesions
        else:
            study_date = study_date + dt.timedelta(days=int(rng.integers(60, 180)))
            # Follow-up: responders shrink (RECIST PR-like), others grow.
            factors = rng.uniform(0.55, 0.8, len(baseline_lesions)) if responder else rng.uniform(1.05, 1.3, len(baseline_lesions))
            lesions = [_scaled_lesion(les, float(f)) for les, f in zip(baseline_lesions, factors)]
        mention_name = rng.random() < 0.3
        description = "CT CHEST ABDOMEN W CONTRAST" + (f" {last.upper()} {first.upper()}" if mention_name else "")
        studies.append(
            Study(
                index=s,
                date=study_date,
                time=f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
                accession=f"ACC{int(rng.integers(10_000_000, 99_999_999))}",
                study_id=str(int(rng.integers(1000, 99999))),
                description=description,
                n_slices=int(rng.integers(40, 61)),
                pixel_spacing=round(float(rng.uniform(1.4, 1.6)), 4),
                slice_thickness=2.5,
                lesions=lesions,
                has_seg=bool(rng.random() < 0.5),
                physician=_choice(rng, kb["physicians"]),
                operator=_choice(rng, kb["technologists"]),
            )
        )

    return PatientPlan(
        index=index,
        mrn=mrn,
        sex=sex,
        first=first,
        last=last,
        prefix="Mr." if sex == "M" else "Mrs.",
        birth_date=birth_date,
        age=age,
        ssn=f"999-{int(rng.integers(10, 99))}-{int(rng.integers(1000, 9999))}",
        drivers_license=f"S{int(rng.integers(10_000_000, 99_999_999))}",
        passport=f"X{int(rng.integers(10_000_000, 99_999_999))}X",
        street=f"{int(rng.integers(3, 999))} {_choice(rng, kb['streets'])}",
        place=place,
        phone=f"{place['area']}-555-{int(rng.integers(100, 198)):04d}",  # 555-0198/0199 belong to the institutions
        other_mrn=f"EPI{int(rng.integers(100_000, 999_999))}",
        institution=institution,
        oncologist=oncologist,
        cancer_type=cancer_type,
        stage_tnm=stage_tnm,
        stage_group=stage_group,
        ecog=ecog,
        smoking=smoking,
        pack_years=pack_years,
        diagnosis_date=diagnosis_date,
        somatic=somatic,
        tested_markers=tested,
        pgx=pgx,
        pgx_alt_alleles=alt_alleles,
        therapy=therapy,
        targeted_match=targeted_match,
        comorbidities=comorbidities,
        labs=labs,
        creatinine_in_umol=bool(rng.random() < 0.25),
        weight_kg=weight,
        height_cm=height,
        studies=studies,
        heterogeneity=heterogeneity,
        outcome_features=outcome_features,
        outcome_probability=probability,
        probability_by_therapy=options,
        responder=responder,
        csq_annotated=bool(rng.random() < 0.5),
    )
