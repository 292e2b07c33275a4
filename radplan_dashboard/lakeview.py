"""Read-only views of the lake for the dashboard: the cohort table, one patient's page, cohort-level indicators.

Reads the files the pipeline writes (README "Where data lives"): cohort tables ``<zone>/<table>.parquet``,
per-patient tables ``<zone>/<table>/patient_key=<key>/*.parquet`` (hidden staging folders are skipped), NIfTI
volumes and masks, ``exports/model_report.json``. Nothing here writes. Missing data stays missing: a table the
pipeline has not written yet is ``None`` and the page says so, never a default value.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from radplan.imaging.masks import preferred_masks
from radplan.lake import PARTITION_COLUMN, read_hive_dataset
from radplan.models.outcomes import outcome_labels

PATIENT_KEY = re.compile(r"^p[0-9a-f]{16}$")
# CDS Hooks / card severity of each alert action (radplan.decision.export.SEVERITY says high/moderate/low).
ALERT_RANK = {"avoid": 2, "adjust_dose": 1}
# Landing folders whose newest file says how fresh each source is (README "Where data lives").
LANDING_SOURCES = {"imaging (DICOM)": "dicom", "genomics": "genomics", "EHR extracts": "ehr/csv", "EHR FHIR / notes": "ehr/fhir",
                   "clinician feedback": "feedback", "trial catalogue": "trials"}
# The lake table each source first lands in (per-patient), for its last materialization time.
SOURCE_TABLES = {"imaging (DICOM)": ("features", "normalized_volumes"), "genomics": ("features", "pgx_phenotypes"),
                 "EHR extracts": ("features", "clinical_features"), "EHR FHIR / notes": ("features", "note_findings"),
                 "clinician feedback": ("features", "clinician_feedback"), "trial catalogue": ("features", "patient_recommendations")}


class UnknownPatientError(LookupError):
    """No patient with this key in the lake (or not a patient key at all)."""


def valid_patient_key(key: str) -> bool:
    return bool(PATIENT_KEY.match(key or ""))


def _partitions(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"{PARTITION_COLUMN}=*") if p.is_dir()) if folder.is_dir() else []


def read_table(lake: Path, zone: str, table: str, patient_key: str | None = None) -> pd.DataFrame | None:
    """A cohort table, one patient's partition, or every partition of a per-patient table; None when never written."""
    base = Path(lake) / zone
    if patient_key is not None:
        folder = base / table / f"{PARTITION_COLUMN}={patient_key}"
        if not folder.is_dir():
            return None
        frame = ds.dataset(folder, format="parquet").to_table().to_pandas()
        frame.insert(0, PARTITION_COLUMN, patient_key)
        return frame
    single = base / f"{table}.parquet"
    if single.is_file():
        return pq.read_table(single).to_pandas()
    folder = base / table
    if not folder.is_dir():
        return None
    return read_hive_dataset(folder)


def partition_updated_at(lake: Path, zone: str, table: str) -> dict[str, dt.datetime]:
    """When each patient's partition was last written (newest file time, UTC)."""
    result = {}
    for folder in _partitions(Path(lake) / zone / table):
        files = [f for f in folder.glob("*.parquet") if not f.name.startswith(".")]
        if files:
            newest = max(f.stat().st_mtime for f in files)
            result[folder.name.split("=", 1)[1]] = dt.datetime.fromtimestamp(newest, dt.timezone.utc)
    return result


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------- cohort table


@dataclass(frozen=True)
class CohortFilters:
    cancer_type: str | None = None
    stage: str | None = None
    new_since: dt.date | None = None
    has_alert: bool | None = None
    has_trial: bool | None = None


COHORT_COLUMNS = ("patient_key", "cancer_type", "stage", "recommendations", "alerts", "highest_alert", "trial_matches",
                  "top_recommendation", "feedback_given", "updated_at")


def cohort_table(lake: Path) -> pd.DataFrame:
    """One row per patient known to the lake (a patient_features or a recommendations partition)."""
    features = read_table(lake, "features", "patient_features")
    recommendations = read_table(lake, "features", "patient_recommendations")
    feedback = read_table(lake, "features", "clinician_feedback")
    updated = partition_updated_at(lake, "features", "patient_recommendations")
    keys = set()
    if features is not None:
        keys |= set(features[PARTITION_COLUMN])
    if recommendations is not None:
        keys |= set(recommendations[PARTITION_COLUMN])
    facts = features.drop_duplicates(PARTITION_COLUMN).set_index(PARTITION_COLUMN) if features is not None and len(features) else None
    rows = []
    for key in sorted(keys):
        recs = recommendations[recommendations[PARTITION_COLUMN] == key] if recommendations is not None else None
        has_recs = recs is not None and key in updated
        alerts = recs[recs["is_alert"].astype("boolean").fillna(False)] if has_recs else None
        non_alert = recs[~recs["is_alert"].astype("boolean").fillna(False)].sort_values("rank") if has_recs else None
        fact = facts.loc[key] if facts is not None and key in facts.index else None
        given = None
        if feedback is not None and "patient_key" in feedback.columns:
            given = int((feedback["patient_key"] == key).sum())
        rows.append({
            "patient_key": key,
            "cancer_type": None if fact is None or _missing(fact.get("cancer_type")) else str(fact["cancer_type"]),
            "stage": None if fact is None or _missing(fact.get("stage")) else str(fact["stage"]),
            # None = no recommendation run yet for this patient (not "no recommendations").
            "recommendations": int(len(recs)) if has_recs else None,
            "alerts": int(len(alerts)) if has_recs else None,
            "highest_alert": (max(alerts["action"], key=lambda a: ALERT_RANK.get(a, 0)) if has_recs and len(alerts) else None),
            "trial_matches": int((recs["category"] == "trial").sum()) if has_recs else None,
            "top_recommendation": (str(non_alert.iloc[0]["therapy"]) if has_recs and len(non_alert) else None),
            "feedback_given": given,
            "updated_at": updated.get(key),
        })
    table = pd.DataFrame(rows, columns=list(COHORT_COLUMNS))
    return table.astype({c: "Int64" for c in ("recommendations", "alerts", "trial_matches", "feedback_given")})


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as dicts with NaN/NaT/NA as None, so templates test one kind of "missing"."""
    return [{k: (None if not isinstance(v, (list, np.ndarray)) and _missing(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def filter_cohort(table: pd.DataFrame, filters: CohortFilters) -> pd.DataFrame:
    """Rows matching every filter. A patient without recommendations matches neither has-alert=yes nor =no:
    whether they have an alert is not known yet."""
    keep = pd.Series(True, index=table.index)
    if filters.cancer_type:
        keep &= table["cancer_type"] == filters.cancer_type
    if filters.stage:
        keep &= table["stage"] == filters.stage
    if filters.new_since is not None:
        since = pd.Timestamp(filters.new_since, tz="UTC")
        keep &= table["updated_at"].map(lambda t: t is not None and not _missing(t) and pd.Timestamp(t) >= since)
    if filters.has_alert is not None:
        known = table["alerts"].notna()
        keep &= known & ((table["alerts"].fillna(0) > 0) == filters.has_alert)
    if filters.has_trial is not None:
        known = table["trial_matches"].notna()
        keep &= known & ((table["trial_matches"].fillna(0) > 0) == filters.has_trial)
    return table[keep]


# ----------------------------------------------------------------------------- one patient

PGX_COLUMN = re.compile(r"^pgx_(?P<gene>[A-Z0-9]+)_(?P<what>phenotype|diplotype|activity_score)$")
SUMMARY_FACTS = ("cancer_type", "stage", "tnm", "ecog", "age_years", "sex", "smoking_status", "prior_lines_of_therapy",
                 "actionable_alterations", "biomarker_mentions", "current_medications", "lesion_count",
                 "total_lesion_volume_ml", "largest_lesion_volume_ml", "has_imaging", "has_genomics", "has_ehr", "has_notes")


@dataclass
class PatientView:
    patient_key: str
    facts: dict  # patient_features row (missing facts absent or None)
    recommendations: pd.DataFrame | None  # None: not computed yet for this patient
    pgx: list[dict]  # per gene: phenotype, diplotype, activity score ("no call" when None)
    updated_at: dt.datetime | None

    @property
    def alerts(self) -> pd.DataFrame | None:
        if self.recommendations is None:
            return None
        return self.recommendations[self.recommendations["is_alert"].astype("boolean").fillna(False)]

    @property
    def therapies(self) -> pd.DataFrame | None:
        if self.recommendations is None:
            return None
        recs = self.recommendations
        return recs[~recs["is_alert"].astype("boolean").fillna(False) & (recs["category"] != "trial")]

    @property
    def trials(self) -> pd.DataFrame | None:
        if self.recommendations is None:
            return None
        return self.recommendations[self.recommendations["category"] == "trial"]

    def recommendation_ids(self) -> set[str]:
        return set() if self.recommendations is None else set(self.recommendations["recommendation_id"])


def patient_view(lake: Path, patient_key: str) -> PatientView:
    if not valid_patient_key(patient_key):
        raise UnknownPatientError("not a patient key (p + 16 hex digits)")
    features = read_table(lake, "features", "patient_features", patient_key)
    recommendations = read_table(lake, "features", "patient_recommendations", patient_key)
    if features is None and recommendations is None:
        raise UnknownPatientError("no patient with this key in the lake")
    facts = {} if features is None or features.empty else {k: v for k, v in features.iloc[0].items() if not k.startswith("rad_")}
    genes: dict[str, dict] = {}
    for column, value in facts.items():
        match = PGX_COLUMN.match(column)
        if match:
            genes.setdefault(match["gene"], {})[match["what"]] = None if _missing(value) else value
    pgx = [{"gene": gene, **{k: values.get(k) for k in ("phenotype", "diplotype", "activity_score")}} for gene, values in sorted(genes.items())]
    if recommendations is not None:
        recommendations = recommendations.sort_values("rank", ignore_index=True)
    updated = partition_updated_at(lake, "features", "patient_recommendations").get(patient_key)
    return PatientView(patient_key, facts, recommendations, pgx, updated)


def patient_image_paths(lake: Path, patient_key: str) -> tuple[Path, Path | None] | None:
    """(volume, mask) of the patient's first masked series: the reference mask, else the model-predicted one
    (the order ``patient_report`` uses for the report's key slice). A patient whose images have no mask
    (no reference segmentation, and no model mask good enough to use) gets their first volume and None.
    None without imaging."""
    volumes = read_table(lake, "features", "normalized_volumes", patient_key)
    if volumes is None or volumes.empty:
        return None
    reference, predicted = (read_table(lake, "features", name, patient_key) for name in ("lesion_masks", "predicted_lesion_masks"))
    masks = preferred_masks(reference if reference is not None else pd.DataFrame(), predicted if predicted is not None else pd.DataFrame())
    if len(masks):
        for item in masks.itertuples():
            volume = volumes[volumes["series_uid"] == item.image_series_uid]
            if len(volume):
                return Path(lake) / volume.iloc[0]["volume_path"], Path(lake) / item.mask_path
    return Path(lake) / volumes.iloc[0]["volume_path"], None


def load_image_pair(lake: Path, patient_key: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(image, mask or None) arrays in (z, y, x) order, or None without imaging."""
    import SimpleITK as sitk

    paths = patient_image_paths(lake, patient_key)
    if paths is None:
        return None
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[0])))
    mask = None if paths[1] is None else sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1])))
    return image, mask


# ----------------------------------------------------------------------------- cohort indicators


def model_report(lake: Path) -> dict | None:
    path = Path(lake) / "exports" / "model_report.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def response_by_stratum(lake: Path) -> pd.DataFrame | None:
    """Response probabilities (features/response_predictions) with each patient's stratum (features/patient_strata)."""
    predictions = read_table(lake, "features", "response_predictions")
    strata = read_table(lake, "features", "patient_strata")
    if predictions is None or strata is None or predictions.empty:
        return None
    joined = predictions[["patient_key", "probability"]].merge(strata[["patient_key", "stratum"]], on="patient_key", how="left")
    return joined


def observed_outcomes(lake: Path) -> pd.DataFrame | None:
    """Observed first-line response (RECIST best response in the de-identified EHR observations): patient_key, responded."""
    observations = read_table(lake, "deid", "ehr_observations")
    if observations is None or observations.empty:
        return None
    return outcome_labels(observations)


def calibration_points(lake: Path) -> pd.DataFrame | None:
    """Predicted probability vs observed response for the patients with an observed outcome (None without either)."""
    predictions = read_table(lake, "features", "response_predictions")
    outcomes = observed_outcomes(lake)
    if predictions is None or outcomes is None or predictions.empty or outcomes.empty:
        return None
    joined = predictions[["patient_key", "probability"]].merge(outcomes, on="patient_key")
    return joined if len(joined) else None


def drift(lake: Path) -> pd.DataFrame | None:
    return read_table(lake, "features", "feature_drift")


def quality_history(lake: Path) -> pd.DataFrame | None:
    return read_table(lake, "features", "data_quality_history")


def _newest_file(folder: Path) -> dt.datetime | None:
    if not folder.is_dir():
        return None
    newest = None
    for path in folder.rglob("*"):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            mtime = path.stat().st_mtime
            newest = mtime if newest is None or mtime > newest else newest
    return None if newest is None else dt.datetime.fromtimestamp(newest, dt.timezone.utc)


def data_freshness(lake: Path, landing: Path, now: dt.datetime) -> pd.DataFrame:
    """Per source: the newest file in its landing folder and the newest write of the lake table it feeds, with ages
    in hours (None = nothing there)."""
    rows = []
    for source, folder in LANDING_SOURCES.items():
        arrived = _newest_file(Path(landing) / folder)
        zone, table = SOURCE_TABLES[source]
        written = partition_updated_at(lake, zone, table)
        single = Path(lake) / zone / f"{table}.parquet"
        processed = max(written.values()) if written else (
            dt.datetime.fromtimestamp(single.stat().st_mtime, dt.timezone.utc) if single.is_file() else None)
        rows.append({"source": source, "landing_newest": arrived, "lake_newest": processed, "lake_table": f"{zone}/{table}",
                     "landing_age_h": None if arrived is None else (now - arrived).total_seconds() / 3600,
                     "lake_age_h": None if processed is None else (now - processed).total_seconds() / 3600})
    return pd.DataFrame(rows)


def quarantine_counts(lake: Path) -> pd.DataFrame:
    """Per stage: quarantined inputs (folders with reason.json) and rejected EHR lines (``*.rejected.jsonl``).
    Counts only: the copies hold PHI and are not shown."""
    root = Path(lake) / "quarantine"
    rows = []
    if root.is_dir():
        for stage in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            items = sum(1 for p in stage.iterdir() if p.is_dir() and not p.name.startswith("."))
            rejected = sum(sum(1 for line in f.open("rb") if line.strip()) for f in stage.glob("*.rejected.jsonl"))
            rows.append({"stage": stage.name, "inputs": items, "rejected_rows": rejected})
    return pd.DataFrame(rows, columns=["stage", "inputs", "rejected_rows"])


def run_failures(lake: Path, limit: int = 20) -> list[dict]:
    """The latest failed steps from lake/ops/run_failures.jsonl (time, job, partition, step, error class)."""
    path = Path(lake) / "ops" / "run_failures.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()[-limit:]
    out = []
    for line in reversed(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
