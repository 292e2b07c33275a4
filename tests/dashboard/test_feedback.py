"""The feedback form writes what the clinician_feedback asset reads; bad forms store nothing."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from radplan.audit import iter_records
from radplan.monitoring import parse_feedback_csv
from radplan_dashboard.lakeview import read_table

from .conftest import USERS, csrf_of


def recommendation_ids(small_lake) -> list[str]:
    recs = read_table(small_lake["home"] / "lake", "features", "patient_recommendations", small_lake["keys"]["lung"])
    return list(recs.sort_values("rank")["recommendation_id"])


def feedback_files(settings) -> list:
    return sorted(settings.feedback_dir.glob("*")) if settings.feedback_dir.exists() else []


@pytest.mark.parametrize("choice, reason, decision", [("accept", "", "accept"), ("modify", "toxicity_risk", "override"),
                                                      ("reject", "patient_preference", "override")])
def test_a_decision_lands_in_landing_feedback_as_the_asset_parses_it(signed_in, small_lake, settings, choice, reason, decision):
    client = signed_in("clinician")
    key = small_lake["keys"]["lung"]
    token = csrf_of(client.get(f"/patients/{key}").text)
    rid = recommendation_ids(small_lake)[0]
    response = client.post(f"/patients/{key}/feedback", data={"csrf_token": token, "recommendation_id": rid, "choice": choice,
                                                             "reason": reason, "comment": "discussed at tumour board"},
                           follow_redirects=False)
    assert response.status_code == 303
    assert client.get(response.headers["location"]).text.count(f"Your decision on {rid} was saved") == 1
    [written] = feedback_files(settings)
    assert not written.name.startswith(".")
    # The asset's own parser (radplan.monitoring) accepts every row.
    parsed = parse_feedback_csv(written.read_bytes(), now=dt.datetime.now(dt.timezone.utc))
    assert parsed.rejected == []
    row = parsed.rows.iloc[0]
    assert (row["recommendation_id"], row["decision"], row["clinician"]) == (rid, decision, USERS["clinician"])
    assert (row["reason"] or "") == reason
    assert pd.read_csv(written)["dashboard_choice"].tolist() == [choice]
    [record] = [r for r in iter_records(settings.audit_dir) if r["action"] == "write"]
    assert record["patient_key"] == key and record["who"]["user"] == USERS["clinician"] and record["target"] == f"feedback/{written.name}"


BAD_FORMS = [
    ({"choice": "accept"}, "recommendation_id is missing"),
    ({"recommendation_id": "RID"}, "decision is missing"),
    ({"recommendation_id": "RID", "choice": "reject"}, "reason is missing: a reject needs a reason"),
    ({"recommendation_id": "RID", "choice": "maybe"}, "decision must be accept, modify or reject"),
    ({"recommendation_id": "RID", "choice": "modify", "reason": "because"}, "reason must be one of"),
    ({"recommendation_id": "RID", "choice": "accept", "comment": "<script>alert('x')</script>"}, "markup or script"),
    ({"recommendation_id": "RID", "choice": "accept", "comment": "see <img src=x onerror=alert(1)>"}, "markup or script"),
    ({"recommendation_id": "RID", "choice": "accept", "comment": "=HYPERLINK(\"http://x\")"}, "formula"),
    ({"recommendation_id": "r0000000000000000", "choice": "accept"}, "not one of this patient"),
]


def test_bad_forms_are_refused_with_the_reason_and_store_nothing(signed_in, small_lake, settings):
    client = signed_in("clinician")  # one sign-in for every case: argon2 verification is slow on purpose
    key = small_lake["keys"]["lung"]
    token = csrf_of(client.get(f"/patients/{key}").text)
    rid = recommendation_ids(small_lake)[0]
    for fields, problem in BAD_FORMS:
        data = {"csrf_token": token, **{k: (rid if v == "RID" else v) for k, v in fields.items()}}
        response = client.post(f"/patients/{key}/feedback", data=data)
        assert response.status_code == 400, fields
        assert problem in response.text, fields
        assert "Nothing was stored" in response.text
        assert "<script>alert" not in response.text and "<img src=x" not in response.text
    assert feedback_files(settings) == []
    assert not [r for r in iter_records(settings.audit_dir) if r["action"] == "write"]


def test_a_form_without_the_session_csrf_token_is_refused(signed_in, small_lake, settings):
    client = signed_in("clinician")
    key = small_lake["keys"]["lung"]
    rid = recommendation_ids(small_lake)[0]
    for token in (None, "not-the-token"):
        data = {"recommendation_id": rid, "choice": "accept", **({"csrf_token": token} if token else {})}
        response = client.post(f"/patients/{key}/feedback", data=data)
        assert response.status_code == 403 and "security token" in response.text
    assert feedback_files(settings) == []


def test_a_data_engineer_cannot_give_feedback(signed_in, small_lake, settings):
    client = signed_in("data_engineer")
    key = small_lake["keys"]["lung"]
    response = client.post(f"/patients/{key}/feedback", data={"recommendation_id": recommendation_ids(small_lake)[0], "choice": "accept"})
    assert response.status_code == 403
    assert feedback_files(settings) == []
