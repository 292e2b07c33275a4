"""FHIR bundle, key-slice/attribution images, self-contained HTML report (rendered in Chromium), file exports."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from fhir.resources.R4B.bundle import Bundle

from radplan.decision.export import (
    InvalidExportInputError,
    attribution_png,
    fhir_bundle,
    key_slice_png,
    largest_lesion_slice,
    render_report_html,
    write_exports,
)
from radplan.decision.recommend import recommend_for_patient

KEY = "p00112233aabbccdd"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")
ATTRIBUTIONS = [{"feature": "rad_original_firstorder_Entropy", "attribution": 0.21},
                {"feature": "alt_egfr_sensitizing", "attribution": 0.34}, {"feature": "ecog", "attribution": -0.11}]


def facts():
    return {"patient_key": KEY, "cancer_type": "nsclc", "stage": "IV", "ecog": 1, "age_years": 58.0, "sex": "M",
            "prior_lines_of_therapy": 0, "alt_egfr_sensitizing": True, "alt_egfr_t790m": False,
            "actionable_alterations": ["EGFR L858R"], "current_medications": ["clopidogrel", "omeprazole"],
            "pgx_CYP2C19_phenotype": "Poor Metabolizer", "pgx_DPYD_activity_score": 0.5, "lesion_count": 1,
            "total_lesion_volume_ml": 17.1, "stratum": 1}


@pytest.fixture(scope="module")
def recommendations(rule_base, trial_catalog):
    predictions = pd.DataFrame([{"patient_key": KEY, "probability": 0.66, "ci_low": 0.5, "ci_high": 0.79,
                                 "top_attributions": json.dumps(ATTRIBUTIONS), "model_name": "radplan-response",
                                 "model_version": "2"}])
    return recommend_for_patient(facts(), rule_base, model_predictions=predictions, trials=trial_catalog,
                                 versions={"knowledge_base_version": "kb-1"})


@pytest.fixture(scope="module")
def ct_and_mask(shared_data):
    folder = shared_data / "imaging" / "ibsi_sts_002" / "nifti"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "CT_image.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "CT_mask.nii.gz")))
    return image, mask


# ----------------------------------------------------------------------------- FHIR


def test_fhir_bundle_validates_and_round_trips(recommendations):
    bundle = fhir_bundle(KEY, recommendations, facts())
    parsed = Bundle.model_validate_json(json.dumps(bundle))
    assert json.loads(parsed.model_dump_json()) == bundle
    assert bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    kinds = [r["resourceType"] for r in resources]
    assert {"Patient", "CarePlan", "RiskAssessment", "DetectedIssue", "Provenance"} <= set(kinds)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    for resource in resources:
        for field in ("subject", "patient"):
            if field in resource:
                assert resource[field]["reference"] in urls


def test_fhir_content_matches_recommendations(recommendations):
    bundle = fhir_bundle(KEY, recommendations, facts())
    by_type: dict[str, list] = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    patient = by_type["Patient"][0]
    assert patient["identifier"][0]["value"] == KEY
    assert not {"name", "birthDate", "address", "telecom"} & set(patient)
    activities = by_type["CarePlan"][0]["activity"]
    assert len(activities) == len(recommendations)
    avoid_count = int((recommendations["action"] == "avoid").sum())
    assert sum(a["detail"]["doNotPerform"] for a in activities) == avoid_count > 0
    alerts = recommendations[recommendations["category"].isin(["pgx", "interaction"])]
    assert len(by_type["DetectedIssue"]) == len(alerts)
    assert {d["severity"] for d in by_type["DetectedIssue"]} <= {"high", "moderate", "low"}
    assert by_type["RiskAssessment"][0]["prediction"][0]["probabilityDecimal"] == pytest.approx(0.66)
    cited = " ".join(e["what"]["display"] for e in by_type["Provenance"][0]["entity"])
    for rule_versions in recommendations["rule_versions"]:
        for rule_id, version in json.loads(rule_versions).items():
            assert f"{rule_id} v{version}" in cited


def test_fhir_rejects_non_pseudonymous_keys(recommendations):
    with pytest.raises(InvalidExportInputError):
        fhir_bundle("MRN-12345", recommendations, facts())


# ----------------------------------------------------------------------------- images


def test_largest_lesion_slice_on_real_mask(ct_and_mask):
    _, mask = ct_and_mask
    z = largest_lesion_slice(mask)
    areas = [(mask[i] > 0).sum() for i in range(mask.shape[0])]
    assert areas[z] == max(areas) > 0
    synthetic = np.zeros((5, 8, 8), dtype=np.uint8)
    synthetic[1, 2:4, 2:4] = 1
    synthetic[3, 1:6, 1:6] = 1
    assert largest_lesion_slice(synthetic) == 3


def test_key_slice_png_from_real_ct(ct_and_mask):
    image, mask = ct_and_mask
    png = key_slice_png(image, mask)
    assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    with pytest.raises(InvalidExportInputError):
        key_slice_png(image, np.zeros_like(mask))
    with pytest.raises(InvalidExportInputError):
        key_slice_png(image[0], mask[0])


def test_attribution_png_accepts_json_and_pairs():
    assert attribution_png(json.dumps(ATTRIBUTIONS)).startswith(PNG_MAGIC)
    assert attribution_png([("age_years", 0.1), ("ecog", -0.2)]).startswith(PNG_MAGIC)
    with pytest.raises(InvalidExportInputError):
        attribution_png([])


# ----------------------------------------------------------------------------- HTML


class _Resources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "srcset", "poster", "data")]


def _report(recommendations, ct_and_mask, rows=None):
    image, mask = ct_and_mask
    variants = pd.DataFrame({"gene": ["EGFR"], "hgvsp": ["p.L858R"], "consequence": ["missense_variant"], "vaf": [0.27]})
    pgx = pd.DataFrame({"gene": ["CYP2C19", "DPYD"], "diplotype": ["*2/*2", "*2A/*13"],
                        "phenotype": ["Poor Metabolizer", "Poor Metabolizer"]})
    return render_report_html(KEY, facts(), recommendations if rows is None else rows,
                              key_slice_png=key_slice_png(image, mask), attribution_png=attribution_png(ATTRIBUTIONS),
                              variants=variants, pgx=pgx,
                              radiomics_highlights={"rad_original_shape_Sphericity": 0.74, "rad_original_glcm_Contrast": 12.5})


@pytest.fixture(scope="module")
def report_html(recommendations, ct_and_mask):
    return _report(recommendations, ct_and_mask)


def test_report_is_self_contained(report_html):
    parser = _Resources()
    parser.feed(report_html)
    assert parser.urls and all(url.startswith("data:image/png;base64,") for url in parser.urls)
    assert parser.tags.count("img") == 2
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert "http://" not in report_html and "https://" not in report_html
    assert "Decision support, not a diagnosis" in report_html
    for section in ("summary", "recommendation-table", "variant-table", "pgx-table", "radiomics-table"):
        assert f'id="{section}"' in report_html


def test_report_escapes_content(recommendations, ct_and_mask):
    hostile = recommendations.copy()
    hostile.loc[0, "therapy"] = '<script>alert("x")</script>'
    html = _report(recommendations, ct_and_mask, rows=hostile)
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")
def test_report_renders_in_headless_chromium(report_html, tmp_path):
    report = tmp_path / f"{KEY}.html"
    report.write_text(report_html, encoding="utf-8")
    screenshot = tmp_path / "report.png"
    common = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1200,2000", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20  # not a blank page
    assert (pixels < 200).mean() > 0.05  # a real share of the page is text, tables and images
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert "Decision support, not a diagnosis" in dom
    assert 'id="summary"' in dom and 'id="recommendation-table"' in dom
    assert "osimertinib" in dom
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


# ----------------------------------------------------------------------------- files


def test_write_exports(recommendations, report_html, tmp_path):
    bundle = fhir_bundle(KEY, recommendations, facts())
    summary = write_exports(recommendations, {KEY: bundle}, {KEY: report_html}, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "recommendations.parquet"), recommendations)
    csv = pd.read_csv(tmp_path / "recommendations.csv")
    assert list(csv.columns) == list(recommendations.columns) and len(csv) == len(recommendations)
    dictionary = (tmp_path / "COLUMNS.md").read_text()
    assert all(f"`{column}`" in dictionary for column in recommendations.columns)
    assert json.loads((tmp_path / "fhir" / f"{KEY}.json").read_text())["type"] == "collection"
    assert (tmp_path / "reports" / f"{KEY}.html").read_text() == report_html
    assert summary["recommendation_rows"] == len(recommendations) and summary["patients"] == 1
    assert KEY not in json.dumps(summary)
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_write_exports_rejects_unknown_columns(recommendations, tmp_path):
    with pytest.raises(InvalidExportInputError, match="extra"):
        write_exports(recommendations.assign(mrn="123"), {}, {}, tmp_path)


def test_patient_without_recommendations_still_exports(rule_base):
    key = "p0000000000000001"
    bare = {"patient_key": key, "cancer_type": "other"}
    rows = recommend_for_patient(bare, rule_base, model_predictions=None, trials=[], versions={})
    bundle = fhir_bundle(key, rows, bare)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "CarePlan", "Provenance"]
    html = render_report_html(key, bare, rows, key_slice_png=None, attribution_png=None, variants=None, pgx=None,
                              radiomics_highlights=None)
    assert "Decision support, not a diagnosis" in html and "No rule matched" in html


def test_report_shows_selected_columns_of_wide_upstream_tables(recommendations):
    wide = pd.DataFrame([{"CHROM": "chr7", "POS": 55191822, "Hugo_Symbol": "EGFR", "HGVSp_Short": "p.L858R",
                          "Variant_Classification": "Missense_Mutation", "t_vaf": 0.31, **{f"extra_{i}": i for i in range(30)}}])
    html = render_report_html(KEY, facts(), recommendations, key_slice_png=None, attribution_png=None,
                              variants=wide, pgx=None, radiomics_highlights=None)
    table = html[html.index('id="variant-table"'):html.index("</table>", html.index('id="variant-table"'))]
    assert "Hugo_Symbol" in table and "p.L858R" in table and "0.31" in table
    assert "extra_" not in table and "CHROM" not in table


def test_attribution_chart_uses_the_contribution_not_the_feature_value():
    from radplan.decision.export import _attribution_pairs

    attributions = [
        {"feature": "smoking_status", "value": "current", "contribution": -0.036},
        {"feature": "n_actionable_alterations", "value": [], "contribution": 0.02},
    ]
    assert _attribution_pairs(attributions) == [("smoking_status", -0.036), ("n_actionable_alterations", 0.02)]
