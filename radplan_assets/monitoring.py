"""Monitoring and feedback: input drift and data quality of the scored cohort; clinicians' accept/override decisions.

Both assets attach their alert flags as metadata (``drift_detected``, ``override_rate_exceeded``) and report them
through warning-severity asset checks; ``sensors.retraining`` reads the same metadata to request retraining.
"""

import datetime as dt
import hashlib
import math

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from radplan import monitoring
from radplan_resources import LakeResource, LandingZoneResource
from radplan_resources.io_manager import optional_input, own_previous_output, table_metadata

MODEL_MONITORING = "model_monitoring"
CLINICIAN_FEEDBACK = "clinician_feedback"
DRIFT_CHECK = "input_drift_below_threshold"
MISSINGNESS_CHECK = "missingness_not_rising"
OVERRIDE_CHECK = "override_rate_below_threshold"


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class ModelMonitoringConfig(Config):
    psi_threshold: float = 0.25
    n_bins: int = monitoring.DEFAULT_BINS
    # PSI from a handful of patients is mostly sampling noise: below this size on either side no drift is flagged.
    min_patients: int = 30
    missingness_increase_threshold: float = 0.2


@asset(
    group_name="models",
    ins={"response_model": optional_input()},
    metadata=table_metadata(MODEL_MONITORING),
    check_specs=[
        AssetCheckSpec(DRIFT_CHECK, asset=MODEL_MONITORING, description="Largest per-feature PSI of the scored cohort vs the "
                       "response model's training snapshot stays at or below the configured threshold."),
        AssetCheckSpec(MISSINGNESS_CHECK, asset=MODEL_MONITORING, description="No modality or feature group became more "
                       "missing since the previous measurement by more than the configured amount."),
    ],
    description="Input drift of the cohort being scored vs the response model's training snapshot (PSI per contract column "
    "over reference quantile bins, two-sample KS for numeric columns), the distribution of predicted probabilities, and "
    "missingness per modality appended to a history table (lake/features/feature_drift, data_quality_history).",
)
def model_monitoring(
    context: AssetExecutionContext, config: ModelMonitoringConfig, cohort_features: pd.DataFrame, response_model: dict, lake: LakeResource
):  # no return annotation: with check specs, Dagster would type the table output as Nothing
    measured_at = dt.datetime.now(dt.timezone.utc)
    current = cohort_features
    snapshot = response_model.get("training_snapshot", pd.DataFrame())
    predictions = response_model.get("predictions", pd.DataFrame())
    reference_version = str(snapshot["snapshot_model_version"].iloc[0]) if len(snapshot) else "none"

    drift = monitoring.drift_table(snapshot, current, psi_threshold=config.psi_threshold, n_bins=config.n_bins) if len(snapshot) else (
        pd.DataFrame(columns=list(monitoring.DRIFT_COLUMNS)))
    drift_table = drift.assign(measured_at=pd.Timestamp(measured_at), reference_model_version=reference_version)
    max_psi = float(drift["psi"].max()) if drift["psi"].notna().any() else float("nan")
    top_feature = str(drift["feature"].iloc[0]) if drift["psi"].notna().any() else None
    enough_patients = len(snapshot) >= config.min_patients and len(current) >= config.min_patients
    drift_detected = bool(enough_patients and max_psi > config.psi_threshold)
    if not len(snapshot):
        drift_note = "no training snapshot: the response model has not been trained"
    elif not enough_patients:
        drift_note = f"too few patients to judge drift (reference {len(snapshot)}, current {len(current)}, minimum {config.min_patients})"
    else:
        drift_note = f"max PSI {max_psi:.3f} ({top_feature}) vs threshold {config.psi_threshold}"

    reference_probabilities = snapshot["snapshot_probability"] if "snapshot_probability" in snapshot else None
    predicted = monitoring.prediction_summary(predictions["probability"] if "probability" in predictions else pd.Series(dtype=float),
                                              reference_probabilities, config.n_bins)

    history = monitoring.append_history(
        own_previous_output(lake, MODEL_MONITORING)["history"], monitoring.missingness(current),
        measured_at=measured_at, run_id=context.run_id,
    )
    trend = monitoring.quality_trend(history)
    rising = trend[trend["change"] > config.missingness_increase_threshold]

    context.log.info(f"{len(drift)} features compared over {len(snapshot)} training / {len(current)} current patients; {drift_note}")
    drift_check = AssetCheckResult(
        check_name=DRIFT_CHECK,
        passed=not drift_detected,
        severity=AssetCheckSeverity.WARN,
        description=drift_note,
        metadata={"max_psi": _finite(max_psi), "feature": top_feature or "", "psi_threshold": config.psi_threshold,
                  "drifted_features": MetadataValue.json(drift.loc[drift["drifted"].astype(bool), "feature"].tolist())},
    )
    missingness_check = AssetCheckResult(
        check_name=MISSINGNESS_CHECK,
        passed=rising.empty,
        severity=AssetCheckSeverity.WARN,
        metadata={"rising_groups": MetadataValue.json({g: round(float(c), 4) for g, c in zip(rising["group"], rising["change"])}),
                  "missingness_increase_threshold": config.missingness_increase_threshold},
    )
    top_rows = drift.head(10)[["feature", "kind", "psi", "ks_statistic", "ks_pvalue"]].round(4)
    return MaterializeResult(
        value={"drift": drift_table, "history": history},
        metadata={
            "reference_model_version": reference_version,
            "reference_patients": len(snapshot),
            "current_patients": len(current),
            "features_compared": len(drift),
            "max_psi": MetadataValue.float(max_psi),
            "max_psi_feature": top_feature or "",
            "drifted_features": int(drift["drifted"].astype(bool).sum()) if len(drift) else 0,
            "psi_threshold": config.psi_threshold,
            "min_patients": config.min_patients,
            "drift_detected": drift_detected,
            "drift_note": drift_note,
            "top_drift": MetadataValue.md(monitoring.markdown_table(top_rows) if len(top_rows) else "no features compared"),
            "predictions": MetadataValue.json({k: (_finite(v) if isinstance(v, float) else v) for k, v in predicted.items()}),
            "prediction_mean": MetadataValue.float(predicted.get("mean", float("nan"))),
            "missingness": MetadataValue.json({g: _finite(r) for g, r in zip(trend["group"], trend["missing_rate"])}),
            "missingness_change": MetadataValue.json({g: _finite(c) for g, c in zip(trend["group"], trend["change"])}),
        },
        check_results=[drift_check, missingness_check],
    )


class ClinicianFeedbackConfig(Config):
    override_rate_threshold: float = 0.3
    # A rate from a few decisions says little; rules and model versions with fewer are reported but never alert.
    min_decisions: int = 5


def _feedback_files(folder) -> list:
    if not folder.is_dir():
        return []
    # Hidden files are uploads still being written.
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


@asset(
    group_name="decision",
    ins={"patient_recommendations": optional_input()},
    metadata=table_metadata(CLINICIAN_FEEDBACK),
    check_specs=[
        AssetCheckSpec(OVERRIDE_CHECK, asset=CLINICIAN_FEEDBACK, description="No rule, model version or the whole set of "
                       "decisions (with enough decisions) is overridden more often than the configured threshold."),
    ],
    description="Clinicians' accept/override decisions (CSV files in landing/feedback, one row per recommendation id) "
    "validated, joined to the recommendations they answer, and summarised as override rates per rule and per model "
    "version with Wilson 95% intervals (lake/features/clinician_feedback, override_rates); bad files and rows are "
    "quarantined with the reason.",
)
def clinician_feedback(
    context: AssetExecutionContext,
    config: ClinicianFeedbackConfig,
    patient_recommendations: pd.DataFrame,
    lake: LakeResource,
    landing: LandingZoneResource,
):  # no return annotation: with check specs, Dagster would type the table output as Nothing
    now = dt.datetime.now(dt.timezone.utc)
    files = _feedback_files(landing.feedback_dir)
    parsed, quarantined, rejected_rows = [], [], 0
    for path in files:
        data = path.read_bytes()
        try:
            if path.suffix.lower() != ".csv":
                raise monitoring.InvalidFeedbackError("feedback files must be CSV (.csv)")
            result = monitoring.parse_feedback_csv(data, now=now)
        except monitoring.InvalidFeedbackError as error:
            quarantined.append(lake.quarantine(path, error.stage, error).safe_summary())
            continue
        if result.rejected:
            rejected_rows += len(result.rejected)
            quarantined.append(lake.quarantine(path, "feedback", monitoring.rejected_rows_error(result.rejected)).safe_summary())
        # A content hash names the source: landing file names are chosen by the hospital and may carry PHI.
        parsed.append(result.rows.assign(source_file_id=hashlib.sha256(data).hexdigest()[:16]))
    feedback = pd.concat(parsed, ignore_index=True) if parsed else monitoring.empty_feedback().assign(source_file_id=pd.Series(dtype=str))
    valid_rows = len(feedback)
    decisions, superseded = monitoring.latest_decisions(feedback)
    joined = monitoring.join_recommendations(decisions, patient_recommendations)
    rates = monitoring.override_rates(joined)

    max_rate, max_group = monitoring.max_supported_override_rate(rates, config.min_decisions)
    exceeded = bool(max_group is not None and max_rate > config.override_rate_threshold)
    overall = rates[rates["level"] == "all"]
    overall_rate = float(overall["override_rate"].iloc[0]) if len(overall) else float("nan")
    if not len(joined):
        note = "no clinician feedback yet" if not quarantined else "no usable clinician feedback (see quarantine)"
    elif max_group is None:
        note = f"no rule or model version has {config.min_decisions} decisions yet"
    else:
        note = f"highest override rate {max_rate:.2f} ({max_group}) vs threshold {config.override_rate_threshold}"
    context.log.info(f"{len(joined)} decisions from {len(parsed)} files ({len(quarantined)} quarantined); {note}")
    matched = joined[joined["matched"]] if len(joined) else joined
    check = AssetCheckResult(
        check_name=OVERRIDE_CHECK,
        passed=not exceeded,
        severity=AssetCheckSeverity.WARN,
        description=note,
        metadata={"max_override_rate": _finite(max_rate), "group": max_group or "", "override_rate_threshold": config.override_rate_threshold,
                  "min_decisions": config.min_decisions},
    )
    return MaterializeResult(
        value={"decisions": joined, "override_rates": rates},
        metadata={
            "feedback_files": len(files),
            "files_used": len(parsed),
            "quarantined": MetadataValue.json(quarantined),
            "rows_valid": valid_rows,
            "rows_rejected": rejected_rows,
            "superseded": superseded,
            "decisions": len(joined),
            "matched": int(len(matched)),
            "unmatched": int(len(joined) - len(matched)),
            "overrides": int((matched["decision"] == "override").sum()) if len(matched) else 0,
            "override_rate": MetadataValue.float(overall_rate),
            "max_override_rate": MetadataValue.float(max_rate),
            "max_override_group": max_group or "",
            "override_rate_threshold": config.override_rate_threshold,
            "min_decisions": config.min_decisions,
            "override_rate_exceeded": exceeded,
            "override_note": note,
            "reasons": MetadataValue.json({str(k): int(v) for k, v in matched["reason"].value_counts().items()} if len(matched) else {}),
            "free_text_reasons": int(feedback["reason_was_free_text"].sum()) if valid_rows else 0,
        },
        check_results=[check],
    )
