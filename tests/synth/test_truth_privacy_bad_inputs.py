"""Truth is self-consistent, every planted PHI canary really occurs in the landing zone, bad inputs are bad."""

from __future__ import annotations

import base64
import gzip
import json
import math
import subprocess
import zlib

import pydicom
import pytest
from cyvcf2 import VCF


@pytest.fixture(scope="module")
def canaries(cohort):
    return json.loads((cohort / "truth" / "phi_canaries.json").read_text())


@pytest.fixture(scope="module")
def landing_text(cohort, bad_paths):
    """Searchable text of the landing zone: DICOM headers (pixels skipped), decompressed VCFs, CSV, decoded notes."""
    parts = []
    for path in sorted((cohort / "landing").rglob("*")):
        # Broken files count too (the truncated CT's header is intact), except what cannot be decompressed.
        if not path.is_file() or (path.name.endswith(".vcf.gz") and str(path.relative_to(cohort)) in bad_paths):
            continue
        if path.name.endswith(".tbi"):  # binary index: contig names and offsets only
            continue
        data = path.read_bytes()
        if path.suffix == ".dcm":
            pixel_data_tag = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010): everything before it is header
            parts.append(data[: pixel_data_tag if pixel_data_tag > 0 else len(data)].decode("latin-1"))
        elif path.name.endswith(".vcf.gz"):
            parts.append(gzip.decompress(data).decode())
        elif path.name == "DocumentReference.ndjson":
            for line in data.decode().splitlines():
                parts.append(base64.b64decode(json.loads(line)["content"][0]["attachment"]["data"]).decode())
        else:
            parts.append(data.decode())
    return "\n".join(parts)


def test_every_canary_occurs_in_the_landing_zone(canaries, landing_text, truth):
    assert canaries["patients"].keys() == truth["patients"].keys()
    missing = [s for s in canaries["all"] if s not in landing_text]
    assert missing == []
    assert set(canaries["all"]) == {s for strings in canaries["patients"].values() for s in strings} | set(canaries["uids"])


def test_canaries_cover_each_kind_of_phi(canaries, cohort):
    patients_csv = (cohort / "landing" / "ehr" / "csv" / "patients.csv").read_text()
    for mrn, strings in canaries["patients"].items():
        row = next(line for line in patients_csv.splitlines() if line.startswith(mrn + ","))
        first, last = row.split(",")[7:9]
        ssn = row.split(",")[3]
        assert {mrn, f"{first} {last}", f"{last}^{first}", ssn, first, last} <= set(strings)
    study_uids = {s["study_instance_uid"] for p in json.loads((cohort / "truth" / "truth.json").read_text())["patients"].values() for s in p["studies"]}
    assert study_uids <= set(canaries["uids"])


def test_outcome_probability_follows_the_documented_model(truth):
    model = truth["outcome_model"]["coefficients"]
    for patient in truth["patients"].values():
        features = patient["outcome"]["features"]
        logit = model["intercept"] + sum(model[name] * value for name, value in features.items())
        assert patient["outcome"]["probability"] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-9)
        assert features["ecog"] == patient["ecog"]
        assert features["targeted_match"] == float(patient["targeted_match"])
        assert features["stage_iv"] == float(patient["stage"]["group"].startswith("IV"))
        assert features["texture_heterogeneity_centered_at_0.5"] == pytest.approx(patient["texture_heterogeneity"] - 0.5, abs=1e-6)


def test_bad_inputs_really_are_bad(cohort, bad_paths):
    bad = json.loads((cohort / "truth" / "bad_inputs.json").read_text())
    assert len(bad) == 4
    dicoms = [cohort / e["path"] for e in bad if e["path"].endswith(".dcm")]
    assert len(dicoms) == 2
    truncated, not_dicom = dicoms
    with pytest.raises(Exception):
        pydicom.dcmread(truncated).pixel_array
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(not_dicom)
    broken = cohort / next(e["path"] for e in bad if e["path"].endswith(".vcf.gz"))
    assert broken.name.startswith("BROKEN_")
    assert subprocess.run(["bgzip", "-t", str(broken)], capture_output=True).returncode != 0
    with pytest.raises((EOFError, zlib.error, OSError)):
        gzip.decompress(broken.read_bytes())
    assert subprocess.run(["bcftools", "view", "-H", str(broken)], capture_output=True).returncode != 0
    vcf = VCF(str(broken))  # the header block is intact: the sample is an existing patient's MRN
    assert vcf.samples[0] in json.loads((cohort / "truth" / "truth.json").read_text())["patients"]
    with pytest.raises(Exception, match="error parsing variant"):
        for _ in vcf:
            pass
    assert any(entry["path"] == "landing/ehr/csv/conditions.csv" for entry in bad)  # row checked in test_ehr_notes


def test_no_bad_inputs_when_switched_off(tmp_path):
    from radplan.synth import generate_cohort

    summary = generate_cohort(tmp_path, 1, 5, bad_inputs=False)
    assert summary["bad_inputs"] == 0
    assert json.loads((tmp_path / "truth" / "bad_inputs.json").read_text()) == []
    assert not list((tmp_path / "landing" / "genomics").glob("BROKEN_*"))
    for path in (tmp_path / "landing" / "dicom").rglob("*.dcm"):
        pydicom.dcmread(path).pixel_array


def test_truth_gives_the_response_probability_under_every_first_line_option(truth):
    model = truth["outcome_model"]["coefficients"]
    for patient in truth["patients"].values():
        outcome = patient["outcome"]
        given = " + ".join(sorted(d.lower() for d in patient["first_line_therapy"]))
        options = outcome["probability_by_therapy"]
        assert outcome["probability"] == pytest.approx(options[given], rel=1e-12)
        has_driver_option = len(options) == 2
        assert len(options) in (1, 2) and (patient["targeted_match"] <= has_driver_option)
        for regimen, probability in options.items():
            targeted = float(has_driver_option and regimen != _standard_regimen(patient["cancer_type"]))
            logit = model["intercept"] + sum(model[n] * (targeted if n == "targeted_match" else v) for n, v in outcome["features"].items())
            assert probability == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-9)


def _standard_regimen(cancer_type: str) -> str:
    from radplan.synth.cohort import knowledge

    return " + ".join(sorted(knowledge()["cancers"][cancer_type]["standard"]))


def test_patients_with_a_driver_do_not_all_get_the_matched_drug():
    """Therapy varies, so its effect is learnable: over 400 plans, driver patients on standard therapy exist (about 35 %)."""
    from radplan.synth.cohort import draw_patient

    plans = [draw_patient(3, i) for i in range(400)]
    with_option = [p for p in plans if len(p.probability_by_therapy) == 2]
    share_standard = sum(not p.targeted_match for p in with_option) / len(with_option)
    assert len(with_option) > 60 and 0.25 < share_standard < 0.45
    assert all(max(p.probability_by_therapy.values()) > min(p.probability_by_therapy.values()) for p in with_option)
