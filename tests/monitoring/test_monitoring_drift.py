"""Drift statistics against independent computations: analytic PSI of a shifted normal, PSI by hand, ECDF-based KS."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from radplan import monitoring


def psi_by_hand(reference_proportions, current_proportions) -> float:
    total = 0.0
    for r, c in zip(reference_proportions, current_proportions):
        r, c = max(r, monitoring.PSI_EPSILON), max(c, monitoring.PSI_EPSILON)
        total += (c - r) * math.log(c / r)
    return total


def test_identical_samples_have_zero_psi_and_same_distribution_samples_stay_small():
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(0, 1, 5000))
    assert monitoring.psi_numeric(reference, reference.copy()) == pytest.approx(0.0, abs=1e-12)
    assert monitoring.psi_numeric(reference, pd.Series(rng.normal(0, 1, 5000))) < 0.02


@pytest.mark.parametrize("shift", [0.25, 1.0])
def test_psi_of_a_shifted_normal_matches_the_analytic_value(shift):
    rng = np.random.default_rng(1)
    reference = pd.Series(rng.normal(0, 1, 200_000))
    current = pd.Series(rng.normal(shift, 1, 200_000))
    # Deciles of N(0, 1) hold 0.1 each; a sample shifted by `shift` puts Phi(q_{i+1} - shift) - Phi(q_i - shift) in bin i.
    edges = np.concatenate([[-np.inf], stats.norm.ppf(np.linspace(0.1, 0.9, 9)), [np.inf]])
    shifted = np.diff(stats.norm.cdf(edges - shift))
    expected = psi_by_hand([0.1] * 10, shifted)
    # Sampling sd of the estimate at this size: about 3% of the value at shift 0.25 (20 seeds), under 1% at 1.0.
    assert monitoring.psi_numeric(reference, current) == pytest.approx(expected, rel=0.1)
    assert (expected > 0.25) == (shift == 1.0), "a one-SD shift is past the usual 0.25 threshold, a quarter SD is not"


def test_missing_values_are_a_bin_of_their_own():
    reference = pd.Series(np.arange(1000, dtype=float))  # exact deciles: 100 values per bin
    current = reference.copy()
    current[::2] = np.nan  # half missing, the rest spread evenly over the deciles
    expected = psi_by_hand([0.1] * 10 + [0.0], [0.05] * 10 + [0.5])
    assert monitoring.psi_numeric(reference, current) == pytest.approx(expected, rel=1e-9)
    assert monitoring.psi_numeric(reference, current) > 0.25


def test_constant_reference_still_sees_values_below_and_above():
    reference = pd.Series([3.0] * 100)
    assert monitoring.psi_numeric(reference, pd.Series([3.0] * 40)) == pytest.approx(0.0, abs=1e-12)
    below = pd.Series([2.0] * 20 + [3.0] * 20)
    expected = psi_by_hand([0.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0])
    assert monitoring.psi_numeric(reference, below) == pytest.approx(expected, rel=1e-9)


def test_nullable_integers_and_all_missing_columns():
    reference = pd.Series(pd.array([0, 1, 1, 2, None] * 20, dtype="Int64"))
    assert monitoring.psi_numeric(reference, reference.copy()) == pytest.approx(0.0, abs=1e-12)
    nothing = pd.Series([None] * 10, dtype=object)
    # A reference with no values: all present current values share one bin, missing the other.
    assert monitoring.psi_numeric(nothing, pd.Series([1.0] * 10)) == pytest.approx(psi_by_hand([0, 1], [1, 0]), rel=1e-9)
    assert math.isnan(monitoring.psi_numeric(reference, pd.Series([], dtype=float)))


def test_categorical_psi_counts_new_levels_and_missing():
    reference = pd.Series(["nsclc"] * 50 + ["breast"] * 50)
    current = pd.Series(["nsclc"] * 60 + ["breast"] * 20 + ["melanoma"] * 10 + [None] * 10)
    # levels (sorted): (missing), breast, melanoma, nsclc
    expected = psi_by_hand([0.0, 0.5, 0.0, 0.5], [0.1, 0.2, 0.1, 0.6])
    assert monitoring.psi_categorical(reference, current) == pytest.approx(expected, rel=1e-9)


def test_ks_matches_the_ecdf_distance_and_ignores_missing():
    rng = np.random.default_rng(2)
    reference = rng.normal(0, 1, 800)
    current = rng.normal(0.5, 1, 600)
    grid = np.sort(np.concatenate([reference, current]))
    ecdf = lambda sample: np.searchsorted(np.sort(sample), grid, side="right") / sample.size  # noqa: E731
    expected = np.max(np.abs(ecdf(reference) - ecdf(current)))
    with_missing = pd.Series(np.concatenate([current, [np.nan] * 50]))
    statistic, pvalue = monitoring.ks_test(pd.Series(reference), with_missing)
    assert statistic == pytest.approx(expected, abs=1e-12)
    assert pvalue < 1e-6
    same_statistic, _ = monitoring.ks_test(pd.Series(reference), pd.Series(rng.normal(0, 1, 600)))
    assert same_statistic < 1.36 * math.sqrt((800 + 600) / (800 * 600))  # below the 5% critical value
    assert all(math.isnan(v) for v in monitoring.ks_test(pd.Series(reference), pd.Series([np.nan, np.nan])))


def test_drift_table_kinds_order_and_flags():
    rng = np.random.default_rng(3)
    n = 400
    reference = pd.DataFrame({
        "patient_key": [f"p{i:016x}" for i in range(n)],
        "age_years": rng.normal(60, 10, n),
        "lab_hemoglobin_g_dl": rng.normal(12.5, 1.5, n),
        "sex": rng.choice(["F", "M"], n),
        "has_imaging": rng.random(n) < 0.8,
        "current_medications": [["omeprazole"]] * n,
        "source_versions": "{}",
        "snapshot_probability": rng.random(n),
    })
    current = reference.copy()
    current["age_years"] = rng.normal(75, 10, n)
    table = monitoring.drift_table(reference, current, psi_threshold=0.25)
    assert list(table.columns) == list(monitoring.DRIFT_COLUMNS)
    assert set(table["feature"]) == {"age_years", "lab_hemoglobin_g_dl", "sex", "has_imaging"}
    assert table["feature"].iloc[0] == "age_years" and bool(table["drifted"].iloc[0])
    assert table["psi"].is_monotonic_decreasing
    kinds = dict(zip(table["feature"], table["kind"]))
    assert kinds == {"age_years": "numeric", "lab_hemoglobin_g_dl": "numeric", "sex": "categorical", "has_imaging": "categorical"}
    unchanged = table.set_index("feature").loc[["lab_hemoglobin_g_dl", "sex", "has_imaging"]]
    assert (unchanged["psi"] == 0).all() and not unchanged["drifted"].any()
    assert table.set_index("feature")["ks_statistic"].isna().to_dict() == {"age_years": False, "lab_hemoglobin_g_dl": False, "sex": True, "has_imaging": True}


def test_training_snapshot_keeps_rows_version_and_training_probability():
    training = pd.DataFrame({"patient_key": ["p1", "p2"], "age_years": [50.0, 60.0]}).set_index("patient_key", drop=False)
    predictions = pd.DataFrame({"patient_key": ["p2", "p1", "p3"], "probability": [0.8, 0.3, 0.5]})
    snapshot = monitoring.training_snapshot(training, predictions, "7")
    assert snapshot.to_dict("list") == {"patient_key": ["p1", "p2"], "age_years": [50.0, 60.0], "snapshot_model_version": ["7", "7"],
                                        "snapshot_probability": [0.3, 0.8]}


def test_prediction_summary_histogram_and_shift():
    probabilities = pd.Series([0.05, 0.15, 0.15, 0.95, None])
    summary = monitoring.prediction_summary(probabilities)
    assert summary["n"] == 4 and summary["mean"] == pytest.approx(0.325)
    assert summary["histogram"]["0.0-0.1"] == 1 and summary["histogram"]["0.1-0.2"] == 2 and summary["histogram"]["0.9-1.0"] == 1
    assert sum(summary["histogram"].values()) == 4
    rng = np.random.default_rng(4)
    reference = pd.Series(rng.beta(2, 5, 2000))
    assert monitoring.prediction_summary(pd.Series(rng.beta(2, 5, 2000)), reference)["psi_vs_training"] < 0.05
    assert monitoring.prediction_summary(pd.Series(rng.beta(5, 2, 2000)), reference)["psi_vs_training"] > 0.25
    assert monitoring.prediction_summary(pd.Series([], dtype=float))["n"] == 0


def test_missingness_history_and_trend():
    first = pd.DataFrame({"has_imaging": [True, True, False, True], "has_genomics": [True] * 4, "has_ehr": [True] * 4, "has_notes": [False] * 4,
                          "lab_alt_u_l": [1.0, None, 2.0, 3.0], "lab_anc_10e9_l": [None, None, 1.0, 1.0]})
    measured = monitoring.missingness(first).set_index("group")["missing_rate"]
    assert measured.to_dict() == {"modality:imaging": 0.25, "modality:genomics": 0.0, "modality:ehr": 0.0, "modality:notes": 1.0,
                                  "features:labs": 0.375}
    t0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    history = monitoring.append_history(pd.DataFrame(), monitoring.missingness(first), measured_at=t0, run_id="run-a")
    second = first.assign(has_imaging=[False, False, False, True])
    history = monitoring.append_history(history, monitoring.missingness(second), measured_at=t0 + dt.timedelta(days=1), run_id="run-b")
    rerun = monitoring.append_history(history, monitoring.missingness(second), measured_at=t0 + dt.timedelta(days=1, hours=1), run_id="run-b")
    assert len(rerun) == len(history) == 10, "a re-executed run replaces its own measurement"
    trend = monitoring.quality_trend(history).set_index("group")
    assert trend.loc["modality:imaging", "change"] == pytest.approx(0.5)
    assert trend.loc["modality:genomics", "change"] == 0.0 and (trend["measurements"] == 2).all()
    assert math.isnan(monitoring.quality_trend(history[history["run_id"] == "run-a"])["change"].iloc[0])
