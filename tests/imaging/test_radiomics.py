"""pyradiomics wrapper against pyradiomics' own brain1 baseline and the IBSI 1 digital phantom."""

from __future__ import annotations

import argparse
import ast
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radplan.errors import RadplanInputError
from radplan.imaging import radiomics_cli
from radplan.imaging.radiomics import PARAMS_DIR, extract_lesion_features, extraction_settings, load_params

# pyradiomics' shape2D baseline needs a single-slice mask that its test harness builds; the
# settings in the CSV do not describe that step, so that column is not reproducible here.
BASELINE_CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm", "shape")
# The 'brain1' shape column predates pyradiomics 3's mesh code: mesh-based features differ
# by < 0.1 % (measured); all other reproducible columns agree to rounding.
MESH_FEATURES = {"SurfaceArea", "MeshVolume", "SurfaceVolumeRatio", "Sphericity"}


@pytest.fixture(scope="module")
def brain1(shared_data):
    folder = shared_data / "radiomics" / "pyradiomics_brain1"
    return (
        sitk.ReadImage(str(folder / "brain1_image.nrrd")),
        sitk.ReadImage(str(folder / "brain1_label.nrrd")),
        folder / "baseline_brain1",
    )


def _baseline_cases(baseline_dir: Path, feature_class: str):
    """(case name, params dict, {featureName: value}) for each column of a baseline CSV."""
    with open(baseline_dir / f"baseline_{feature_class}.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    cases = rows[0][1:]
    by_name = {row[0]: row[1:] for row in rows[1:]}
    for index, case in enumerate(cases):
        params = {
            "setting": ast.literal_eval(by_name["diagnostics_Configuration_Settings"][index]),
            "imageType": ast.literal_eval(by_name["diagnostics_Configuration_EnabledImageTypes"][index]),
            "featureClass": {feature_class: None},
        }
        values = {name: float(v[index]) for name, v in by_name.items() if not name.startswith("diagnostics_")}
        yield case, params, values


def _relative_differences(image, label, baseline_dir, feature_class, only_case=None):
    differences = {}
    for case, params, values in _baseline_cases(baseline_dir, feature_class):
        if only_case and case != only_case:
            continue
        row = extract_lesion_features(image, label, params).iloc[0]
        for name, baseline in values.items():
            value = row[name if name.startswith("original_") else f"original_{feature_class}_{name}"]
            if baseline == 0:
                assert value == 0, (case, name, value)
                differences[(case, name)] = 0.0
            else:
                differences[(case, name)] = abs(1 - value / baseline)
    return differences


@pytest.mark.parametrize("feature_class", ["firstorder", "glcm", "glszm"])
def test_brain1_default_column_matches_baseline(feature_class, brain1):
    image, label, baseline_dir = brain1
    differences = _relative_differences(image, label, baseline_dir, feature_class, only_case="brain1")
    assert differences
    assert max(differences.values()) < 1e-6


@pytest.mark.slow
def test_brain1_every_reproducible_column_matches_baseline(brain1):
    image, label, baseline_dir = brain1
    worst, compared = 0.0, 0
    for feature_class in BASELINE_CLASSES:
        for (case, name), difference in _relative_differences(image, label, baseline_dir, feature_class).items():
            compared += 1
            assert difference < 0.03, (feature_class, case, name, difference)  # pyradiomics' own rule
            if not (feature_class == "shape" and case == "brain1" and name.rsplit("_", 1)[-1] in MESH_FEATURES):
                assert difference < 1e-6, (feature_class, case, name, difference)
            worst = max(worst, difference)
    print(f"brain1 baseline: {compared} values, max relative difference {worst:.3g}")
    assert compared > 600


def _ibsi_reference(shared_data):
    path = shared_data / "radiomics" / "ibsi1_digital_phantom" / "ibsi_1_reference_values_digital_phantom.csv"
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return {row["tag"]: row for row in csv.DictReader(handle)}


def test_ibsi_digital_phantom(shared_data):
    folder = shared_data / "radiomics" / "ibsi1_digital_phantom"
    image = sitk.ReadImage(str(folder / "phantom.nii.gz"))
    mask = sitk.ReadImage(str(folder / "mask.nii.gz"))
    row = extract_lesion_features(image, mask, load_params(PARAMS_DIR / "ibsi_phantom.yaml")).iloc[0]
    n_voxels = int(row["voxel_count"])
    reference = _ibsi_reference(shared_data)
    with open(PARAMS_DIR / "ibsi_phantom_feature_map.csv", newline="") as handle:
        mapping = list(csv.DictReader(handle))
    assert len(mapping) > 90
    for item in mapping:
        expected = float(reference[item["ibsi_tag"]]["reference value"])
        # IBSI values are given to 3 significant digits; tolerance column on top of that.
        allowed = float(reference[item["ibsi_tag"]]["tolerance"] or 0) + 0.5 * 10 ** (math.floor(math.log10(abs(expected))) - 2)
        value = float(row[item["pyradiomics_feature"]])
        if item["relation"] == "plus_3":
            value -= 3.0
        elif item["relation"] == "population_sd":
            value /= math.sqrt((n_voxels - 1) / n_voxels)
        else:
            assert item["relation"] == "equal"
        assert abs(value - expected) <= allowed * 1.01, (item["ibsi_tag"], value, expected)


def test_known_ibsi_differences_really_differ(shared_data):
    """The documented deviations are real: compared directly they fall outside the tolerance."""
    folder = shared_data / "radiomics" / "ibsi1_digital_phantom"
    row = extract_lesion_features(
        sitk.ReadImage(str(folder / "phantom.nii.gz")), sitk.ReadImage(str(folder / "mask.nii.gz")),
        load_params(PARAMS_DIR / "ibsi_phantom.yaml"),
    ).iloc[0]
    reference = _ibsi_reference(shared_data)
    assert abs(row["original_firstorder_Kurtosis"] - float(reference["stat_kurt"]["reference value"])) > 2.9
    assert abs(row["original_shape_MinorAxisLength"] - float(reference["morph_pca_min_axis"]["reference value"])) > 0.06


@pytest.mark.parametrize("modality", ["ct", "mr", "pet", "PT"])
def test_packaged_params_load_and_validate(modality):
    params = load_params(modality)
    assert set(params) == {"setting", "imageType", "featureClass"}
    assert "Original" in params["imageType"]
    assert params["setting"]["resampledPixelSpacing"]


def test_packaged_params_are_ibsi_aligned():
    ct, mr, pet = load_params("ct"), load_params("mr"), load_params("pet")
    assert ct["setting"]["binWidth"] == 25 and ct["setting"]["resegmentRange"] == [-1000, 400]
    assert ct["setting"]["resampledPixelSpacing"] == [1, 1, 1] and ct["setting"]["interpolator"] == "sitkBSpline"
    assert mr["setting"]["binCount"] == 32 and "binWidth" not in mr["setting"]
    assert pet["setting"]["binWidth"] == 0.5


def test_bad_params_are_refused(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("setting: {binWidth: 25}\nfilters: {}\n")
    with pytest.raises(RadplanInputError, match="unknown parameter sections"):
        load_params(unknown)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("setting: {binWidth: -3}\n")
    with pytest.raises(RadplanInputError):
        load_params(invalid)
    with pytest.raises(RadplanInputError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_settings_record_is_stable_and_versioned():
    first, second = extraction_settings(load_params("ct")), extraction_settings(load_params("ct"))
    assert first["params_sha256"] == second["params_sha256"]
    assert first["params_sha256"] != extraction_settings(load_params("mr"))["params_sha256"]
    import radiomics

    assert first["pyradiomics_version"] == radiomics.__version__


def _two_lesion_label_map(label: sitk.Image) -> sitk.Image:
    """brain1's lesion cut in two along its middle slice: labels 1 and 2."""
    array = sitk.GetArrayFromImage(label).astype(np.uint8)
    slices = np.nonzero(array.any(axis=(1, 2)))[0]
    middle = slices[len(slices) // 2]
    array[middle:][array[middle:] == 1] = 2
    split = sitk.GetImageFromArray(array)
    split.CopyInformation(label)
    return split


def test_parallel_equals_serial_with_progress(brain1):
    image, label, _ = brain1
    label_map = _two_lesion_label_map(label)
    params = {"setting": {"binWidth": 25, "label": 1}, "imageType": {"Original": {}}, "featureClass": {"firstorder": None}}
    calls = []
    serial = extract_lesion_features(image, label_map, params)
    parallel = extract_lesion_features(image, label_map, params, n_workers=2, progress=lambda d, t: calls.append((d, t)))
    assert list(parallel["lesion_label"]) == [1, 2]
    assert sorted(calls) == [(1, 2), (2, 2)]
    pd.testing.assert_frame_equal(serial, parallel)
    counts = np.bincount(sitk.GetArrayViewFromImage(label_map).ravel())
    assert list(parallel["voxel_count"]) == [counts[1], counts[2]]
    voxel_ml = np.prod(label_map.GetSpacing()) / 1000
    np.testing.assert_allclose(parallel["volume_ml"], [counts[1] * voxel_ml, counts[2] * voxel_ml])
    assert parallel.attrs["extraction_settings"]["params_sha256"] == parallel["params_sha256"].iloc[0]


def test_mismatched_grid_and_empty_mask_are_refused(brain1):
    image, label, _ = brain1
    params = load_params("mr")
    shifted = sitk.Image(label)
    shifted.SetOrigin([o + 5 for o in label.GetOrigin()])
    with pytest.raises(RadplanInputError, match="same grid"):
        extract_lesion_features(image, shifted, params)
    with pytest.raises(RadplanInputError, match="no lesion"):
        extract_lesion_features(image, label * 0, params)


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="radplan")
    radiomics_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_on_nrrd_files(tmp_path, brain1, shared_data):
    folder = shared_data / "radiomics" / "pyradiomics_brain1"
    params = tmp_path / "params.yaml"
    params.write_text("setting: {binWidth: 25, label: 1}\nimageType: {Original: {}}\nfeatureClass: {firstorder: }\n")
    out = tmp_path / "out" / "features.csv"
    assert _run_cli("radiomics", str(folder / "brain1_image.nrrd"), str(folder / "brain1_label.nrrd"),
                    "--params", str(params), "--out", str(out)) == 0
    table = pd.read_csv(out)
    direct = extract_lesion_features(brain1[0], brain1[1], load_params(params))
    assert table.shape == direct.shape
    np.testing.assert_allclose(table["original_firstorder_Mean"], direct["original_firstorder_Mean"])
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["params_sha256"] == table["params_sha256"].iloc[0]


def test_cli_on_dicom_series_and_rtstruct(tmp_path, sts_dir):
    out = tmp_path / "ct.csv"
    started = time.perf_counter()
    code = _run_cli("radiomics", str(sts_dir / "dicom" / "CT" / "image"), str(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm"),
                    "--params", "ct", "--out", str(out))
    print(f"CLI CT GTV (DICOM load + RTSTRUCT + features): {time.perf_counter() - started:.2f} s")
    assert code == 0
    table = pd.read_csv(out)
    mirp_voxels = int(sitk.GetArrayFromImage(sitk.ReadImage(str(sts_dir / "nifti" / "CT_mask.nii.gz"))).sum())
    assert list(table["voxel_count"]) == [mirp_voxels]
    # Mesh volume (on the 1 mm grid) and voxel volume (on the CT grid) describe the same GTV.
    assert table["original_shape_MeshVolume"].iloc[0] / 1000 == pytest.approx(table["volume_ml"].iloc[0], rel=0.05)


def test_cli_reports_bad_input(tmp_path, shared_data, capsys):
    folder = shared_data / "radiomics" / "pyradiomics_brain1"
    code = _run_cli("radiomics", str(folder / "brain1_image.nrrd"), str(tmp_path / "missing.nrrd"),
                    "--params", "mr", "--out", str(tmp_path / "x.csv"))
    assert code == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_seconds_per_lesion_ct_gtv(sts_dir, series_files):
    from radplan.imaging.masks import mask_from_rtstruct
    from radplan.imaging.volumes import load_series_volume

    files = series_files("CT")
    image = load_series_volume(files)
    mask = mask_from_rtstruct(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm", files)["GTV_Mass_CT"]
    params = load_params("ct")
    extract_lesion_features(image, mask, params)  # warm-up: imports and caches
    started = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        extract_lesion_features(image, mask, params)
    seconds = (time.perf_counter() - started) / repeats
    print(f"CT GTV ({int(sitk.GetArrayViewFromImage(mask).sum())} voxels): {seconds:.2f} s per lesion")
    assert seconds < 60
