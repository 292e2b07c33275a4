"""SEG and RTSTRUCT masks against independent references (dcmqi label map, MIRP masks)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from radplan.errors import InvalidDicomError
from radplan.imaging.masks import (
    _fill_polygon_even_odd,
    dice,
    label_lesions,
    mask_from_rtstruct,
    mask_from_seg,
    masks_to_seg,
)
from radplan.imaging.volumes import resample_mask_to


@pytest.fixture(scope="module")
def liver_ct(liver_dir):
    return sorted((liver_dir / "ct").glob("*.dcm"))


@pytest.fixture(scope="module")
def liver_mask(liver_dir, liver_ct):
    masks = mask_from_seg(liver_dir / "liver_seg.dcm", liver_ct)
    assert list(masks) == ["Liver"]
    return masks["Liver"]


def test_seg_equals_source_label_map(liver_dir, liver_mask):
    reference = sitk.ReadImage(str(liver_dir / "liver_seg.nrrd"))
    # Same grid (within float precision of the NRRD header) ...
    assert liver_mask.GetSize() == reference.GetSize()
    np.testing.assert_allclose(liver_mask.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(liver_mask.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(liver_mask.GetDirection(), reference.GetDirection(), atol=1e-6)
    # ... and identical voxels, both as arrays and after placing the NRRD on our grid.
    ours = sitk.GetArrayFromImage(liver_mask)
    assert np.array_equal(ours, sitk.GetArrayFromImage(reference))
    assert np.array_equal(ours, sitk.GetArrayFromImage(resample_mask_to(reference, liver_mask)))


def test_mask_to_seg_to_mask_is_lossless(tmp_path, liver_ct, liver_mask):
    seg = masks_to_seg({"Liver": liver_mask}, liver_ct)
    target = tmp_path / "roundtrip_seg.dcm"
    seg.save_as(target)
    back = mask_from_seg(target, liver_ct)
    assert np.array_equal(sitk.GetArrayFromImage(back["Liver"]), sitk.GetArrayFromImage(liver_mask))
    assert pydicom.dcmread(target).SegmentSequence[0].SegmentLabel == "Liver"


def test_seg_referencing_instances_outside_the_series_is_refused(liver_dir, liver_ct):
    with pytest.raises(InvalidDicomError, match="not in the reference series"):
        mask_from_seg(liver_dir / "liver_seg.dcm", liver_ct[:2])


def test_seg_frame_placed_by_plane_position_when_references_are_absent(tmp_path, liver_dir, liver_ct, liver_mask):
    ds = pydicom.dcmread(liver_dir / "liver_seg.dcm")
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    target = tmp_path / "no_frame_refs.dcm"
    ds.save_as(target)
    masks = mask_from_seg(target, liver_ct)
    assert np.array_equal(sitk.GetArrayFromImage(masks["Liver"]), sitk.GetArrayFromImage(liver_mask))


@pytest.mark.parametrize("modality, min_dice", [("CT", 0.95), ("PET", 0.9), ("MR_T1", 0.9)])
def test_rtstruct_matches_mirp_rasterisation(modality, min_dice, sts_dir, series_files):
    masks = mask_from_rtstruct(sts_dir / "dicom" / modality / "mask" / "RS.dcm", series_files(modality))
    assert list(masks) == [f"GTV_Mass_{modality}"]
    ours = masks[f"GTV_Mass_{modality}"]
    reference = sitk.ReadImage(str(sts_dir / "nifti" / f"{modality}_mask.nii.gz"))
    assert ours.GetSize() == reference.GetSize()
    np.testing.assert_allclose(ours.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    score = dice(ours, sitk.GetArrayFromImage(reference))
    print(f"{modality}: Dice vs MIRP = {score:.6f}")
    assert score >= min_dice


def test_rtstruct_in_other_frame_of_reference_is_refused(tmp_path, sts_dir, series_files):
    ds = pydicom.dcmread(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm")
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    target = tmp_path / "RS.dcm"
    ds.save_as(target)
    with pytest.raises(InvalidDicomError, match="frame of reference"):
        mask_from_rtstruct(target, series_files("CT"))


def test_polygon_fill_pixel_centre_rule():
    # Square with edges between pixel centres: centres 2..4 are inside.
    square = np.array([[1.5, 1.5], [4.5, 1.5], [4.5, 4.5], [1.5, 4.5]])
    filled = _fill_polygon_even_odd(square, (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[2:5, 2:5] = True
    assert np.array_equal(filled, expected)
    # Edges through pixel centres: half-open, the lower/left edge is in, the upper/right out.
    on_centres = np.array([[1.0, 1.0], [4.0, 1.0], [4.0, 4.0], [1.0, 4.0]])
    filled = _fill_polygon_even_odd(on_centres, (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[1:4, 1:4] = True
    assert np.array_equal(filled, expected)
    # Two squares sharing an edge claim every pixel exactly once.
    left = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 5.0], [0.0, 5.0]])
    right = np.array([[3.0, 0.0], [6.0, 0.0], [6.0, 5.0], [3.0, 5.0]])
    overlap = _fill_polygon_even_odd(left, (8, 8)) & _fill_polygon_even_odd(right, (8, 8))
    assert not overlap.any()


def test_rtstruct_hole_by_nested_contour(tmp_path, sts_dir, series_files):
    """A second contour inside the first on the same slice is a hole (XOR)."""
    ds = pydicom.dcmread(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm")
    contours = ds.ROIContourSequence[0].ContourSequence
    outer = contours[len(contours) // 2]
    points = np.asarray([float(v) for v in outer.ContourData]).reshape(-1, 3)
    centre = points.mean(axis=0)
    hole_points = centre + (points - centre) * [0.3, 0.3, 0]
    hole = pydicom.Dataset()
    hole.ContourGeometricType = "CLOSED_PLANAR"
    hole.NumberOfContourPoints = len(hole_points)
    hole.ContourData = [f"{v:.3f}" for v in hole_points.ravel()]
    contours.append(hole)
    target = tmp_path / "RS_hole.dcm"
    ds.save_as(target)
    files = series_files("CT")
    with_hole = sitk.GetArrayFromImage(mask_from_rtstruct(target, files)["GTV_Mass_CT"])
    without = sitk.GetArrayFromImage(mask_from_rtstruct(sts_dir / "dicom" / "CT" / "mask" / "RS.dcm", files)["GTV_Mass_CT"])
    removed = without.astype(bool) & ~with_hole.astype(bool)
    assert removed.sum() > 0
    assert not (with_hole.astype(bool) & ~without.astype(bool)).any()
    assert len(np.unique(np.nonzero(removed)[0])) == 1  # only that slice changed


def test_label_lesions_sorts_by_size_and_drops_small():
    array = np.zeros((20, 20, 20), np.uint8)
    array[1:3, 1:3, 1:3] = 1  # 8 voxels: dropped at min_voxels=10
    array[5:8, 5:8, 5:8] = 1  # 27 voxels
    array[10:15, 10:15, 10:15] = 1  # 125 voxels
    array[15, 15, 15] = 1  # touches the big cube at a corner: 26-connected, same lesion
    labels = sitk.GetArrayFromImage(label_lesions(sitk.GetImageFromArray(array), min_voxels=10))
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels == 1).sum() == 126 and (labels == 2).sum() == 27
    assert labels[1, 1, 1] == 0


def test_dice():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    assert dice(a, b) == 1.0
    a[0, :2] = 1
    b[0, 1:3] = 1
    assert dice(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dice(a, np.zeros((3, 3)))
