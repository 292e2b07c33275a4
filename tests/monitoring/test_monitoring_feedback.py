"""Clinician feedback: CSV validation (bad rows and files), latest decision per recommendation, override rates."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from radplan import monitoring

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)
R1, R2, R3, R4 = "r0000000000000001", "r00000000000000a2", "r00000000000000b3", "r00000000000000c4"


def parse(text: str) -> monitoring.ParsedFeedback:
    return monitoring.parse_feedback_csv(text.encode("utf-8"), now=NOW)


def test_valid_rows_are_normalised_and_only_whitelisted_columns_kept():
    parsed = parse(
        "Recommendation_ID,decision,reason,clinician,decided_at,patient_name\n"
        f"{R1},Accept,,oncologist-03,2026-11-20T09:30:00+01:00,Jane Roe\n"
        f"{R2}, OVERRIDE ,Toxicity risk,tumorboard.lung,2026-11-21,Jane Roe\n"
        f"{R3},override,Patient declined after we talked on the phone,oncologist-03,2026-11-22T10:00:00Z,Jane Roe\n"
    )
    assert parsed.rejected == []
    rows = parsed.rows
    assert list(rows.columns) == list(monitoring.PARSED_COLUMNS) and "patient_name" not in rows
    assert rows["decision"].tolist() == ["accept", "override", "override"]
    assert rows["reason"].tolist() == [None, "toxicity_risk", "other"], "free text becomes the code 'other'"
    assert rows["reason_was_free_text"].tolist() == [False, False, True]
    assert rows["decided_at"].iloc[0] == pd.Timestamp("2026-11-20T08:30:00Z"), "offsets are converted to UTC"
    assert rows["line"].tolist() == [2, 3, 4]


def test_malformed_rows_are_rejected_with_line_and_reason_without_their_values():
    lines = [
        "recommendation_id,decision,reason,clinician,decided_at",
        f"{R1},accept,,oncologist-03,2026-11-20T09:30:00Z",       # 2 valid
        f"{R2},maybe,,oncologist-03,2026-11-20T09:30:00Z",        # 3 bad decision
        f"{R3},override,,oncologist-03,2026-11-20T09:30:00Z",     # 4 override without reason
        f"{R4},accept,,Jane Roe,2026-11-20T09:30:00Z",            # 5 a name, not a pseudonymous id
        f"{R4},accept,,p0123456789abcdef,2026-11-20T09:30:00Z",   # 6 a patient key as clinician
        f"{R4},accept,,oncologist-03,20/11/2026",                 # 7 not ISO 8601
        f"{R4},accept,,oncologist-03,2027-01-01T00:00:00Z",       # 8 in the future
        "MRN-4711,accept,,oncologist-03,2026-11-20T09:30:00Z",   # 9 not a recommendation id
        f"{R4},accept,oncologist-03,2026-11-20T09:30:00Z",        # 10 a field missing
        "",                                                       # 11 blank: skipped
        f"{R4},override,comorbidity,oncologist-03,2026-11-20T10:00:00Z",  # 12 valid
    ]
    parsed = parse("\n".join(lines) + "\n")
    assert parsed.rows["recommendation_id"].tolist() == [R1, R4]
    assert [line for line, _ in parsed.rejected] == [3, 4, 5, 6, 7, 8, 9, 10]
    reasons = dict(parsed.rejected)
    assert "accept or override" in reasons[3] and "needs a reason" in reasons[4] and "future" in reasons[8]
    assert "pseudonymous" in reasons[5] and "pseudonymous" in reasons[6] and "ISO 8601" in reasons[7]
    assert "expected 5 fields, found 4" == reasons[10]
    for value in ("Jane Roe", "p0123456789abcdef", "MRN-4711", "20/11/2026", "maybe"):
        assert all(value not in reason for _, reason in parsed.rejected), "rejection reasons never quote the data"
    error = monitoring.rejected_rows_error(parsed.rejected)
    assert isinstance(error, monitoring.InvalidFeedbackError) and error.stage == "feedback" and "line 5:" in str(error)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        ("recommendation_id,decision,clinician,decided_at\n".encode(), "lacks required columns ['reason']"),
        ("recommendation_id,decision,reason,clinician,decided_at\nr1,d\xe9j\xe0\n".encode("latin-1"), "not UTF-8"),
        (b"PK\x03\x04\x00\x00binary", "NUL"),
        (b'recommendation_id,decision,reason,clinician,decided_at\n"unterminated,accept', "not valid CSV"),
    ],
)
def test_unusable_files_raise_the_feedback_error(data, message):
    with pytest.raises(monitoring.InvalidFeedbackError, match=message.replace("[", r"\[").replace("]", r"\]")):
        monitoring.parse_feedback_csv(data, now=NOW)


def test_header_only_file_gives_zero_rows():
    parsed = parse(",".join(monitoring.FEEDBACK_COLUMNS) + "\n")
    assert parsed.rows.empty and parsed.rejected == [] and list(parsed.rows.columns) == list(monitoring.PARSED_COLUMNS)


def test_latest_decision_per_recommendation_wins():
    first = parse("recommendation_id,decision,reason,clinician,decided_at\n"
                  f"{R1},accept,,oncologist-03,2026-11-20T09:00:00Z\n{R2},accept,,oncologist-03,2026-11-20T09:00:00Z\n").rows
    revision = parse("recommendation_id,decision,reason,clinician,decided_at\n"
                     f"{R1},override,comorbidity,oncologist-07,2026-11-21T09:00:00Z\n"
                     f"{R2},override,comorbidity,oncologist-07,2026-11-19T09:00:00Z\n").rows
    latest, superseded = monitoring.latest_decisions(pd.concat([first, revision], ignore_index=True))
    assert superseded == 2
    assert latest.set_index("recommendation_id")["decision"].to_dict() == {R1: "override", R2: "accept"}


def test_override_rates_per_rule_and_model_version_with_wilson_intervals():
    recommendations = pd.DataFrame({
        "recommendation_id": [f"r{i:016x}" for i in range(12)],
        "patient_key": [f"p{i:016x}" for i in range(12)],
        "therapy": "x", "action": "consider", "category": "treatment", "rule_base_version": "2026.1",
        "rule_ids": [json.dumps(["rule_a"])] * 10 + [json.dumps(["rule_a", "rule_b"]), json.dumps([])],
        "model_name": ["radplan-response"] * 6 + [None] * 6,
        "model_version": ["3"] * 6 + [None] * 6,
    })
    decisions = ["override"] * 5 + ["accept"] * 5 + ["override", "accept"]
    feedback = pd.DataFrame({"recommendation_id": list(recommendations["recommendation_id"]) + ["rffffffffffffffff"],
                             "decision": decisions + ["override"]})
    joined = monitoring.join_recommendations(feedback, recommendations)
    assert joined["matched"].tolist() == [True] * 12 + [False]
    rates = monitoring.override_rates(joined).set_index(["level", "key"])
    # Hand counts: rule_a is on rows 0-10 (6 overrides of 11), rule_b on row 10 only; model v3 on rows 0-5 (5 of 6).
    assert rates.loc[("all", "all"), ["decisions", "overrides"]].tolist() == [12, 6]
    assert rates.loc[("rule", "rule_a"), ["decisions", "overrides"]].tolist() == [11, 6]
    assert rates.loc[("rule", "rule_b"), ["decisions", "overrides"]].tolist() == [1, 1]
    assert rates.loc[("model_version", "radplan-response/3"), ["decisions", "overrides"]].tolist() == [6, 5]
    assert rates.loc[("model_version", "rules-only"), ["decisions", "overrides"]].tolist() == [6, 1]
    assert rates.loc[("all", "all"), "override_rate"] == 0.5
    # Wilson 95% for 6/12 by hand: centre 1/2, half-width 1.96 * sqrt(1/48 + 1.96^2/576) / (1 + 1.96^2/12) = 0.2462.
    assert rates.loc[("all", "all"), ["ci_low", "ci_high"]].tolist() == pytest.approx([0.2538, 0.7462], abs=1e-4)
    assert monitoring.max_supported_override_rate(monitoring.override_rates(joined), 5) == (pytest.approx(5 / 6), "model_version:radplan-response/3")
    assert monitoring.max_supported_override_rate(monitoring.override_rates(joined), 50) == (pytest.approx(float("nan"), nan_ok=True), None)


def test_wilson_interval_reference_values():
    assert monitoring.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert monitoring.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert all(v != v for v in monitoring.wilson_interval(0, 0))
