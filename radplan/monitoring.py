"""Model monitoring and clinician feedback: pure functions, no Dagster, no I/O.

Input drift: the scoring cohort (``cohort_features``) is compared with the
training snapshot the response model was fitted on, one contract column at a
time:

- numeric columns: Population Stability Index over quantile bins of the
  reference (deciles by default; a constant reference column gets the bins
  "below", "equal", "above") and the two-sample Kolmogorov-Smirnov test on the
  non-missing values;
- categorical columns (strings, booleans): PSI over the union of levels.

Missing values are a bin of their own, so a modality that stops arriving shows
up as drift. PSI = sum over bins of (c - r) * ln(c / r) with r, c the reference
and current proportions; an empty bin counts as ``PSI_EPSILON`` so the
logarithm stays finite. Usual reading: < 0.1 stable, 0.1-0.25 moderate,
> 0.25 a shift worth acting on.

Clinician feedback: CSV files with one decision per recommendation id
(:data:`FEEDBACK_COLUMNS`). Whole-file problems raise
:class:`InvalidFeedbackError`; bad rows are returned as ``(line, reason)``
pairs, whose reasons never quote the offending value (it may be PHI). Only the
whitelisted columns are kept, the free-text reason is reduced to a code
(:data:`REASON_CODES`), and the clinician must be a role or pseudonymous id.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from radplan.errors import RadplanInputError

PSI_EPSILON = 1e-4
DEFAULT_BINS = 10
MISSING_LEVEL = "(missing)"
# Columns that identify or describe rows rather than measure the patient.
NON_FEATURE_COLUMNS = frozenset({"patient_key", "source_versions", "stratum"})
SNAPSHOT_PREFIX = "snapshot_"

FEEDBACK_COLUMNS = ("recommendation_id", "decision", "reason", "clinician", "decided_at")
PARSED_COLUMNS = (*FEEDBACK_COLUMNS, "reason_was_free_text", "line")
DECISIONS = ("accept", "override")
REASON_CODES = (
    "contraindication",
    "comorbidity",
    "toxicity_risk",
    "drug_interaction",
    "patient_preference",
    "guideline_disagreement",
    "insufficient_evidence",
    "trial_unavailable",
    "access_or_cost",
    "other",
)
RECOMMENDATION_ID = re.compile(r"^r[0-9a-f]{16}$")
# A role or pseudonymous id ("oncologist-03", "tumorboard.lung"): no spaces, no "@", starts with a letter.
CLINICIAN_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")
PATIENT_KEY = re.compile(r"^p[0-9a-f]{16}$")
FUTURE_TOLERANCE = dt.timedelta(days=1)


class InvalidFeedbackError(RadplanInputError):
    stage = "feedback"


# ---------------------------------------------------------------- drift


def psi_from_counts(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI of two histograms over the same bins (NaN when either side is empty)."""
    reference_counts = np.asarray(reference_counts, dtype=float)
    current_counts = np.asarray(current_counts, dtype=float)
    if reference_counts.sum() == 0 or current_counts.sum() == 0:
        return float("nan")
    reference = np.maximum(reference_counts / reference_counts.sum(), PSI_EPSILON)
    current = np.maximum(current_counts / current_counts.sum(), PSI_EPSILON)
    return float(np.sum((current - reference) * np.log(current / reference)))


def as_numeric(series: pd.Series) -> np.ndarray:
    """Floats with NaN for missing (nullable Int64, None and unparseable values included)."""
    return pd.to_numeric(series.astype(object).where(series.notna(), np.nan), errors="coerce").to_numpy(dtype=float)


def quantile_cuts(reference: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior cut points at the reference quantiles; ties merge bins, so a discrete column gets one bin per value."""
    values = reference[~np.isnan(reference)]
    if values.size == 0:
        return np.array([])
    return np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))


def numeric_bin_codes(values: np.ndarray, reference: np.ndarray, n_bins: int = DEFAULT_BINS) -> tuple[np.ndarray, int]:
    """Bin index per value (missing = the last bin) and the number of bins, both defined by ``reference``."""
    present = reference[~np.isnan(reference)]
    distinct = np.unique(present)
    if distinct.size == 1:
        # Quantile cuts of a constant are that constant: use below / equal / above instead.
        constant = distinct[0]
        codes = np.where(values < constant, 0, np.where(values == constant, 1, 2))
        n_value_bins = 3
    else:
        cuts = quantile_cuts(reference, n_bins)
        codes = np.searchsorted(cuts, values, side="left")  # bins (-inf, c0], (c0, c1], ..., (c_last, inf)
        n_value_bins = cuts.size + 1
    codes = np.where(np.isnan(values), n_value_bins, codes)
    return codes, n_value_bins + 1


def psi_numeric(reference: pd.Series, current: pd.Series, n_bins: int = DEFAULT_BINS) -> float:
    ref = as_numeric(reference)
    cur = as_numeric(current)
    ref_codes, n_total = numeric_bin_codes(ref, ref, n_bins)
    cur_codes, _ = numeric_bin_codes(cur, ref, n_bins)
    return psi_from_counts(np.bincount(ref_codes, minlength=n_total), np.bincount(cur_codes, minlength=n_total))


def _levels(series: pd.Series) -> pd.Series:
    return series.astype(object).map(lambda v: MISSING_LEVEL if _is_missing(v) else str(v))


def psi_categorical(reference: pd.Series, current: pd.Series) -> float:
    ref = _levels(reference).value_counts()
    cur = _levels(current).value_counts()
    levels = sorted(set(ref.index) | set(cur.index))
    return psi_from_counts(ref.reindex(levels, fill_value=0).to_numpy(), cur.reindex(levels, fill_value=0).to_numpy())


def ks_test(reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """Two-sample KS statistic and p-value on the non-missing values (NaN when a side has none)."""
    ref = as_numeric(reference)
    cur = as_numeric(current)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if ref.size == 0 or cur.size == 0:
        return float("nan"), float("nan")
    from scipy import stats  # here: the Dagster code location imports this module, and only drift tables need SciPy

    result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def _is_missing(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def feature_kind(series: pd.Series) -> str | None:
    """"numeric", "categorical", or None for columns drift is not measured on (lists, all missing)."""
    present = [v for v in series.astype(object) if not _is_missing(v)]
    if not present:
        return None
    if any(isinstance(v, (list, tuple, dict, np.ndarray)) for v in present):
        return None
    if pd.api.types.is_bool_dtype(series) or all(isinstance(v, (bool, np.bool_)) for v in present):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "categorical"


DRIFT_COLUMNS = ("feature", "kind", "n_reference", "n_current", "missing_reference", "missing_current",
                 "psi", "ks_statistic", "ks_pvalue", "drifted")


def drift_table(reference: pd.DataFrame, current: pd.DataFrame, *, psi_threshold: float, n_bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """One row per contract column present in both frames, highest PSI first (columns: ``DRIFT_COLUMNS``)."""
    shared = [c for c in reference.columns if c in current.columns and c not in NON_FEATURE_COLUMNS and not c.startswith(SNAPSHOT_PREFIX)]
    rows = []
    for column in shared:
        kind = feature_kind(reference[column]) or feature_kind(current[column])
        if kind is None:
            continue
        if kind == "numeric":
            psi = psi_numeric(reference[column], current[column], n_bins)
            ks_statistic, ks_pvalue = ks_test(reference[column], current[column])
        else:
            psi = psi_categorical(reference[column], current[column])
            ks_statistic, ks_pvalue = float("nan"), float("nan")
        rows.append({
            "feature": column,
            "kind": kind,
            "n_reference": len(reference),
            "n_current": len(current),
            "missing_reference": float(reference[column].isna().mean()) if len(reference) else float("nan"),
            "missing_current": float(current[column].isna().mean()) if len(current) else float("nan"),
            "psi": psi,
            "ks_statistic": ks_statistic,
            "ks_pvalue": ks_pvalue,
            "drifted": bool(psi > psi_threshold),
        })
    table = pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))
    return table.sort_values("psi", ascending=False, na_position="last", ignore_index=True)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (for Dagster's Markdown metadata)."""
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join("" if _is_missing(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def training_snapshot(training_features: pd.DataFrame, predictions: pd.DataFrame, model_version: str) -> pd.DataFrame:
    """The rows a response model was fitted on, with the model version and each patient's probability at training time."""
    snapshot = training_features.reset_index(drop=True).copy()
    snapshot[f"{SNAPSHOT_PREFIX}model_version"] = str(model_version)
    probabilities = predictions.set_index("patient_key")["probability"] if len(predictions) else pd.Series(dtype=float)
    snapshot[f"{SNAPSHOT_PREFIX}probability"] = snapshot["patient_key"].map(probabilities).astype(float)
    return snapshot


# ---------------------------------------------------------------- predictions


def prediction_summary(probabilities: pd.Series, reference: pd.Series | None = None, n_bins: int = DEFAULT_BINS) -> dict:
    """Distribution of predicted probabilities: quantiles, an equal-width histogram on [0, 1], and PSI against
    ``reference`` (the training-time probabilities) when given."""
    values = as_numeric(probabilities)
    values = values[~np.isnan(values)]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    summary: dict = {"n": int(values.size)}
    if values.size:
        quantiles = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
        summary.update({"mean": float(values.mean()), "std": float(values.std(ddof=0)), "min": float(values.min()), "max": float(values.max()),
                        **{f"p{int(q * 100):02d}": float(v) for q, v in zip((0.05, 0.25, 0.5, 0.75, 0.95), quantiles)}})
    summary["histogram"] = {f"{lo:.1f}-{hi:.1f}": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], np.histogram(values, bins=edges)[0])}
    if reference is not None:
        summary["n_reference"] = int(reference.notna().sum())
        summary["psi_vs_training"] = psi_numeric(reference, pd.Series(values), n_bins) if values.size else float("nan")
    return summary


# ---------------------------------------------------------------- data quality


MODALITIES = ("imaging", "genomics", "ehr", "notes")
CLINICAL_CORE = ("age_years", "sex", "cancer_type", "stage", "ecog")


def missingness(cohort_frame: pd.DataFrame) -> pd.DataFrame:
    """Share of patients missing each modality, and share of empty cells per feature group."""
    rows = []
    n = len(cohort_frame)
    for modality in MODALITIES:
        column = f"has_{modality}"
        if column in cohort_frame:
            present = cohort_frame[column].astype(object).map(lambda v: (not _is_missing(v)) and bool(v))
            rows.append({"group": f"modality:{modality}", "n_patients": n, "n_columns": 1,
                         "missing_rate": float(1.0 - present.mean()) if n else float("nan")})
    groups = {
        "clinical": [c for c in CLINICAL_CORE if c in cohort_frame],
        "labs": [c for c in cohort_frame if c.startswith("lab_")],
        "radiomics": [c for c in cohort_frame if c.startswith("rad_")],
        "pgx": [c for c in cohort_frame if c.startswith("pgx_") and c.endswith("_phenotype")],
    }
    for group, columns in groups.items():
        if columns:
            rate = float(cohort_frame[columns].isna().to_numpy().mean()) if n else float("nan")
            rows.append({"group": f"features:{group}", "n_patients": n, "n_columns": len(columns), "missing_rate": rate})
    return pd.DataFrame(rows, columns=["group", "n_patients", "n_columns", "missing_rate"])


HISTORY_COLUMNS = ("measured_at", "run_id", "group", "n_patients", "n_columns", "missing_rate")


def append_history(history: pd.DataFrame, measurement: pd.DataFrame, *, measured_at: dt.datetime, run_id: str) -> pd.DataFrame:
    """History plus this measurement; a re-executed run replaces its own rows instead of adding a second copy."""
    new = measurement.assign(measured_at=pd.Timestamp(measured_at), run_id=run_id)[list(HISTORY_COLUMNS)]
    if len(history):
        history = history[history["run_id"] != run_id]
    combined = pd.concat([frame for frame in (history, new) if len(frame)], ignore_index=True) if len(history) else new
    return combined.sort_values(["measured_at", "group"], ignore_index=True)[list(HISTORY_COLUMNS)]


def quality_trend(history: pd.DataFrame) -> pd.DataFrame:
    """Per group: the latest missing rate, the one before, and the change (NaN on the first measurement)."""
    rows = []
    for group, frame in history.sort_values("measured_at").groupby("group", sort=True):
        latest = float(frame["missing_rate"].iloc[-1])
        previous = float(frame["missing_rate"].iloc[-2]) if len(frame) > 1 else float("nan")
        rows.append({"group": group, "missing_rate": latest, "previous_missing_rate": previous, "change": latest - previous,
                     "measurements": len(frame)})
    return pd.DataFrame(rows, columns=["group", "missing_rate", "previous_missing_rate", "change", "measurements"])


# ---------------------------------------------------------------- clinician feedback


@dataclass
class ParsedFeedback:
    """Valid rows (``FEEDBACK_COLUMNS`` + ``reason_was_free_text``, ``line``) and rejected rows as (line, reason)."""

    rows: pd.DataFrame
    rejected: list[tuple[int, str]] = field(default_factory=list)


def reason_code(text: str) -> tuple[str | None, bool]:
    """(code, was free text): a known code as is, any other non-empty text becomes "other"."""
    normalised = re.sub(r"[\s-]+", "_", text.strip().lower())
    if not normalised:
        return None, False
    if normalised in REASON_CODES:
        return normalised, False
    return "other", True


def _row_problem(values: dict[str, str], now: dt.datetime) -> str | None:
    """Why a row cannot be used (never quoting its values), or None."""
    if not RECOMMENDATION_ID.match(values["recommendation_id"].strip()):
        return "recommendation_id is not a radplan recommendation id (r + 16 hex digits)"
    decision = values["decision"].strip().lower()
    if decision not in DECISIONS:
        return "decision is not accept or override"
    if decision == "override" and not values["reason"].strip():
        return "an override needs a reason"
    clinician = values["clinician"].strip()
    if not CLINICIAN_ID.match(clinician) or PATIENT_KEY.match(clinician):
        return "clinician is not a role or pseudonymous id (letters, digits, . _ : -; no names, no patient keys)"
    decided_at = pd.to_datetime(values["decided_at"].strip(), utc=True, errors="coerce", format="ISO8601") if values["decided_at"].strip() else pd.NaT
    if pd.isna(decided_at):
        return "decided_at is not an ISO 8601 date-time"
    if decided_at > pd.Timestamp(now) + FUTURE_TOLERANCE:
        return "decided_at is in the future"
    return None


def parse_feedback_csv(data: bytes, *, now: dt.datetime) -> ParsedFeedback:
    """Parse one feedback file; raises :class:`InvalidFeedbackError` when the file as a whole is unusable."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidFeedbackError(f"feedback file is not UTF-8 text (byte {error.start})") from None
    if "\x00" in text:
        raise InvalidFeedbackError("feedback file contains NUL bytes (binary, not CSV)")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InvalidFeedbackError("feedback file is empty")
        header = [name.strip().lower() for name in header]
        missing = [name for name in FEEDBACK_COLUMNS if name not in header]
        if missing:
            raise InvalidFeedbackError(f"feedback file lacks required columns {missing}; needs {list(FEEDBACK_COLUMNS)}")
        position = {name: header.index(name) for name in FEEDBACK_COLUMNS}
        rows, rejected = [], []
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                rejected.append((line, f"expected {len(header)} fields, found {len(record)}"))
                continue
            values = {name: record[index] for name, index in position.items()}
            problem = _row_problem(values, now)
            if problem:
                rejected.append((line, problem))
                continue
            code, free_text = reason_code(values["reason"])
            rows.append({
                "recommendation_id": values["recommendation_id"].strip(),
                "decision": values["decision"].strip().lower(),
                "reason": code,
                "reason_was_free_text": free_text,
                "clinician": values["clinician"].strip(),
                "decided_at": pd.to_datetime(values["decided_at"].strip(), utc=True, format="ISO8601"),
                "line": line,
            })
    except csv.Error as error:
        raise InvalidFeedbackError(f"feedback file is not valid CSV near line {reader.line_num}: {type(error).__name__}") from None
    frame = pd.DataFrame(rows, columns=list(PARSED_COLUMNS)) if rows else empty_feedback()
    return ParsedFeedback(rows=frame, rejected=rejected)


def empty_feedback() -> pd.DataFrame:
    """A feedback frame with no rows and the parsed columns' types (the demo before any clinician answers)."""
    return pd.DataFrame({
        "recommendation_id": pd.Series(dtype=str), "decision": pd.Series(dtype=str), "reason": pd.Series(dtype=str),
        "reason_was_free_text": pd.Series(dtype=bool), "clinician": pd.Series(dtype=str),
        "decided_at": pd.Series(dtype="datetime64[ns, UTC]"), "line": pd.Series(dtype="int64"),
    })[list(PARSED_COLUMNS)]


def rejected_rows_error(rejected: list[tuple[int, str]]) -> InvalidFeedbackError:
    """The quarantine reason for a file some of whose rows were rejected (its valid rows are still used)."""
    listed = "; ".join(f"line {line}: {reason}" for line, reason in rejected)
    return InvalidFeedbackError(f"{len(rejected)} feedback row(s) rejected, the others used: {listed}")


def latest_decisions(feedback: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """One decision per recommendation id: the latest ``decided_at`` wins (a clinician may revise); also the number
    of superseded rows. Ties keep the row that came last (file order, then line)."""
    if feedback.empty:
        return feedback, 0
    ordered = feedback.reset_index(drop=True).reset_index(names="_order").sort_values(["decided_at", "_order"], kind="stable")
    latest = ordered.drop_duplicates("recommendation_id", keep="last").drop(columns="_order")
    return latest.sort_values("recommendation_id", ignore_index=True), len(feedback) - len(latest)


RECOMMENDATION_JOIN_COLUMNS = ("recommendation_id", "patient_key", "therapy", "action", "category", "rule_ids", "model_name",
                               "model_version", "rule_base_version")


def join_recommendations(feedback: pd.DataFrame, recommendations: pd.DataFrame) -> pd.DataFrame:
    """Feedback with the recommendation it answers (``matched`` False where the id is not in the current table)."""
    columns = list(RECOMMENDATION_JOIN_COLUMNS)
    known = recommendations.reindex(columns=columns).drop_duplicates("recommendation_id") if len(recommendations) else pd.DataFrame(columns=columns)
    joined = feedback.merge(known, on="recommendation_id", how="left")
    joined["matched"] = joined["recommendation_id"].isin(set(known["recommendation_id"]))
    return joined


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (NaN, NaN without trials)."""
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves rounding noise there.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == trials else centre + half)


OVERRIDE_RATE_COLUMNS = ("level", "key", "decisions", "overrides", "override_rate", "ci_low", "ci_high")


def _rule_list(value) -> list[str]:
    if _is_missing(value):
        return []
    parsed = json.loads(value) if isinstance(value, str) else list(value)
    return [str(rule) for rule in parsed]


def model_label(name, version) -> str:
    return "rules-only" if _is_missing(version) or version in ("", None) else f"{name}/{version}"


def override_rates(joined: pd.DataFrame) -> pd.DataFrame:
    """Override rate overall, per rule id and per model version, over matched decisions (columns: ``OVERRIDE_RATE_COLUMNS``)."""
    matched = joined[joined["matched"]] if len(joined) else joined
    groups: list[tuple[str, str, pd.Series]] = []
    if len(matched):
        overridden = matched["decision"] == "override"
        groups.append(("all", "all", overridden))
        by_rule = matched.assign(_rule=matched["rule_ids"].map(_rule_list), _override=overridden).explode("_rule").dropna(subset=["_rule"])
        for rule, frame in by_rule.groupby("_rule", sort=True):
            groups.append(("rule", str(rule), frame["_override"].astype(bool)))
        labels = [model_label(n, v) for n, v in zip(matched["model_name"], matched["model_version"])]
        for label, frame in overridden.groupby(pd.Series(labels, index=matched.index), sort=True):
            groups.append(("model_version", str(label), frame))
    rows = []
    for level, key, overridden in groups:
        n, k = int(len(overridden)), int(overridden.sum())
        low, high = wilson_interval(k, n)
        rows.append({"level": level, "key": key, "decisions": n, "overrides": k, "override_rate": k / n if n else float("nan"),
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=list(OVERRIDE_RATE_COLUMNS))


def max_supported_override_rate(rates: pd.DataFrame, min_decisions: int) -> tuple[float, str | None]:
    """Highest override rate among groups with at least ``min_decisions`` decisions, and which group ("level:key")."""
    supported = rates[rates["decisions"] >= min_decisions] if len(rates) else rates
    if supported.empty:
        return float("nan"), None
    top = supported.sort_values(["override_rate", "decisions"], ascending=False).iloc[0]
    return float(top["override_rate"]), f"{top['level']}:{top['key']}"
