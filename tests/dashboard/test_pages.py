"""What the clinician and data-engineer pages show, read from a small lake (real rules, trials and CT)."""

from __future__ import annotations

import datetime as dt
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .conftest import write_partition

PNG = b"\x89PNG\r\n\x1a\n"


def cohort_keys(html: str) -> set[str]:
    return set(re.findall(r'href="/patients/(p[0-9a-f]{16})"', html))


def test_cohort_filters(signed_in, small_lake):
    client = signed_in("clinician")
    keys = small_lake["keys"]
    assert cohort_keys(client.get("/cohort").text) == {keys["lung"], keys["breast"], keys["colorectal"]}
    assert cohort_keys(client.get("/cohort", params={"cancer_type": "breast"}).text) == {keys["breast"]}
    assert cohort_keys(client.get("/cohort", params={"stage": "IV"}).text) == {keys["lung"]}
    # The colorectal patient has no recommendation run: neither "has alert" nor "no alert" is known.
    assert cohort_keys(client.get("/cohort", params={"has_alert": "yes"}).text) == {keys["lung"]}
    assert cohort_keys(client.get("/cohort", params={"has_alert": "no"}).text) == {keys["breast"]}
    assert cohort_keys(client.get("/cohort", params={"has_trial": "yes"}).text) <= {keys["lung"], keys["breast"]}
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    assert cohort_keys(client.get("/cohort", params={"new_since": tomorrow}).text) == set()
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    assert cohort_keys(client.get("/cohort", params={"new_since": yesterday}).text) == {keys["lung"], keys["breast"]}
    bad = client.get("/cohort", params={"new_since": "last tuesday"})
    assert bad.status_code == 200 and "must be a date" in bad.text
    assert "not computed yet" in client.get("/cohort").text


def test_cohort_has_trial_filter_matches_the_trial_rows(signed_in, small_lake):
    from radplan_dashboard.lakeview import read_table

    client = signed_in("clinician")
    recs = read_table(small_lake["home"] / "lake", "features", "patient_recommendations")
    with_trials = set(recs.loc[recs["category"] == "trial", "patient_key"])
    assert cohort_keys(client.get("/cohort", params={"has_trial": "yes"}).text) == with_trials
    assert cohort_keys(client.get("/cohort", params={"has_trial": "no"}).text) == {small_lake["keys"]["lung"], small_lake["keys"]["breast"]} - with_trials


def test_patient_page_shows_alerts_therapies_pgx_and_missing_data_as_missing(signed_in, small_lake):
    client = signed_in("clinician")
    html = client.get(f"/patients/{small_lake['keys']['lung']}").text
    assert 'id="alerts"' in html and "clopidogrel" in html and "CPIC" in html
    assert "osimertinib" in html and "0.66 (0.50–0.79)" in html
    assert "Poor Metabolizer" in html and "*2/*2" in html
    assert "no call" in html  # DPYD has no call in the fixture: shown as such, not as normal
    colorectal = client.get(f"/patients/{small_lake['keys']['colorectal']}").text
    assert "Recommendations not computed yet." in colorectal
    assert "No image in the lake for this patient." in colorectal
    assert "No model estimate, so no explanation" in colorectal
    assert 'id="alerts"' not in colorectal and "No pharmacogenomic or interaction alert" not in colorectal


def test_image_slider_covers_the_volume_and_opens_on_the_largest_lesion_slice(signed_in, small_lake, shared_data):
    client = signed_in("clinician")
    key = small_lake["keys"]["lung"]
    html = client.get(f"/patients/{key}").text
    # Independent reading of the same files with nibabel (x, y, z order) instead of SimpleITK.
    folder = shared_data / "imaging" / "ibsi_sts_002" / "nifti"
    mask = np.asarray(nib.load(folder / "CT_mask.nii.gz").dataobj)
    areas = (mask > 0).sum(axis=(0, 1))
    slider = re.search(r'id="slice-slider" min="0" max="(\d+)" value="(\d+)"', html)
    assert slider, html
    assert int(slider.group(1)) == mask.shape[2] - 1
    assert int(slider.group(2)) == int(np.argmax(areas))
    for index in (0, int(np.argmax(areas)), mask.shape[2] - 1):
        image = client.get(f"/patients/{key}/slices/{index}.png")
        assert image.status_code == 200 and image.content.startswith(PNG)
    outside = client.get(f"/patients/{key}/slices/{mask.shape[2]}.png")
    assert outside.status_code == 404 and "outside the volume" in outside.text
    explanation = client.get(f"/patients/{key}/explanation.png")
    assert explanation.status_code == 200 and explanation.content.startswith(PNG)


def test_text_from_the_lake_is_escaped(signed_in, small_lake):
    """Free text reaches the lake from notes and trial records: it is shown as text, never run."""
    from radplan_dashboard.lakeview import read_table

    lake = small_lake["home"] / "lake"
    key = small_lake["keys"]["breast"]
    recs = read_table(lake, "features", "patient_recommendations", key)
    recs.loc[0, "rationale"] = "<script>alert('lake')</script> & <b>bold</b>"
    write_partition(lake, "features", "patient_recommendations", key, recs)
    client = signed_in("clinician")
    html = client.get(f"/patients/{key}").text
    assert "<script>alert('lake')</script>" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#39;lake&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html


def test_health_page_shows_drift_freshness_and_says_what_is_missing(signed_in, small_lake):
    client = signed_in("data_engineer")
    html = client.get("/health").text
    assert 'id="drift-plot"' in html and "Drifted (PSI above threshold): age_years" in html
    genomics = re.search(r"<td>genomics</td>\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>", html)
    assert genomics and re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d", genomics.group(1)) and genomics.group(2) == "not materialized"
    ehr = re.search(r"<td>EHR extracts</td>\s*<td>([^<]+)</td>", html)
    assert ehr.group(1) == "nothing landed"
    assert "No data-quality history yet." in html
    assert not any(key in html for key in small_lake["keys"].values())  # no patient-level data for engineers


def test_cohort_plots_need_their_inputs(signed_in, small_lake):
    client = signed_in("clinician")
    html = client.get("/cohort").text
    assert 'id="stratum-plot"' in html
    assert "Calibration indeterminate: 0 patients" in html  # no observed outcomes in the small lake
    lake = small_lake["home"] / "lake"
    (lake / "features" / "response_predictions.parquet").unlink()
    html = client.get("/cohort").text
    assert 'id="stratum-plot"' not in html and "No response model predictions" in html


def test_health_page_counts_quarantine_and_tells_an_empty_drift_table_from_none(signed_in, small_lake):
    lake = small_lake["home"] / "lake"
    # The pipeline's quarantine layout: one folder per input with reason.json; rejected EHR lines in a JSONL file.
    (lake / "quarantine" / "vcf" / "6d925c4784f1b94e").mkdir(parents=True)
    (lake / "quarantine" / "vcf" / "6d925c4784f1b94e" / "reason.json").write_text("{}")
    (lake / "quarantine" / "ehr").mkdir(parents=True)
    (lake / "quarantine" / "ehr" / "synthea_conditions.rejected.jsonl").write_text('{"line": 3}\n{"line": 9}\n')
    drift = pq.read_table(lake / "features" / "feature_drift.parquet").to_pandas()
    pq.write_table(pa.Table.from_pandas(drift.iloc[0:0]), lake / "features" / "feature_drift.parquet")
    html = signed_in("data_engineer").get("/health").text
    assert re.search(r"<td>vcf</td><td>1</td><td>0</td>", html) and re.search(r"<td>ehr</td><td>0</td><td>2</td>", html)
    assert "Drift indeterminate" in html and 'id="drift-plot"' not in html


def test_health_page_lists_failed_steps_as_the_failure_sensor_records_them(signed_in, small_lake):
    from sensors.failures import FAILURES_FILE, failure_rows, record_failures

    lake = small_lake["home"] / "lake"
    rows = failure_rows("run-1", "patient_refresh_job", small_lake["keys"]["lung"], [("radiomic_features", "InvalidDicomError")],
                        "2026-01-02T03:04:05+00:00")
    record_failures(lake / "ops" / FAILURES_FILE, rows)
    html = signed_in("data_engineer").get("/health").text
    assert re.search(r"<td>2026-01-02T03:04:05\+00:00</td><td>patient_refresh_job</td><td>p[0-9a-f]{16}</td>"
                     r"<td>radiomic_features</td><td>InvalidDicomError</td>", html)


def test_an_image_without_a_mask_is_shown_without_an_outline_and_says_so(signed_in, small_lake):
    lake = small_lake["home"] / "lake"
    key = small_lake["keys"]["lung"]
    for table in ("lesion_masks",):
        folder = lake / "features" / table / f"patient_key={key}"
        for part in folder.glob("*.parquet"):
            part.unlink()
        write_partition(lake, "features", table, key, pd.DataFrame(columns=["image_series_uid", "mask_path"]))
    client = signed_in("clinician")
    html = client.get(f"/patients/{key}").text
    assert 'id="no-mask"' in html and 'id="slice-slider"' in html
    assert client.get(f"/patients/{key}/slices/0.png").content.startswith(PNG)
