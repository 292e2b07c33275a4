"""DICOM series -> volume against MIRP's NIfTI export, geometry checks, normalisation."""

from __future__ import annotations

import copy
import math
import random
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radplan.errors import InvalidDicomError
from radplan.imaging.volumes import CT_CLIP_RANGE_HU, load_series_volume, normalize_volume, resample_mask_to


@pytest.fixture(scope="module")
def volumes(series_files):
    """Each STS_002 series loaded once for the module (from shuffled file lists)."""
    loaded = {}
    for modality in ("CT", "PET", "MR_T1"):
        files = series_files(modality)
        random.Random(3).shuffle(files)  # order must come from geometry, not from the caller
        loaded[modality] = load_series_volume(files)
    return loaded


@pytest.mark.parametrize("modality", ["CT", "PET", "MR_T1"])
def test_volume_matches_nifti_export(modality, sts_dir, volumes):
    volume = volumes[modality]
    reference = sitk.ReadImage(str(sts_dir / "nifti" / f"{modality}_image.nii.gz"))
    assert volume.GetSize() == reference.GetSize()
    np.testing.assert_allclose(volume.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(volume.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(volume.GetDirection(), reference.GetDirection(), atol=1e-6)
    ours, theirs = sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(reference)
    if modality == "CT":
        assert np.array_equal(ours, theirs)  # HU are integers: exact
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def _copies(tmp_path, files):
    targets = []
    for index, source in enumerate(files):
        target = tmp_path / f"{index:03d}.dcm"
        shutil.copyfile(source, target)
        targets.append(target)
    return targets


def test_missing_slice_is_refused(tmp_path, series_files):
    files = series_files("PET")
    ordered = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    before, after = ordered[19].name, ordered[21].name
    del ordered[20]
    with pytest.raises(InvalidDicomError, match=f"missing slice between {before} and {after}"):
        load_series_volume(ordered)


def test_varying_slice_spacing_is_refused_naming_the_slice(tmp_path, series_files):
    files = _copies(tmp_path, series_files("PET"))
    ordered = sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    moved = pydicom.dcmread(ordered[10])
    step = float(pydicom.dcmread(ordered[11]).ImagePositionPatient[2]) - float(moved.ImagePositionPatient[2])
    moved.ImagePositionPatient = [*moved.ImagePositionPatient[:2], float(moved.ImagePositionPatient[2]) + 0.3 * step]
    moved.save_as(ordered[10])
    with pytest.raises(InvalidDicomError, match=rf"inconsistent slice spacing between .*{ordered[10].name}|"
                                                rf"inconsistent slice spacing between {ordered[10].name}"):
        load_series_volume(files)


def test_mixed_orientation_is_refused(tmp_path, series_files):
    files = _copies(tmp_path, series_files("PET"))
    ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]
    ds.save_as(files[5])
    with pytest.raises(InvalidDicomError, match="orientation"):
        load_series_volume(files)


def test_duplicate_position_is_refused(tmp_path, series_files):
    files = _copies(tmp_path, series_files("PET"))
    first, second = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    second.ImagePositionPatient = first.ImagePositionPatient
    second.save_as(files[1])
    with pytest.raises(InvalidDicomError, match=r"(000\.dcm and 001\.dcm|001\.dcm and 000\.dcm): two slices share the same position"):
        load_series_volume(files)


def test_ct_normalisation_records_settings(series_files, volumes):
    files = series_files("CT")
    image = volumes["CT"]
    normalized, settings = normalize_volume(image, "CT", pydicom.dcmread(files[0], stop_before_pixels=True), spacing_mm=1.0)
    assert normalized.GetSpacing() == (1.0, 1.0, 1.0)
    assert settings["intensity_unit"] == "HU"
    assert settings["interpolator"] == "linear"
    assert settings["original_size"] == list(image.GetSize())
    assert settings["original_spacing_mm"] == pytest.approx(list(image.GetSpacing()), abs=1e-5)
    array = sitk.GetArrayViewFromImage(normalized)
    assert array.min() >= CT_CLIP_RANGE_HU[0] and array.max() <= CT_CLIP_RANGE_HU[1]
    # Same physical extent: size x spacing preserved within one output voxel.
    for old_n, old_s, new_n in zip(image.GetSize(), image.GetSpacing(), normalized.GetSize()):
        assert abs(old_n * old_s - new_n) <= 1.0


def test_pet_gml_passes_through(series_files, volumes):
    files = series_files("PET")
    image = volumes["PET"]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    normalized, settings = normalize_volume(image, "PT", header, spacing_mm=tuple(image.GetSpacing()))
    assert settings["intensity_unit"] == "SUVbw"
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(normalized), sitk.GetArrayViewFromImage(image), atol=1e-5)


def _as_bqml(header: pydicom.Dataset, decay_correction: str) -> pydicom.Dataset:
    forged = copy.deepcopy(header)
    forged.Units = "BQML"
    forged.DecayCorrection = decay_correction
    return forged


def test_pet_bqml_admin_decay_correction(series_files, volumes):
    files = series_files("PET")
    image = volumes["PET"]
    header = _as_bqml(pydicom.dcmread(files[0], stop_before_pixels=True), "ADMIN")
    normalized, settings = normalize_volume(image, "PT", header, spacing_mm=tuple(image.GetSpacing()))
    weight_g = float(header.PatientWeight) * 1000
    dose_bq = float(header.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose)
    np.testing.assert_allclose(
        sitk.GetArrayViewFromImage(normalized), sitk.GetArrayViewFromImage(image) * weight_g / dose_bq, rtol=1e-5, atol=1e-9
    )
    assert settings["normalization"] == "Bq/ml to SUVbw"


def test_pet_bqml_start_decay_correction_decays_the_dose(series_files, volumes):
    files = series_files("PET")
    image = volumes["PET"]
    header = _as_bqml(pydicom.dcmread(files[0], stop_before_pixels=True), "START")
    radiopharmaceutical = header.RadiopharmaceuticalInformationSequence[0]
    radiopharmaceutical.RadiopharmaceuticalStartDateTime = f"{header.SeriesDate}120000"
    header.SeriesTime = "135000"  # 110 minutes after injection
    _, settings = normalize_volume(image, "PT", header, spacing_mm=5.0)
    half_life = float(radiopharmaceutical.RadionuclideHalfLife)
    expected_dose = float(radiopharmaceutical.RadionuclideTotalDose) * 0.5 ** (110 * 60 / half_life)
    assert settings["injection_to_scan_seconds"] == 110 * 60
    assert settings["suv_factor"] == pytest.approx(float(header.PatientWeight) * 1000 / expected_dose, rel=1e-9)
    assert not any("date" in key.lower() for key in settings)  # no dates in metadata


def test_pet_without_suv_inputs_is_refused(series_files, volumes):
    files = series_files("PET")
    image = volumes["PET"]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    counts = copy.deepcopy(header)
    counts.Units = "CNTS"
    with pytest.raises(InvalidDicomError, match="CNTS"):
        normalize_volume(image, "PT", counts)
    no_weight = _as_bqml(header, "START")
    del no_weight.PatientWeight
    with pytest.raises(InvalidDicomError, match="PatientWeight"):
        normalize_volume(image, "PT", no_weight)


def test_mr_zscore_over_foreground(series_files, volumes):
    files = series_files("MR_T1")
    image = volumes["MR_T1"]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    # Output spacing = input spacing: the linear resampling is then the identity.
    normalized, settings = normalize_volume(image, "MR", header, spacing_mm=tuple(image.GetSpacing()))
    original = sitk.GetArrayFromImage(image).astype(float)
    result = sitk.GetArrayFromImage(normalized).astype(float)
    foreground = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1)).astype(bool)
    assert 0 < foreground.sum() < foreground.size
    # Linear and increasing in the original intensities, mean 0 / SD 1 over the foreground.
    slope, intercept = np.polyfit(original.ravel(), result.ravel(), 1)
    assert slope > 0
    np.testing.assert_allclose(result, slope * original + intercept, atol=1e-3)
    assert result[foreground].mean() == pytest.approx(0, abs=1e-3)
    assert result[foreground].std() == pytest.approx(1, abs=1e-3)
    assert settings["intensity_unit"] == "z-score"
    assert settings["foreground_voxels"] == int(foreground.sum())


def test_unknown_modality_is_refused(series_files, volumes):
    files = series_files("PET")
    with pytest.raises(InvalidDicomError, match="modality"):
        normalize_volume(volumes["PET"], "US", pydicom.dcmread(files[0], stop_before_pixels=True))


def test_mask_resampled_to_normalized_grid_keeps_volume(sts_dir, series_files, volumes):
    files = series_files("CT")
    image = volumes["CT"]
    normalized, _ = normalize_volume(image, "CT", pydicom.dcmread(files[0], stop_before_pixels=True), spacing_mm=1.0)
    mask = sitk.ReadImage(str(sts_dir / "nifti" / "CT_mask.nii.gz"))
    on_grid = resample_mask_to(mask, normalized)
    assert on_grid.GetSize() == normalized.GetSize()
    original_ml = sitk.GetArrayViewFromImage(mask).sum() * math.prod(mask.GetSpacing()) / 1000
    resampled_ml = sitk.GetArrayViewFromImage(on_grid).sum() * math.prod(on_grid.GetSpacing()) / 1000
    assert resampled_ml == pytest.approx(original_ml, rel=0.03)
    assert set(np.unique(sitk.GetArrayViewFromImage(on_grid))) == {0, 1}


def test_sheared_stack_is_refused(tmp_path, series_files):
    files = _copies(tmp_path, series_files("PET"))
    ds = pydicom.dcmread(files[10])
    position = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [position[0] + 3.0, position[1], position[2]]  # as with gantry tilt
    ds.save_as(files[10])
    with pytest.raises(InvalidDicomError, match="not aligned"):
        load_series_volume(files)
