"""FHIR bundle, key-slice/attribution images, self-contained HTML report (rendered in Chromium), file exports."""

from __future__ import annotations

import json
import os
import re
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
ATTRIBUTIONS = [{"feature": "rad_original_firstorder_Entropy", "value": 4.2, "contribution": 0.21},
                {"feature": "alt_egfr_sensitizing", "value": True, "contribution": 0.34},
                {"feature": "ecog", "value": 1, "contribution": -0.11},
                {"feature": "pgx_CYP2D6_ordinal", "value": 1.0, "contribution": -0.02}]


def facts():
    return {"patient_key": KEY, "cancer_type": "nsclc", "stage": "IV", "ecog": 1, "age_years": 58.0, "sex": "M",
            "prior_lines_of_therapy": 0, "alt_egfr_sensitizing": True, "alt_egfr_t790m": False,
            "actionable_alterations": ["EGFR L858R"], "current_medications": ["clopidogrel", "omeprazole", "Warfarin Sodium"],
            "pgx_CYP2C19_phenotype": "Poor Metabolizer", "pgx_CYP2C19_diplotype": "*2/*2", "pgx_DPYD_activity_score": 0.5,
            "pgx_DPYD_phenotype": "Poor Metabolizer", "pgx_DPYD_diplotype": "*2A/*13",
            "pgx_VKORC1_phenotype": "-1639 GA", "pgx_VKORC1_diplotype": "rs9923231 reference (C)/rs9923231 variant (T)",
            "pgx_CYP2C9_phenotype": "Normal Metabolizer", "pgx_CYP2C9_diplotype": "*1/*1",
            "has_imaging": True, "has_genomics": True, "has_ehr": True, "lesion_count": 1,
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
    for section in ("summary", "alerts", "therapies", "contributions", "pgx-table", "variant-table", "radiomics-table",
                    "follow-up", "provenance"):
        assert f'id="{section}"' in report_html


def test_report_escapes_content(recommendations, ct_and_mask):
    hostile = recommendations.copy()
    hostile.loc[0, "therapy"] = '<script>alert("x")</script>'
    html = _report(recommendations, ct_and_mask, rows=hostile)
    assert "<script>" not in html and "&lt;script&gt;" in html


class _VisibleText(HTMLParser):
    """The text a reader sees (style/title excluded), including the collapsed provenance."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("style", "title", "script")

    def handle_endtag(self, tag):
        self._skip -= tag in ("style", "title", "script")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _VisibleText()
    parser.feed(html)
    return " ".join(" ".join(parser.parts).split())


# Internal identifiers that must never reach clinician text: feature ids, rule/KB ids, recommendation ids, JSON.
INTERNAL = [r"\b(?:rad|pgx|alt|lab|has)_[A-Za-z0-9_]+", r"\b[a-z]+_[a-z0-9]+_[a-z0-9_]+\b", r"_ordinal\b", r"\bddi_",
            r"\br[0-9a-f]{16}\b", r"[{\[]\s*\"", r"\":\s", r"\bnull\b", r"\bNone\b", r"\bnan\b", r"\bn/a\b"]


def assert_clinician_text(text: str) -> None:
    for pattern in INTERNAL:
        found = re.findall(pattern, text)
        assert not found, (pattern, found[:5])


def test_report_text_has_no_json_and_no_internal_identifiers(report_html):
    text = visible_text(report_html)
    assert_clinician_text(text)
    # the patient key appears only where designed: the header
    assert text.count(KEY) == 1
    assert "Non-small cell lung cancer, stage IV, ECOG 1; key biomarkers: EGFR L858R." in text
    # relevant alerts (clopidogrel is taken), interactions among current medications, provenance as text
    assert "clopidogrel" in text and "Interaction: warfarin with clopidogrel" in text
    assert "Interaction: clopidogrel with omeprazole" in text
    assert "Rule base version" in text and "Interaction knowledge base version" in text


def test_report_pgx_profile_and_vkorc1_genotype(report_html):
    text = visible_text(report_html)
    table = report_html[report_html.index('id="pgx-table"'):report_html.index("</table>", report_html.index('id="pgx-table"'))]
    # VKORC1: its genotype and the CPIC interpretation, never a "phenotype"
    assert "rs9923231 C/T (-1639 G/A)" in table and "increased warfarin sensitivity" in table
    assert "-1639 GA" not in table
    # the warfarin note belongs to VKORC1 (its variant matched), not to a normal CYP2C9
    cyp2c9 = table[table.index("<td>CYP2C9</td>"):table.index("<td>VKORC1</td>")]
    assert "warfarin:" not in cyp2c9 and "Normal Metabolizer" in cyp2c9
    # DPYD poor metabolizer with no fluoropyrimidine in play: profile, not an alert
    assert "*2A/*13" in table and "Would change prescribing of fluorouracil, capecitabine" in table
    alerts = report_html[report_html.index('id="alerts"'):report_html.index('id="therapies"')]
    assert "fluorouracil" not in alerts and "DPYD" not in alerts
    assert "Pharmacogenomic profile" in text


def test_proposed_therapy_shows_estimate_evidence_and_rationale(report_html):
    therapies = visible_text(report_html[report_html.index('id="therapies"'):report_html.index('id="contributions"')])
    assert "osimertinib" in therapies
    assert "66% estimated chance of response (95% interval 50%–79%)" in therapies
    assert "FDA-approved therapy for this biomarker" in therapies


def test_contribution_labels_are_human_names_with_units():
    from radplan.decision.export import feature_label

    assert feature_label("rad_original_shape_Maximum3DDiameter") == "Lesion maximum 3-D diameter (mm)"
    assert feature_label("pgx_CYP2C19_ordinal").startswith("CYP2C19 metabolizer status")
    assert feature_label("pgx_VKORC1_ordinal") == "VKORC1 -1639A alleles (0-2)"
    assert feature_label("lab_creatinine_mg_dl") == "Creatinine (mg/dl)"
    assert feature_label("some_new_internal_feature") == "other model input"
    # every input the response model documents has a name (response_features.json + the feature_matrix contract)
    spec = json.loads((Path(__file__).resolve().parents[2] / "radplan" / "models" / "data" / "response_features.json").read_text())
    from radplan.cohort import RADIOMIC_SUMMARY_FEATURES

    ids = ["age_years", "ecog", "prior_lines_of_therapy", "lab_creatinine_mg_dl", "lab_bilirubin_mg_dl", "lab_alt_u_l",
           "lab_anc_10e9_l", "lab_hemoglobin_g_dl", "lesion_count", "total_lesion_volume_ml", "largest_lesion_volume_ml",
           "pgx_DPYD_activity_score", "stage_ordinal", "n_actionable_alterations", "pdl1_tps_percent", "her2_ihc_score",
           "msi_high", "therapy_targets_driver", "therapy_class", "has_imaging", "has_genomics", "has_ehr", "has_notes",
           *spec["categorical_levels"], *spec["alteration_flags"], *(f"pgx_{g}_ordinal" for g in spec["pgx_genes"]),
           *(f"rad_{f}" for f in RADIOMIC_SUMMARY_FEATURES)]
    assert [i for i in ids if feature_label(i) == "other model input"] == []


def _chromium(common, *args):
    return subprocess.run([*common, *args], check=True, capture_output=True, timeout=120)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed")
def test_report_renders_in_headless_chromium_and_prints_to_pdf(report_html, tmp_path):
    report = tmp_path / f"{KEY}.html"
    report.write_text(report_html, encoding="utf-8")
    artefacts = Path(os.environ.get("RADPLAN_TEST_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    screenshot = artefacts / "decision_report.png"
    pdf = artefacts / "decision_report.pdf"
    common = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    _chromium(common, f"--screenshot={screenshot}", "--window-size=1200,2000", report.as_uri())
    _chromium(common, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", report.as_uri())
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20  # not a blank page
    assert (pixels < 200).mean() > 0.05  # a real share of the page is text, tables and images
    assert pdf.read_bytes().startswith(b"%PDF-") and pdf.stat().st_size > 20_000
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    text = visible_text(dom)
    assert "Decision support, not a diagnosis" in text and "osimertinib" in text
    assert_clinician_text(text)
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
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Patient", "Composition", "CarePlan", "Provenance"]
    html = render_report_html(key, bare, rows, key_slice_png=None, attribution_png=None, variants=None, pgx=None,
                              radiomics_highlights=None)
    text = visible_text(html)
    assert "Decision support, not a diagnosis" in text
    sentence = "No therapy is proposed: no actionable alteration with a guideline-backed targeted therapy for other cancer was found"
    assert sentence in text and "n/a" not in text
    # empty sections are left out
    for section in ("alerts", "pgx-profile", "trials", "imaging", "contributions"):
        assert f'id="{section}"' not in html
    assert_clinician_text(text)


def test_report_shows_selected_columns_of_wide_upstream_tables(recommendations):
    wide = pd.DataFrame([{"CHROM": "chr7", "POS": 55191822, "Hugo_Symbol": "EGFR", "HGVSp_Short": "p.L858R",
                          "Variant_Classification": "Missense_Mutation", "t_vaf": 0.31, **{f"extra_{i}": i for i in range(30)}}])
    html = render_report_html(KEY, facts(), recommendations, key_slice_png=None, attribution_png=None,
                              variants=wide, pgx=None, radiomics_highlights=None)
    table = html[html.index('id="variant-table"'):html.index("</table>", html.index('id="variant-table"'))]
    assert "Gene" in table and "p.L858R" in table and "0.31" in table
    assert "Hugo_Symbol" not in table and "extra_" not in table and "CHROM" not in table


def test_attribution_chart_uses_the_contribution_not_the_feature_value():
    from radplan.decision.export import _attribution_pairs

    attributions = [
        {"feature": "smoking_status", "value": "current", "contribution": -0.036},
        {"feature": "n_actionable_alterations", "value": [], "contribution": 0.02},
    ]
    assert _attribution_pairs(attributions) == [("smoking_status", -0.036), ("n_actionable_alterations", 0.02)]


def test_fhir_composition_carries_the_report_content(recommendations):
    from radplan.decision.export import report_content

    bundle = fhir_bundle(KEY, recommendations, facts())
    composition = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Composition")
    sections = {s["title"]: visible_text(s["text"]["div"]) for s in composition["section"]}
    content = report_content(KEY, facts(), recommendations)
    assert sections["Summary"].startswith(content["summary_line"])
    for therapy in content["therapies"]:
        assert therapy["therapy"] in sections["Proposed therapies"] and therapy["estimate"] in sections["Proposed therapies"]
    for row in content["alerts"] + content["interactions"]:
        assert row["therapy"] in sections["Alerts and interactions"]
    assert "rs9923231 C/T (-1639 G/A)" in sections["Pharmacogenomic profile"]
    assert "Rule base: version" in sections["Provenance"]
    for text in sections.values():
        assert_clinician_text(text)
