"""Synthetic hospital sites: one lake per site, never pooled.

Each site draws its own patients from the generator under its own cohort seed (patient identities
``synth-<seed>-<index>`` therefore never repeat across sites), keeps the cancer types of its case mix
with site-specific acceptance weights, records its CT scanner settings (slice thickness, noise, HU offset,
applied where images are rendered) and pseudonymizes patient keys with its own de-identification key, which
is written beside the lake (mode 0600) and never leaves the site folder.

A site folder holds::

    <site>/deid.key                          the site's key (secret, never read by the server)
    <site>/site.json                         name, size, case mix, scanner settings, key fingerprint
    <site>/lake/patient_features.parquet     the patient_features contract rows (tabular path)
    <site>/lake/response_labels.parquet      patient_key, therapy, responded, held_out

``held_out`` marks the site's evaluation patients (a fixed fraction drawn with the site's seed); they are
never trained on by any setting (site alone, pooled or federated).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from radplan.lake import atomic_path, atomic_write_json
from radplan.pseudonym import Pseudonymizer
from radplan.synth.cohort import draw_patient
from radplan.synth.tabular import patient_features_row, patient_key

HELD_OUT_FRACTION = 0.3
KEY_FILE = "deid.key"
SITE_FILE = "site.json"
FEATURES_FILE = "lake/patient_features.parquet"
LABELS_FILE = "lake/response_labels.parquet"


@dataclass(frozen=True)
class ScannerSettings:
    slice_thickness_mm: float
    noise_hu: float
    hu_offset: float


@dataclass(frozen=True)
class SiteSpec:
    """One hospital: its name, number of patients, generator seed, case mix and scanner."""

    name: str
    n_patients: int
    seed: int
    # acceptance weight per cancer type (relative; a type absent here is accepted with weight 1)
    case_mix: dict[str, float] = field(default_factory=dict)
    scanner: ScannerSettings = ScannerSettings(2.5, 10.0, 0.0)
    n_held_out: int | None = None  # exactly this many held-out patients; None: HELD_OUT_FRACTION of them at random


def default_site_specs(sizes: tuple[int, ...] = (120, 80, 50), base_seed: int = 5100) -> list[SiteSpec]:
    """Sites with different sizes, case mixes and scanners: an academic centre weighted to lung cancer,
    a community hospital weighted to colorectal and breast, a melanoma referral centre, then repeats."""
    mixes = [
        {"nsclc": 3.0, "colorectal": 1.0, "breast": 1.0, "melanoma": 0.5},
        {"nsclc": 0.7, "colorectal": 3.0, "breast": 2.0, "melanoma": 0.5},
        {"nsclc": 1.0, "colorectal": 0.5, "breast": 0.5, "melanoma": 4.0},
    ]
    scanners = [ScannerSettings(1.0, 8.0, 0.0), ScannerSettings(3.0, 18.0, 15.0), ScannerSettings(5.0, 12.0, -20.0)]
    return [SiteSpec(f"site-{i + 1}", n, base_seed + 97 * i, mixes[i % 3], scanners[i % 3]) for i, n in enumerate(sizes)]


def _site_patients(spec: SiteSpec) -> list:
    """Plans accepted into the site by its case-mix weights, in generator order, until ``n_patients``."""
    rng = np.random.default_rng(spec.seed)
    top = max([1.0, *spec.case_mix.values()])
    plans, index = [], 0
    while len(plans) < spec.n_patients:
        plan = draw_patient(spec.seed, index)
        index += 1
        if rng.random() < spec.case_mix.get(plan.cancer_type, 1.0) / top:
            plans.append(plan)
    return plans


def write_site_lake(spec: SiteSpec, root: str | os.PathLike) -> Path:
    """Write one site's folder under ``root`` (see the module docstring) and return it."""
    site_dir = Path(root) / spec.name
    (site_dir / "lake").mkdir(parents=True, exist_ok=True)
    key_path = site_dir / KEY_FILE
    if not key_path.exists():
        key_path.write_bytes(secrets.token_bytes(32))
        key_path.chmod(0o600)
    pseudonymizer = Pseudonymizer(key_path.read_bytes())
    rows, labels = [], []
    for plan in _site_patients(spec):
        row = patient_features_row(plan, spec.seed)
        pseudonym = pseudonymizer.patient_key(patient_key(spec.seed, plan.index))
        row["patient_key"] = pseudonym
        rows.append(row)
        labels.append({"patient_key": pseudonym, "therapy": " + ".join(sorted(d.lower() for d in plan.therapy)),
                       "responded": int(plan.responder)})
    if spec.n_held_out is None:
        held_out = np.random.default_rng(spec.seed + 1).random(len(labels)) < HELD_OUT_FRACTION
    else:
        held_out = np.zeros(len(labels), bool)
        held_out[np.random.default_rng(spec.seed + 1).permutation(len(labels))[:spec.n_held_out]] = True
    label_table = pd.DataFrame(labels, columns=["patient_key", "therapy", "responded"])
    label_table["held_out"] = held_out
    features = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame({"patient_key": pd.Series(dtype=str)})
    for relative, table in ((FEATURES_FILE, features), (LABELS_FILE, label_table)):
        with atomic_path(site_dir / relative) as temporary:
            table.to_parquet(temporary, index=False)
    description = {**asdict(spec), "key_fingerprint": pseudonymizer.key_fingerprint,
                   "n_held_out": int(held_out.sum()), "cancer_types": features.get("cancer_type", pd.Series(dtype=str)).value_counts().to_dict()}
    atomic_write_json(site_dir / SITE_FILE, description)
    return site_dir


def write_site_lakes(specs: list[SiteSpec], root: str | os.PathLike) -> dict[str, Path]:
    """Every site's folder under ``root``; refuses specs that share a seed (they would share patients)."""
    seeds = [s.seed for s in specs]
    if len(set(seeds)) != len(seeds) or len({s.name for s in specs}) != len(specs):
        raise ValueError(f"site names and generator seeds must be unique (seeds {seeds}): a shared seed means shared patients")
    return {spec.name: write_site_lake(spec, root) for spec in specs}


@dataclass
class SiteData:
    """One site's lake as read at the site: features, labels aligned to them, the held-out mask."""

    name: str
    patient_features: pd.DataFrame
    labels: pd.DataFrame

    @property
    def train(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        mask = ~self.labels["held_out"].to_numpy(bool)
        return self.patient_features[mask].reset_index(drop=True), self.labels[mask].reset_index(drop=True)

    @property
    def held_out(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        mask = self.labels["held_out"].to_numpy(bool)
        return self.patient_features[mask].reset_index(drop=True), self.labels[mask].reset_index(drop=True)


def read_site(site_dir: str | os.PathLike) -> SiteData:
    """A site's lake, labels aligned row by row to patient_features (a clear error naming the file otherwise)."""
    site_dir = Path(site_dir)
    features_path, labels_path = site_dir / FEATURES_FILE, site_dir / LABELS_FILE
    for path in (features_path, labels_path):
        if not path.exists():
            raise FileNotFoundError(f"{path}: site lake table missing")
    features = pd.read_parquet(features_path)
    labels = pd.read_parquet(labels_path)
    if len(features) and list(features["patient_key"]) != list(labels["patient_key"]):
        raise ValueError(f"{labels_path}: labels are not aligned with {features_path}")
    name = json.loads((site_dir / SITE_FILE).read_text())["name"] if (site_dir / SITE_FILE).exists() else site_dir.name
    return SiteData(name, features, labels)
