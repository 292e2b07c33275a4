"""Lesion masks from DICOM SEG and RTSTRUCT, on the grid of the referenced image series.

SEG (decoded by highdicom): every frame is placed on the series grid by its plane position in
the shared frame of reference, never by frame or file order, so sparse frames, gaps, reordered
or subset source slices and multi-series SEGs all land where they belong. BINARY frames are
masks, FRACTIONAL frames are kept where the fraction >= a configurable threshold (0.5 by
default), LABELMAP frames hold segment numbers; overlapping segments give overlapping masks.
A frame without a plane position is placed on the slice it was derived from. Frames on another
pixel grid (other spacing or orientation) are resampled nearest-neighbour onto the series. A SEG
in another frame of reference, without frames, referencing instances of the series that were not
given, or with frames off the series grid is refused naming the file and the reason.

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
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import SimpleITK as sitk

from radplan.errors import InvalidDicomError
from radplan.imaging.series import instance_header_from_dataset, read_dataset, read_instance_header
from radplan.imaging.volumes import SeriesGeometry, resample_mask_to, series_geometry

if TYPE_CHECKING:
    import highdicom as hd
# highdicom is imported by the functions that read or write a SEG: this module is loaded with the Dagster definitions,
# and every run process paid highdicom's import (~0.4 s) before its first step.

_CONTOUR_OFF_PLANE_TOLERANCE = 0.25  # fraction of the slice step


def _mask_image(array_zyx: np.ndarray, geometry: SeriesGeometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx.astype(np.uint8))
    geometry.apply_to(image)
    return image


def _unique_key(label: str, number: int, taken: dict) -> str:
    return label if label not in taken else f"{label}#{number}"


def _functional_group(seg: pydicom.Dataset, frame_index: int, sequence: str) -> pydicom.Dataset | None:
    """First item of a functional group macro for one frame: per-frame when there, else shared."""
    per_frame = seg.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) > frame_index:
        item = per_frame[frame_index].get(sequence)
        if item:
            return item[0]
    shared = seg.get("SharedFunctionalGroupsSequence")
    if shared:
        item = shared[0].get(sequence)
        if item:
            return item[0]
    return None


def _frame_segment_number(seg: pydicom.Dataset, frame_index: int) -> int | None:
    identification = _functional_group(seg, frame_index, "SegmentIdentificationSequence")
    return int(identification.ReferencedSegmentNumber) if identification is not None else None


def _frame_source_uid(seg: pydicom.Dataset, frame_index: int) -> str | None:
    derivation = _functional_group(seg, frame_index, "DerivationImageSequence")
    if derivation is None or not derivation.get("SourceImageSequence"):
        return None
    return str(derivation.SourceImageSequence[0].ReferencedSOPInstanceUID)


def _on_series_pixel_grid(seg: pydicom.Dataset, geometry: SeriesGeometry) -> bool:
    """Every frame has the series' orientation and pixel spacing (then frames are pasted, else resampled)."""
    direction = np.asarray(geometry.direction).reshape(3, 3)
    series_orientation = np.concatenate([direction[:, 0], direction[:, 1]])
    for index in range(int(seg.get("NumberOfFrames", 1) or 1)):
        orientation = _functional_group(seg, index, "PlaneOrientationSequence")
        measures = _functional_group(seg, index, "PixelMeasuresSequence")
        if orientation is None or measures is None or "PixelSpacing" not in measures:
            return False
        if not np.allclose([float(v) for v in orientation.ImageOrientationPatient], series_orientation, atol=1e-4):
            return False
        row_spacing, column_spacing = (float(v) for v in measures.PixelSpacing)
        if not np.allclose([column_spacing, row_spacing], geometry.spacing[:2], rtol=1e-4):
            return False
    return True


def _frame_values(seg: hd.seg.Segmentation, frame_index: int, threshold: float) -> np.ndarray:
    """One frame as booleans (BINARY), thresholded fractions (FRACTIONAL) or segment numbers (LABELMAP)."""
    import highdicom as hd

    stored = np.asarray(seg.get_stored_frame(frame_index + 1))
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        return stored.astype(np.float64) / float(seg.MaximumFractionalValue) >= threshold
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP:
        return stored
    return stored > 0


def _place_frames(
    seg: hd.seg.Segmentation, geometry: SeriesGeometry, segment_numbers: list[int], other_series_sources: set[str],
    threshold: float, name: str,
) -> dict[int, np.ndarray]:
    """Segment number -> boolean (slices, rows, columns) array, each frame placed by its plane position.

    A frame without a plane position is placed on the slice it was derived from. A frame must lie on
    a slice plane of the series with its pixels on the series' pixels; frames derived from another
    series of a multi-series SEG that fall outside this series' grid belong to that series and are
    left out.
    """
    import highdicom as hd

    columns, rows, n_slices = geometry.size
    volumes = {number: np.zeros((n_slices, rows, columns), dtype=bool) for number in segment_numbers}
    slice_of_source = {sop_uid: k for k, sop_uid in enumerate(geometry.sop_uids)}
    labelmap = seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    frame_rows, frame_columns = int(seg.Rows), int(seg.Columns)
    for index in range(int(seg.get("NumberOfFrames", 1) or 1)):
        source_uid = _frame_source_uid(seg, index)
        position = _functional_group(seg, index, "PlanePositionSequence")
        if position is not None:
            x, y, z = geometry.physical_to_index(np.asarray([[float(v) for v in position.ImagePositionPatient]]))[0]
            k, r0, c0 = int(round(z)), int(round(y)), int(round(x))
            if abs(z - k) > 0.1 or abs(y - r0) > 0.1 or abs(x - c0) > 0.1:
                if source_uid in other_series_sources:
                    continue
                raise InvalidDicomError(f"{name}: frame {index + 1} does not lie on the pixel grid of the series "
                                        f"(continuous index {x:.2f}, {y:.2f}, {z:.2f})")
        elif source_uid in slice_of_source:
            k, r0, c0 = slice_of_source[source_uid], 0, 0
        else:
            raise InvalidDicomError(f"{name}: frame {index + 1} has neither a plane position nor a source slice of the series")
        inside = 0 <= k < n_slices and r0 >= 0 and c0 >= 0 and r0 + frame_rows <= rows and c0 + frame_columns <= columns
        if not inside:
            if source_uid in other_series_sources:
                continue
            raise InvalidDicomError(f"{name}: frame {index + 1} lies outside the reference series' volume")
        values = _frame_values(seg, index, threshold)
        window = (k, slice(r0, r0 + frame_rows), slice(c0, c0 + frame_columns))
        if labelmap:
            for number in segment_numbers:
                volumes[number][window] |= values == number
        else:
            number = _frame_segment_number(seg, index)
            if number not in volumes:
                raise InvalidDicomError(f"{name}: frame {index + 1} names segment {number}, which the SEG does not describe")
            volumes[number][window] |= values
    return volumes


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


def _sources_by_series(seg: pydicom.Dataset) -> dict[str, set[str]]:
    """Series Instance UID -> SOP Instance UIDs the SEG says it was derived from (ReferencedSeriesSequence,
    and StudiesContainingOtherReferencedInstancesSequence for the further series of a multi-series SEG)."""
    sources: dict[str, set[str]] = {}
    items = list(seg.get("ReferencedSeriesSequence", []))
    for study in seg.get("StudiesContainingOtherReferencedInstancesSequence", []):
        items += list(study.get("ReferencedSeriesSequence", []))
    for series in items:
        uids = {str(instance.ReferencedSOPInstanceUID) for instance in series.get("ReferencedInstanceSequence", [])}
        sources.setdefault(str(series.SeriesInstanceUID), set()).update(uids)
    return sources


def mask_from_seg(seg_path: Path, reference_series_paths: Sequence[Path], *, fractional_threshold: float = 0.5) -> dict[str, sitk.Image]:
    """Segment label -> binary (uint8 0/1) mask on the reference series grid.

    Any SEG highdicom decodes: BINARY, FRACTIONAL (kept where the fraction >= ``fractional_threshold``),
    LABELMAP; overlapping segments (each mask on its own); frames only where a segment is present;
    source slices in any order, with gaps, or a subset of the series; multi-series SEGs (frames
    of the other series are left out). Frames are placed by frame of reference and plane position,
    never by order; a SEG whose frames are on another pixel grid (spacing, orientation) is
    resampled nearest-neighbour onto the series. InvalidDicomError names the file and the reason
    for anything else (other frame of reference, references into the series that were not given,
    no frames, frames off the series grid).
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    if not 0 < fractional_threshold <= 1:
        raise ValueError(f"fractional_threshold must be in (0, 1], got {fractional_threshold}")
    dataset = read_dataset(seg_path, with_pixels=False)
    header = instance_header_from_dataset(seg_path, dataset)
    if header.modality != "SEG":
        raise InvalidDicomError(f"{seg_path.name}: modality {header.modality}, expected SEG")
    if int(dataset.get("NumberOfFrames", 0) or 0) < 1 or "PixelData" not in dataset:
        raise InvalidDicomError(f"{seg_path.name}: SEG has no segment frames")
    try:
        seg = hd.seg.segread(seg_path)
    except (ValueError, AttributeError, KeyError, TypeError, IndexError) as exc:
        raise InvalidDicomError(f"{seg_path.name}: not a readable DICOM SEG ({exc})") from exc
    geometry = series_geometry(reference_series_paths)
    if geometry.frame_of_reference_uid and str(seg.get("FrameOfReferenceUID", "")) != geometry.frame_of_reference_uid:
        raise InvalidDicomError(f"{seg_path.name}: SEG frame of reference differs from the reference series")
    series_uid = str(read_instance_header(geometry.paths[0]).series_uid)
    series_sop_uids = set(geometry.sop_uids)
    sources = _sources_by_series(seg)
    referenced = {str(sop_uid) for _, _, sop_uid in seg.get_source_image_uids()} | sources.get(series_uid, set())
    other_series_sources = set().union(*(uids for uid, uids in sources.items() if uid != series_uid)) - series_sop_uids
    missing = referenced - series_sop_uids - other_series_sources
    if missing:
        raise InvalidDicomError(f"{seg_path.name}: SEG references {len(missing)} instance(s) not in the reference series")

    segment_numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    labels: dict[int, str] = {}
    for number in segment_numbers:
        labels[number] = _unique_key(str(seg.get_segment_description(number).segment_label), number, dict.fromkeys(labels.values()))
    if _on_series_pixel_grid(seg, geometry) or not any(
        _functional_group(seg, index, "PlanePositionSequence") for index in range(int(seg.NumberOfFrames))
    ):
        placed = _place_frames(seg, geometry, segment_numbers, other_series_sources, fractional_threshold, seg_path.name)
        return {labels[number]: _mask_image(placed[number], geometry) for number in segment_numbers}

    reference = geometry.empty_image()
    masks: dict[str, sitk.Image] = {}
    for number in segment_numbers:
        try:
            volume = seg.get_volume(segment_numbers=[number], combine_segments=True, dtype=np.float32)
        except (ValueError, RuntimeError) as exc:
            raise InvalidDicomError(f"{seg_path.name}: SEG frames are on another grid and do not form a regular volume ({exc})") from exc
        segment_image = _volume_to_sitk(np.asarray(volume.array) >= fractional_threshold, volume.affine)
        masks[labels[number]] = resample_mask_to(segment_image, reference)
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
    import highdicom as hd

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


def preferred_masks(reference: "pd.DataFrame", predicted: "pd.DataFrame") -> "pd.DataFrame":
    """Reference mask rows (from SEG/RTSTRUCT), and model-predicted ones for series without one: the reference wins.

    Rows have ``image_series_uid`` and ``mask_path``; works per patient and for a whole cohort (a series UID
    belongs to one patient).
    """
    import pandas as pd

    frames = [frame for frame in (reference, predicted) if len(frame)]
    if not frames:
        return reference
    return pd.concat(frames, ignore_index=True).drop_duplicates("image_series_uid", keep="first")
