"""The landing sensor: one intake request per change of the landing zone, none for a repeat tick."""

from __future__ import annotations

from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from sensors.landing import landing_sensor


def _tick(instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor)
    result = landing_sensor(context)
    return result, context.cursor


def test_landing_sensor_requests_once_per_change(tmp_path, monkeypatch):
    monkeypatch.setenv("RADPLAN_HOME", str(tmp_path))
    landing = tmp_path / "landing" / "genomics"
    landing.mkdir(parents=True)
    (landing / "a.vcf").write_text("##fileformat=VCFv4.2\n")
    instance = DagsterInstance.ephemeral()

    first, cursor = _tick(instance, None)
    assert isinstance(first, RunRequest) and first.run_key.startswith("landing-")
    repeat, same_cursor = _tick(instance, cursor)
    assert isinstance(repeat, SkipReason) and same_cursor == cursor

    (landing / "b.vcf").write_text("##fileformat=VCFv4.2\n")
    changed, new_cursor = _tick(instance, cursor)
    assert isinstance(changed, RunRequest) and changed.run_key != first.run_key and new_cursor != cursor
    # A restarted sensor that lost its cursor asks again with the same run key: Dagster drops the duplicate.
    restarted, _ = _tick(instance, None)
    assert restarted.run_key == changed.run_key
