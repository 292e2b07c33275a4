"""Every SEG variant highdicom writes, read back onto the real STS_002 CT series.

Each SEG is written by highdicom inside the test from the real CT slices; the segment content is
MIRP's rasterisation of the GTV (../shared/data, independent of radplan), so the expected mask of
every variant is known without radplan's code.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from scipy import ndimage

from radplan.errors import InvalidDicomError
from radplan.imaging import radiomics_cli
from radplan.imaging.masks import mask_from_seg, masks_to_seg
from radplan.imaging.volumes import series_geometry

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # highdicom/pydicom on the sample's header values


@pytest.fixture(scope="module")
def ct(series_files):
    geometry = series_geometry(series_files("CT"))
    return geometry, [pydicom.dcmread(path) for path in geometry.paths]


@pytest.fixture(scope="module")
def gtv(sts_dir, ct):
    """MIRP's GTV mask, (slice, row, column) in the series' geometric slice order."""
    geometry, _ = ct
    image = sitk.ReadImage(str(sts_dir / "nifti" / "CT_mask.nii.gz"))
    assert image.GetSize() == geometry.size
    np.testing.assert_allclose(image.GetOrigin(), geometry.origin, atol=1e-3)
    return sitk.GetArrayFromImage(image).astype(bool)


def _description(number: int, label: str) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def _write(tmp_path, sources, pixel_array, kind="BINARY", labels=("GTV",), name="seg.dcm", **kwargs):
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel_array, segmentation_type=kind,
        segment_descriptions=[_description(n, label) for n, label in enumerate(labels, start=1)],
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1", **kwargs,
    )
    path = tmp_path / name
    seg.save_as(path)
    return path


def _read(path, ct, **kwargs):
    geometry, _ = ct
    return {label: sitk.GetArrayFromImage(mask).astype(bool) for label, mask in mask_from_seg(path, geometry.paths, **kwargs).items()}


def _box(shape, slices, rows, columns):
    box = np.zeros(shape, bool)
    box[slices, rows, columns] = True
    return box


def test_binary_sparse_frames_cover_the_whole_gtv(tmp_path, ct, gtv):
    geometry, datasets = ct
    path = _write(tmp_path, datasets, gtv[..., None].astype(np.uint8))  # omit_empty_frames: GTV slices only
    assert int(pydicom.dcmread(path).NumberOfFrames) == int(gtv.any(axis=(1, 2)).sum()) < len(datasets)
    masks = _read(path, ct)
    assert list(masks) == ["GTV"]
    assert np.array_equal(masks["GTV"], gtv)


def test_reordered_non_contiguous_subset_of_source_slices(tmp_path, ct, gtv):
    _, datasets = ct
    chosen = [30, 12, 25, 18, 20, 27]  # out of order, with gaps; slice 12 has no GTV (no frame)
    path = _write(tmp_path, [datasets[k] for k in chosen], gtv[chosen][..., None].astype(np.uint8))
    expected = np.zeros_like(gtv)
    expected[chosen] = gtv[chosen]
    masks = _read(path, ct)
    assert np.array_equal(masks["GTV"], expected)
    assert expected.any() and not np.array_equal(expected, gtv)


def test_reference_paths_in_any_order(tmp_path, ct, gtv):
    geometry, datasets = ct
    path = _write(tmp_path, datasets[::-1], gtv[::-1][..., None].astype(np.uint8))
    shuffled = list(geometry.paths)
    random.Random(3).shuffle(shuffled)
    masks = {label: sitk.GetArrayFromImage(mask).astype(bool) for label, mask in mask_from_seg(path, shuffled).items()}
    assert np.array_equal(masks["GTV"], gtv)


def test_fractional_threshold_is_configurable(tmp_path, ct, gtv):
    _, datasets = ct
    rim = ndimage.binary_dilation(gtv, iterations=2) & ~gtv
    fractions = np.where(gtv, 0.7, np.where(rim, 0.3, 0.0)).astype(np.float32)
    path = _write(tmp_path, datasets, fractions[..., None], kind="FRACTIONAL")
    assert np.array_equal(_read(path, ct)["GTV"], gtv)  # default threshold 0.5
    assert np.array_equal(_read(path, ct, fractional_threshold=0.2)["GTV"], gtv | rim)
    assert not _read(path, ct, fractional_threshold=0.9)["GTV"].any()


def test_overlapping_segments(tmp_path, ct, gtv):
    _, datasets = ct
    box = _box(gtv.shape, slice(20, 26), slice(60, 90), slice(60, 90))
    assert (box & gtv).any() and (box & ~gtv).any()
    pixels = np.stack([gtv, box], axis=-1).astype(np.uint8)
    masks = _read(_write(tmp_path, datasets, pixels, labels=("GTV", "box")), ct)
    assert np.array_equal(masks["GTV"], gtv) and np.array_equal(masks["box"], box)


def test_labelmap(tmp_path, ct, gtv):
    _, datasets = ct
    box = _box(gtv.shape, slice(20, 26), slice(60, 90), slice(60, 90))
    labels = np.where(box, 2, np.where(gtv, 1, 0)).astype(np.uint8)
    path = _write(tmp_path, datasets, labels, kind="LABELMAP", labels=("GTV", "box"))
    assert pydicom.dcmread(path).SegmentationType == "LABELMAP"
    masks = _read(path, ct)
    assert np.array_equal(masks["GTV"], gtv & ~box) and np.array_equal(masks["box"], box)


def test_multi_series_seg(tmp_path, ct, gtv, series_files):
    """A SEG that also references the PET series (same frame of reference) reads onto the CT."""
    _, datasets = ct
    pet = [pydicom.dcmread(path) for path in series_files("PET")]
    assert pet[0].FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    path = _write(tmp_path, datasets, gtv[..., None].astype(np.uint8), further_source_images=pet)
    written = pydicom.dcmread(path)
    series_uids = {str(item.SeriesInstanceUID) for item in written.ReferencedSeriesSequence}
    for study in written.get("StudiesContainingOtherReferencedInstancesSequence", []):
        series_uids |= {str(item.SeriesInstanceUID) for item in study.ReferencedSeriesSequence}
    assert str(pet[0].SeriesInstanceUID) in series_uids
    assert np.array_equal(_read(path, ct)["GTV"], gtv)


def test_dcmqi_seg_still_reads(liver_dir):
    liver_ct = sorted((liver_dir / "ct").glob("*.dcm"))
    masks = mask_from_seg(liver_dir / "liver_seg.dcm", liver_ct)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(liver_dir / "liver_seg.nrrd")))
    assert np.array_equal(sitk.GetArrayFromImage(masks["Liver"]), reference)


def test_other_frame_of_reference_is_refused_naming_the_file(tmp_path, ct, gtv):
    _, datasets = ct
    ds = pydicom.dcmread(_write(tmp_path, datasets, gtv[..., None].astype(np.uint8)))
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.save_as(tmp_path / "other_for.dcm")
    with pytest.raises(InvalidDicomError, match=r"other_for\.dcm: SEG frame of reference differs"):
        _read(tmp_path / "other_for.dcm", ct)


def test_seg_without_frames_is_refused_naming_the_file(tmp_path, ct, gtv):
    _, datasets = ct
    ds = pydicom.dcmread(_write(tmp_path, datasets, gtv[..., None].astype(np.uint8)))
    del ds.PixelData
    ds.NumberOfFrames = 0
    ds.PerFrameFunctionalGroupsSequence = []
    ds.save_as(tmp_path / "no_frames.dcm")
    with pytest.raises(InvalidDicomError, match=r"no_frames\.dcm: SEG has no segment frames"):
        _read(tmp_path / "no_frames.dcm", ct)


def test_frame_off_the_series_grid_is_refused(tmp_path, ct, gtv):
    _, datasets = ct
    ds = pydicom.dcmread(_write(tmp_path, datasets, gtv[..., None].astype(np.uint8)))
    position = ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) for v in position.ImagePositionPatient[:2]] + [float(position.ImagePositionPatient[2]) + 1.1]
    ds.save_as(tmp_path / "between_slices.dcm")
    with pytest.raises(InvalidDicomError, match=r"between_slices\.dcm: frame 3 does not lie on the pixel grid"):
        _read(tmp_path / "between_slices.dcm", ct)


def _dciodvfy_errors(path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed (make system-deps)")
def test_written_seg_passes_dciodvfy_and_reads_back(tmp_path, liver_dir):
    liver_ct = sorted((liver_dir / "ct").glob("*.dcm"))
    liver = mask_from_seg(liver_dir / "liver_seg.dcm", liver_ct)
    path = tmp_path / "written.dcm"
    masks_to_seg(liver, liver_ct).save_as(path)
    assert _dciodvfy_errors(path) == []
    assert hd.seg.segread(path).segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    back = mask_from_seg(path, liver_ct)
    assert np.array_equal(sitk.GetArrayFromImage(back["Liver"]), sitk.GetArrayFromImage(liver["Liver"]))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools dciodvfy not installed (make system-deps)")
def test_written_seg_adds_no_dciodvfy_error_to_its_source(tmp_path, ct, gtv):
    """STS_002's CT carries an over-long StudyID (an error in the input); the SEG copies it and adds none."""
    geometry, _ = ct
    mask = sitk.GetImageFromArray(gtv.astype(np.uint8))
    geometry.apply_to(mask)
    path = tmp_path / "written.dcm"
    masks_to_seg({"GTV": mask}, geometry.paths).save_as(path)
    assert set(_dciodvfy_errors(path)) <= set(_dciodvfy_errors(geometry.paths[0]))
    assert np.array_equal(_read(path, ct)["GTV"], gtv)


def test_seg_on_a_coarser_pixel_grid_is_resampled_onto_the_series(tmp_path, ct, gtv):
    """Frames at twice the pixel spacing (block centres as positions): nearest neighbour gives back the blocks."""
    geometry, datasets = ct
    coarse = gtv[:, ::2, ::2]
    direction = np.asarray(geometry.direction).reshape(3, 3)
    column_step, row_step = geometry.spacing[0], geometry.spacing[1]
    positions = [
        hd.PlanePositionSequence(
            hd.CoordinateSystemNames.PATIENT,
            np.asarray([float(v) for v in ds.ImagePositionPatient]) + 0.5 * column_step * direction[:, 0] + 0.5 * row_step * direction[:, 1],
        )
        for ds in datasets
    ]
    path = _write(
        tmp_path, datasets, coarse[..., None].astype(np.uint8),
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=[2 * row_step, 2 * column_step],
                                                slice_thickness=float(datasets[0].SliceThickness)),
        plane_orientation=hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in datasets[0].ImageOrientationPatient]),
        plane_positions=positions,
    )
    expected = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)[:, : gtv.shape[1], : gtv.shape[2]]
    assert np.array_equal(_read(path, ct)["GTV"], expected)


def test_radiomics_cli_reads_a_fractional_seg_with_its_threshold(tmp_path, ct, gtv, sts_dir):
    _, datasets = ct
    rim = ndimage.binary_dilation(gtv, iterations=2) & ~gtv
    path = _write(tmp_path, datasets, np.where(gtv, 0.7, np.where(rim, 0.3, 0.0)).astype(np.float32)[..., None], kind="FRACTIONAL")
    params = tmp_path / "params.yaml"
    params.write_text("setting: {binWidth: 25, label: 1}\nimageType: {Original: {}}\nfeatureClass: {firstorder: }\n")
    counts = {}
    for threshold in ("0.5", "0.2"):
        parser = argparse.ArgumentParser(prog="radplan")
        radiomics_cli.register(parser.add_subparsers(dest="command", required=True))
        out = tmp_path / f"features_{threshold}.csv"
        args = parser.parse_args(["radiomics", str(sts_dir / "dicom" / "CT" / "image"), str(path), "--params", str(params),
                                  "--out", str(out), "--seg-fractional-threshold", threshold])
        assert args.func(args) == 0
        counts[threshold] = int(pd.read_csv(out)["voxel_count"].iloc[0])
    assert counts == {"0.5": int(gtv.sum()), "0.2": int((gtv | rim).sum())}
