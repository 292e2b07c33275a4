"""Lesion masks from DICOM SEG and RTSTRUCT, on the grid of the referenced image series.

SEG (via highdicom): frames are placed by their per-frame ReferencedSOPInstanceUID when
every frame carries one and the SEG has the series' pixel grid (each frame's plane
position, when present, must then match the referenced slice), otherwise by their plane positions (highdicom's volume of the
SEG, resampled nearest-neighbour onto the series grid; exact when the grids coincide).
A SEG that references instances outside the given series, or another frame of
reference, is refused. FRACTIONAL segments are binarised at 0.5.

RTSTRUCT: every CLOSED_PLANAR contour is mapped to continuous pixel indices of its slice
and filled with the even-odd rule; all contours of one ROI on one slice are combined by
XOR, so a contour inside another is a hole and separate contours are separate islands.
Inclusion rule: a pixel belongs to the ROI when its *centre* is inside the polygon;
centres exactly on an edge follow the half-open scanline convention (on a left edge in,
on a right edge out; on a lower edge in, on an upper edge out), so two polygons sharing
an edge never both claim a pixel. POINT and OPEN_PLANAR contours enclose no area and are
ignored. A contour must lie on an image plane (within a quarter of the slice step).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk

from radplan.errors import InvalidDicomError
from radplan.imaging.series import read_instance_header
from radplan.imaging.volumes import SeriesGeometry, resample_mask_to, series_geometry

_CONTOUR_OFF_PLANE_TOLERANCE = 0.25  # fraction of the slice step


def _mask_image(array_zyx: np.ndarray, geometry: SeriesGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    geometry.apply_to(image)
    return image


def _unique_key(label: str, number: int, taken: dict) -> str:
    return label if label not in taken else f"{label}#{number}"


def _frames_reference_instances(seg: pydicom.Dataset) -> bool:
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derivation = frame.get("DerivationImageSequence")
        if not derivation or not derivation[0].get("SourceImageSequence"):
            return False
    return True


def _same_pixel_grid(seg: pydicom.Dataset, geometry: SeriesGeometry) -> bool:
    """Frames have the series' rows, columns and pixel spacing (else they are placed geometrically)."""
    columns, rows, _ = geometry.size
    if (int(seg.Rows), int(seg.Columns)) != (rows, columns):
        return False
    shared = seg.get("SharedFunctionalGroupsSequence")
    measures = shared[0].get("PixelMeasuresSequence") if shared else None
    if not measures or "PixelSpacing" not in measures[0]:
        return True  # per-frame spacing: checked by the plane position test only
    row_spacing, column_spacing = (float(v) for v in measures[0].PixelSpacing)
    return bool(np.allclose([column_spacing, row_spacing], geometry.spacing[:2], rtol=1e-4))


def _check_frame_positions(seg: pydicom.Dataset, geometry: SeriesGeometry, name: str) -> None:
    """Each frame's plane position (when given) must be the origin of the slice it references."""
    direction = np.asarray(geometry.direction).reshape(3, 3)
    slice_index = {sop_uid: k for k, sop_uid in enumerate(geometry.sop_uids)}
    tolerance_mm = 0.1 * min(geometry.spacing)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        plane = frame.get("PlanePositionSequence")
        if not plane:
            continue
        sop_uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        k = slice_index.get(sop_uid)
        if k is None:
            raise InvalidDicomError(f"{name}: a SEG frame references an instance not in the reference series")
        expected = np.asarray(geometry.origin) + k * geometry.spacing[2] * direction[:, 2]
        if np.linalg.norm(np.asarray([float(v) for v in plane[0].ImagePositionPatient]) - expected) > tolerance_mm:
            raise InvalidDicomError(f"{name}: a SEG frame's plane position does not match the slice it references")


def _volume_to_sitk(array_zyx: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Array (slice, row, column) with highdicom's LPS affine -> SimpleITK image."""
    affine = np.asarray(affine, dtype=float)
    axis_vectors = [affine[:3, 2], affine[:3, 1], affine[:3, 0]]  # x=column, y=row, z=slice
    spacing = [float(np.linalg.norm(v)) for v in axis_vectors]
    direction = np.column_stack([v / s for v, s in zip(axis_vectors, spacing)])
    image = sitk.GetImageFromArray(np.asarray(array_zyx).astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin([float(v) for v in affine[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def mask_from_seg(seg_path: Path, reference_series_paths: Sequence[Path]) -> dict[str, sitk.Image]:
    """Segment label -> binary (uint8 0/1) mask on the reference series grid."""
    seg_path = Path(seg_path)
    read_instance_header(seg_path)
    try:
        seg = hd.seg.segread(seg_path)
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise InvalidDicomError(f"{seg_path.name}: not a readable DICOM SEG ({exc})") from exc
    geometry = series_geometry(reference_series_paths)
    if geometry.frame_of_reference_uid and str(seg.get("FrameOfReferenceUID", "")) != geometry.frame_of_reference_uid:
        raise InvalidDicomError(f"{seg_path.name}: SEG frame of reference differs from the reference series")
    series_sop_uids = set(geometry.sop_uids)
    referenced = {str(sop_uid) for _, _, sop_uid in seg.get_source_image_uids()}
    missing = referenced - series_sop_uids
    if missing:
        raise InvalidDicomError(f"{seg_path.name}: SEG references {len(missing)} instance(s) not in the reference series")

    segment_numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    masks: dict[str, sitk.Image] = {}
    if _frames_reference_instances(seg) and _same_pixel_grid(seg, geometry):
        _check_frame_positions(seg, geometry, seg_path.name)
        try:
            # Positions were just checked against the referenced slices, so highdicom's
            # SpatialLocationsPreserved requirement (often absent, e.g. dcmqi) is waived.
            pixels = seg.get_pixels_by_source_instance(
                list(geometry.sop_uids),
                segment_numbers=segment_numbers,
                assert_missing_frames_are_empty=True,
                ignore_spatial_locations=True,
            )  # (slices, rows, columns, segments)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InvalidDicomError(f"{seg_path.name}: SEG frames cannot be placed on the series ({exc})") from exc
        for index, number in enumerate(segment_numbers):
            label = str(seg.get_segment_description(number).segment_label)
            masks[_unique_key(label, number, masks)] = _mask_image(pixels[..., index] >= 0.5, geometry)
        return masks

    reference = geometry.empty_image()
    for number in segment_numbers:
        try:
            volume = seg.get_volume(segment_numbers=[number], combine_segments=True, dtype=np.float32)
        except (ValueError, RuntimeError) as exc:
            raise InvalidDicomError(f"{seg_path.name}: SEG frames do not form a regular volume ({exc})") from exc
        segment_image = _volume_to_sitk(np.asarray(volume.array) >= 0.5, volume.affine)
        label = str(seg.get_segment_description(number).segment_label)
        masks[_unique_key(label, number, masks)] = resample_mask_to(segment_image, reference)
    return masks


def masks_to_seg(
    masks: dict[str, sitk.Image],
    reference_series_paths: Sequence[Path],
    *,
    property_category: hd.sr.CodedConcept | None = None,
    property_type: hd.sr.CodedConcept | None = None,
    series_number: int = 300,
) -> hd.seg.Segmentation:
    """Binary DICOM SEG (one segment per mask, in dict order) referencing the series.

    Every mask must be on the series grid (use ``resample_mask_to`` first). Default coding
    is SNOMED CT 'Morphologically abnormal structure' / 'Lesion'. Save with ``.save_as``.
    """
    from pydicom.sr.codedict import codes

    geometry = series_geometry(reference_series_paths)
    sources = [pydicom.dcmread(path, stop_before_pixels=False) for path in geometry.paths]
    reference = geometry.empty_image()
    planes = []
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(
        name="radplan", version="1", family=codes.cid7162.ArtificialIntelligence
    )
    for number, (label, mask) in enumerate(masks.items(), start=1):
        if mask.GetSize() != reference.GetSize() or not np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-3) \
                or not np.allclose(mask.GetSpacing(), reference.GetSpacing(), rtol=1e-5):
            raise ValueError(f"mask {label!r} is not on the reference series grid")
        planes.append(sitk.GetArrayFromImage(mask) > 0)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=property_category or codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=property_type or codes.SCT.Lesion,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    pixel_array = np.stack(planes, axis=-1).astype(np.uint8)  # (slices, rows, columns, segments)
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="radplan",
        manufacturer_model_name="radplan",
        software_versions="radplan",
        device_serial_number="0",
        omit_empty_frames=False,
        # An empty SpecificCharacterSet (default repertoire) is valid DICOM but not for highdicom.
        specific_character_set=sources[0].get("SpecificCharacterSet") or None,
    )


def _fill_polygon_even_odd(columns_xy: np.ndarray, shape_rows_columns: tuple[int, int]) -> np.ndarray:
    """Pixels (row, column) whose centre lies inside the polygon, even-odd rule, half-open edges."""
    rows, columns = shape_rows_columns
    filled = np.zeros((rows, columns), dtype=bool)
    x, y = columns_xy[:, 0], columns_xy[:, 1]
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    row_first = max(0, int(np.ceil(y.min())))
    row_last = min(rows - 1, int(np.floor(y.max())))
    for row in range(row_first, row_last + 1):
        # Half-open rule: an edge counts for rows with min(y) <= row < max(y).
        crosses = ((y <= row) & (y_next > row)) | ((y_next <= row) & (y > row))
        if not crosses.any():
            continue
        t = (row - y[crosses]) / (y_next[crosses] - y[crosses])
        x_cross = np.sort(x[crosses] + t * (x_next[crosses] - x[crosses]))
        for x_start, x_end in zip(x_cross[0::2], x_cross[1::2]):
            first_column = max(0, int(np.ceil(x_start)))
            last_column = min(columns - 1, int(np.ceil(x_end)) - 1)  # centre == x_end is outside
            if last_column >= first_column:
                filled[row, first_column : last_column + 1] = True
    return filled


def mask_from_rtstruct(rtstruct_path: Path, reference_series_paths: Sequence[Path]) -> dict[str, sitk.Image]:
    """ROI name -> binary (uint8 0/1) mask on the reference series grid (see module docstring)."""
    rtstruct_path = Path(rtstruct_path)
    header = read_instance_header(rtstruct_path)
    if header.modality != "RTSTRUCT":
        raise InvalidDicomError(f"{rtstruct_path.name}: modality {header.modality}, expected RTSTRUCT")
    ds = pydicom.dcmread(rtstruct_path)
    geometry = series_geometry(reference_series_paths)
    columns, rows, n_slices = geometry.size

    roi_names: dict[int, str] = {}
    for roi in ds.get("StructureSetROISequence", []):
        frame_of_reference = str(roi.get("ReferencedFrameOfReferenceUID", "") or "")
        if geometry.frame_of_reference_uid and frame_of_reference and frame_of_reference != geometry.frame_of_reference_uid:
            raise InvalidDicomError(f"{rtstruct_path.name}: ROI {roi.ROINumber} is in another frame of reference than the series")
        roi_names[int(roi.ROINumber)] = str(roi.get("ROIName", "") or f"ROI {roi.ROINumber}")

    masks: dict[str, sitk.Image] = {}
    for roi_contour in ds.get("ROIContourSequence", []):
        roi_number = int(roi_contour.ReferencedROINumber)
        if roi_number not in roi_names:
            raise InvalidDicomError(f"{rtstruct_path.name}: contour for ROI {roi_number} without a StructureSetROI entry")
        volume = np.zeros((n_slices, rows, columns), dtype=bool)
        for contour in roi_contour.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")).upper() != "CLOSED_PLANAR":
                continue
            points = np.asarray([float(v) for v in contour.ContourData], dtype=float).reshape(-1, 3)
            if len(points) < 3:
                continue
            indices = geometry.physical_to_index(points)
            slice_positions = indices[:, 2]
            slice_index = int(round(float(np.mean(slice_positions))))
            if np.any(np.abs(slice_positions - slice_index) > _CONTOUR_OFF_PLANE_TOLERANCE) or not 0 <= slice_index < n_slices:
                raise InvalidDicomError(
                    f"{rtstruct_path.name}: a contour of ROI {roi_number} does not lie on an image plane of the series"
                )
            volume[slice_index] ^= _fill_polygon_even_odd(indices[:, :2], (rows, columns))
        name = roi_names[roi_number]
        masks[_unique_key(name, roi_number, masks)] = _mask_image(volume, geometry)
    return masks


def label_lesions(mask: sitk.Image, min_voxels: int = 10) -> sitk.Image:
    """Connected components (26-connectivity) of a binary mask as labels 1..n, largest first.

    Components smaller than ``min_voxels`` are dropped (label 0).
    """
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    components = sitk.ConnectedComponent(binary, True)
    return sitk.RelabelComponent(components, minimumObjectSize=int(min_voxels), sortByObjectSize=True)


def dice(a: sitk.Image | np.ndarray, b: sitk.Image | np.ndarray) -> float:
    """Dice coefficient of two binary masks on the same grid (nonzero = inside); 1.0 if both empty."""
    array_a = sitk.GetArrayViewFromImage(a) if isinstance(a, sitk.Image) else np.asarray(a)
    array_b = sitk.GetArrayViewFromImage(b) if isinstance(b, sitk.Image) else np.asarray(b)
    if array_a.shape != array_b.shape:
        raise ValueError(f"masks have different shapes {array_a.shape} and {array_b.shape}")
    inside_a, inside_b = array_a != 0, array_b != 0
    total = int(inside_a.sum()) + int(inside_b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(inside_a, inside_b).sum()) / total
