"""IBSI mode: preprocessing steps against the IBSI reference manual, conformance on the IBSI CT phantom.

The CT phantom (CC BY-NC) and its reference values are read from the shared data, never copied.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import SimpleITK as sitk

from radplan.errors import RadplanInputError
from radplan.imaging import radiomics_cli
from radplan.imaging.ibsi import centre_aligned_grid, fixed_bin_width_from, ibsi_settings, interpolate_mask
from radplan.imaging.ibsi_conformance import CONFIGURATIONS, reference_values, run_conformance, tag_for_configuration
from radplan.imaging.radiomics import PARAMS_DIR, extract_lesion_features, extraction_settings, load_params


@pytest.fixture(scope="module")
def ct_phantom_dir(shared_data):
    return shared_data / "radiomics" / "ibsi1_ct_radiomics_phantom"


@pytest.fixture(scope="module")
def conformance(ct_phantom_dir):
    return {result.configuration: result for result in run_conformance(ct_phantom_dir)}


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_ct_phantom_configuration_conforms(conformance, configuration):
    result = conformance[configuration]
    assert len(result.checks) == 101
    failing = [(c.tag, c.value, c.reference, c.tolerance) for c in result.checks if not c.conforms]
    print(result.line(), failing)
    assert result.conforming >= 0.95 * len(result.checks), failing


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_ct_phantom_roi_sizes_match_the_reference_diagnostics(conformance, configuration):
    """Interpolation, partial-volume threshold and re-segmentation give the ROI sizes the IBSI lists."""
    diagnostics = conformance[configuration].diagnostics
    for ours, reference in (("morphology_voxels", "reference_morphology_voxels"), ("intensity_voxels", "reference_intensity_voxels")):
        value, tolerance = diagnostics[reference]
        assert abs(diagnostics[ours] - value) <= tolerance, (configuration, ours, diagnostics)


def test_pyradiomics_mode_does_not_conform_where_ibsi_preprocessing_matters(ct_phantom_dir):
    """Configuration C through pyradiomics' own preprocessing misses features IBSI mode gets right."""
    image = sitk.ReadImage(str(ct_phantom_dir / "phantom.nii.gz"))
    mask = sitk.ReadImage(str(ct_phantom_dir / "mask.nii.gz"))
    params = load_params(PARAMS_DIR / "ibsi_ct_config_c.yaml")
    params.pop("ibsi")
    reference = reference_values(ct_phantom_dir / "ibsi_1_reference_values_config_C.csv")
    value, tolerance = reference["cm_joint_avg_3D_avg"]
    plain = extract_lesion_features(image, sitk.Cast(mask, sitk.sitkUInt8), params, mode="pyradiomics").iloc[0]
    assert abs(plain["original_glcm_JointAverage"] - value) > tolerance  # bins counted from -950, not -1000


def test_centre_aligned_grid_follows_the_manual():
    image = sitk.Image([204, 201, 60], sitk.sitkFloat32)
    image.SetSpacing([0.977, 0.977, 3.0])
    image.SetOrigin([-10.0, 20.0, 5.0])
    size, origin, spacing = centre_aligned_grid(image, (2.0, 2.0, 2.0))
    assert size == [100, 99, 90]  # ceil(n * s / 2): the IBSI phantom's interpolated dimensions
    assert spacing == [2.0, 2.0, 2.0]
    old_centre = np.asarray(image.GetOrigin()) + (np.asarray(image.GetSize()) - 1) * np.asarray(image.GetSpacing()) / 2
    new_centre = np.asarray(origin) + (np.asarray(size) - 1) * 2.0 / 2
    np.testing.assert_allclose(new_centre, old_centre, atol=1e-9)
    size_2d, origin_2d, spacing_2d = centre_aligned_grid(image, (2.0, 2.0, 0))  # 0 keeps the slice axis
    assert size_2d == [100, 99, 60] and spacing_2d[2] == 3.0 and origin_2d[2] == 5.0


def test_mask_partial_volume_threshold():
    """A one-voxel-wide line halved by 2x downsampling keeps exactly the voxels it covers by >= 0.5."""
    mask = sitk.Image([8, 8, 1], sitk.sitkUInt8)
    mask.SetSpacing([1.0, 1.0, 1.0])
    for x in range(8):
        mask[x, 3, 0] = 1  # row 3 of 8
    reference = sitk.Image([4, 4, 1], sitk.sitkFloat64)
    reference.SetSpacing([2.0, 2.0, 1.0])
    reference.SetOrigin([0.5, 0.5, 0.0])  # new voxel centres at 0.5, 2.5, 4.5, 6.5
    kept = sitk.GetArrayFromImage(interpolate_mask(mask, reference, ibsi_settings({"setting": {"resampledPixelSpacing": [2, 2, 0]}})))
    # Row 1 of the new grid (centre y=2.5) gets 0.5 of the line at y=3: kept at threshold 0.5.
    assert kept[0, 1].all() and kept[0, [0, 2, 3]].sum() == 0
    strict = ibsi_settings({"setting": {"resampledPixelSpacing": [2, 2, 0]}, "ibsi": {"partialVolumeThreshold": 0.6}})
    assert not sitk.GetArrayFromImage(interpolate_mask(mask, reference, strict)).any()


def test_fixed_bin_width_counts_from_the_range_lower_bound():
    from radiomics import imageoperations

    values = np.array([[[-940.0, -900.0, -851.0]]])
    mask = np.ones_like(values, dtype=bool)
    settings = {"binWidth": 25, "resegmentRange": [-1000, 400]}
    plain, _ = imageoperations.binImage(values.copy(), mask, **settings)
    assert plain.ravel().tolist() == [1, 3, 4]  # pyradiomics: from -950, the multiple of 25 below the minimum
    with fixed_bin_width_from(-1000.0):
        ibsi, _ = imageoperations.binImage(values.copy(), mask, **settings)
    assert ibsi.ravel().tolist() == [3, 5, 6]  # IBSI: floor((x + 1000) / 25) + 1
    again, _ = imageoperations.binImage(values.copy(), mask, **settings)
    assert again.ravel().tolist() == [1, 3, 4]  # pyradiomics restored after the block


def test_two_d_configurations_compare_with_two_and_a_half_d_tags():
    assert tag_for_configuration("cm_joint_max_3D_avg", "A") == "cm_joint_max_2_5D_avg"
    assert tag_for_configuration("szm_sze_3D", "B") == "szm_sze_2_5D"
    assert tag_for_configuration("szm_sze_3D", "C") == "szm_sze_3D"
    assert tag_for_configuration("morph_volume", "A") == "morph_volume"


def test_mode_and_settings_are_recorded(ct_phantom_dir):
    params = load_params(PARAMS_DIR / "ibsi_ct_config_e.yaml")
    settings = extraction_settings(params, "ibsi")
    assert settings["mode"] == "ibsi"
    record = settings["ibsi_preprocessing"]
    assert record["image_interpolator"] == "sitkBSpline" and record["mask_interpolator"] == "sitkLinear"
    assert record["partial_volume_threshold"] == 0.5 and record["round_intensities"] is True
    assert record["resegment_range"] == [-1000.0, 400.0] and record["outlier_sigma"] == 3.0
    assert settings["params_sha256"] != extraction_settings(params, "pyradiomics")["params_sha256"]
    assert extraction_settings(params)["ibsi_preprocessing"] is None
    with pytest.raises(RadplanInputError, match="mode"):
        extraction_settings(params, "ibsi2")


def test_bad_ibsi_settings_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("setting: {binWidth: 25}\nibsi: {roundIntensity: true}\n")
    with pytest.raises(RadplanInputError, match="unknown ibsi settings"):
        load_params(path)
    path.write_text("setting: {binWidth: 25, resampledPixelSpacing: [1, 1, 1], interpolator: sitkLanczosWindowedSinc}\nibsi: {}\n")
    with pytest.raises(RadplanInputError, match="not supported in IBSI mode"):
        load_params(path)
    path.write_text("setting: {binWidth: 25, normalize: true}\nibsi: {}\n")
    with pytest.raises(RadplanInputError, match="does not normalise"):
        load_params(path)
    path.write_text("setting: {binWidth: 25}\nimageType: {Original: {}, LoG: {sigma: [1.0]}}\nibsi: {}\n")
    with pytest.raises(RadplanInputError, match="original image only"):
        load_params(path)
    with pytest.raises(RadplanInputError, match="original image only"):  # also when the mode is chosen at the call
        extraction_settings({"setting": {"binWidth": 25}, "imageType": {"Wavelet": {}}}, "ibsi")


def test_ibsi_mode_parallel_equals_serial(shared_data):
    folder = shared_data / "radiomics" / "pyradiomics_brain1"
    image = sitk.ReadImage(str(folder / "brain1_image.nrrd"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "brain1_label.nrrd"))).astype(np.uint8)
    slices = np.nonzero(label.any(axis=(1, 2)))[0]
    label[slices[len(slices) // 2]:][label[slices[len(slices) // 2]:] == 1] = 2
    label_map = sitk.GetImageFromArray(label)
    label_map.CopyInformation(image)
    params = {"setting": {"binWidth": 25, "resampledPixelSpacing": [2, 2, 2], "interpolator": "sitkLinear"},
              "imageType": {"Original": {}}, "featureClass": {"firstorder": None, "glcm": None, "shape": None}}
    serial = extract_lesion_features(image, label_map, params, mode="ibsi")
    parallel = extract_lesion_features(image, label_map, params, mode="ibsi", n_workers=2, min_parallel_voxels=0)
    assert list(serial["radiomics_mode"]) == ["ibsi", "ibsi"]
    assert serial["extraction_error"].isna().all()
    assert (serial["ibsi_morphology_voxels"] > 0).all()
    import pandas as pd

    pd.testing.assert_frame_equal(serial, parallel)


def _run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="radplan")
    radiomics_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_conformance_cli_prints_one_line_per_configuration(ct_phantom_dir, capsys):
    assert _run_cli("radiomics-conformance", str(ct_phantom_dir), "--configurations", "AC") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["config A", "config C"]
    for line in lines:
        conforming, total = line.split(": ")[1].split()[0].split("/")
        assert total == "101" and int(conforming) >= 96


def test_conformance_cli_reports_a_missing_folder(tmp_path, capsys):
    assert _run_cli("radiomics-conformance", str(tmp_path / "nowhere")) == 2
    assert "not found" in capsys.readouterr().err
