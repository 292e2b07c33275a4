"""Feedback given in the dashboard is read by the clinician_feedback asset (materialized with Dagster on the small lake).

This is the only dashboard test that imports Dagster: it checks the hand-off, the dashboard itself never does.
"""

from __future__ import annotations

from dagster import DagsterInstance, materialize

from radplan_dashboard.lakeview import read_table

from .conftest import USERS, csrf_of
from support import with_lake_io, with_upstream_sources


def test_dashboard_feedback_is_counted_by_the_clinician_feedback_asset(signed_in, small_lake, settings):
    from radplan_assets.monitoring import clinician_feedback
    from radplan_resources import LakeResource, LandingZoneResource

    client = signed_in("clinician")
    key = small_lake["keys"]["lung"]
    lake_path = small_lake["home"] / "lake"
    recs = read_table(lake_path, "features", "patient_recommendations", key).sort_values("rank")
    token = csrf_of(client.get(f"/patients/{key}").text)
    choices = {recs.iloc[0]["recommendation_id"]: ("reject", "drug_interaction"), recs.iloc[1]["recommendation_id"]: ("accept", "")}
    for rid, (choice, reason) in choices.items():
        response = client.post(f"/patients/{key}/feedback", data={"csrf_token": token, "recommendation_id": rid, "choice": choice,
                                                                 "reason": reason}, follow_redirects=False)
        assert response.status_code == 303
    lake = LakeResource(root=str(lake_path))
    landing = LandingZoneResource(folder=str(small_lake["home"] / "landing"))
    with DagsterInstance.ephemeral() as instance:
        result = materialize(with_upstream_sources([clinician_feedback]), resources=with_lake_io({"lake": lake, "landing": landing}),
                             instance=instance)
    assert result.success
    joined = read_table(lake_path, "features", "clinician_feedback").set_index("recommendation_id")
    assert set(joined.index) == set(choices)
    assert joined["matched"].all()
    assert joined.loc[recs.iloc[0]["recommendation_id"], "decision"] == "override"
    assert joined.loc[recs.iloc[0]["recommendation_id"], "reason"] == "drug_interaction"
    assert joined.loc[recs.iloc[1]["recommendation_id"], "decision"] == "accept"
    assert set(joined["clinician"]) == {USERS["clinician"]}
    assert not (lake_path / "quarantine").exists() or not any((lake_path / "quarantine").rglob("reason.json"))
    # The cohort table now shows the feedback count read back from the asset's table.
    assert "<td>2</td>" in client.get("/cohort").text
