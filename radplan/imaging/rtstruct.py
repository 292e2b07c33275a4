"""Lesion label map -> DICOM RT Structure Set (RTSTRUCT) referencing the source CT series.

Written on pydicom (rt-utils pins the ``dataclasses`` backport and opencv-python and predates
pydicom 3). Label value k becomes ROI k ("Lesion k"), ROI generation AUTOMATIC, approval
status UNAPPROVED (a model's proposal, for a clinician to review).

Contours: on every slice, the outline of each label is traced with marching squares
(``skimage.measure.find_contours`` at level 0.5 on the slice zero-padded by one pixel, so
outlines touching the image border close). The outline passes half-way between inside and
outside pixel centres, so filling it by pixel centres (the even-odd rule of
:func:`radplan.imaging.masks.mask_from_rtstruct`) gives back the mask; a hole is a contour
inside another, which the even-odd rule keeps empty. Points on a straight run are dropped; an
outline whose Contour Data would exceed the 64 KB of one DS value is simplified (Douglas-Peucker,
0.25 px, then up to 2 px) until it fits. Points are in patient coordinates (mm, 3 decimals) from
each slice's Image Position and Orientation.

UIDs derive from the source SOP Instance UIDs, the algorithm and the mask content, like the
SEG written by :func:`radplan.models.segmentation.write_seg_dicom`: the same input gives the
same UIDs, so a re-sent result replaces itself in a PACS instead of piling up.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from skimage.measure import approximate_polygon, find_contours

from radplan.imaging.derived import RADPLAN_MANUFACTURER
from radplan.lake import atomic_path
# The SEG writer's slice order and content-derived UIDs, so SEG and RTSTRUCT of one prediction agree.
from radplan.imaging.derived import derived_uid, slice_position

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
# RT Referenced Study Sequence items name the study with this (retired) SOP class, as RT objects do.
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
# Copied from the source image so the structure set files under the same patient and study.
_PATIENT_AND_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription",
)
_TYPE2_DEFAULTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "ReferringPhysicianName", "StudyID", "AccessionNumber")
CONTOUR_DATA = 0x30060050
# An explicit-VR DS value holds at most 65534 bytes; a longer outline is simplified until it fits.
_MAX_VALUE_BYTES = 65534
_SIMPLIFY_TOLERANCES_PX = (0.0, 0.25, 0.5, 1.0, 2.0)
_COLOURS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (200, 0, 255), (0, 200, 255))


def slice_contours(binary_slice: np.ndarray, tolerance_px: float = 0.0) -> list[np.ndarray]:
    """Closed outlines of a 2-D boolean slice as (n, 2) arrays of (row, column) pixel indices.

    Collinear points are always dropped; ``tolerance_px`` > 0 also simplifies the outline (Douglas-Peucker).
    """
    padded = np.pad(binary_slice.astype(np.float32), 1)
    outlines = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour, tolerance=tolerance_px)
        if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
            contour = contour[:-1]  # closed: DICOM closes CLOSED_PLANAR contours implicitly
        if len(contour) >= 3:
            outlines.append(contour - 1.0)
    return outlines


def _contour_data(points_mm: np.ndarray) -> RawDataElement:
    """Contour Data (DS) encoded once, as pydicom would write it: building a DSfloat per value costs seconds per study."""
    text = "\\".join(f"{value:.3f}".rstrip("0").rstrip(".") for value in points_mm.ravel())
    encoded = text.encode("ascii")
    if len(encoded) % 2:
        encoded += b" "
    return RawDataElement(Tag(CONTOUR_DATA), "DS", len(encoded), encoded, 0, False, True)


def _to_patient(points_rc: np.ndarray, source: Dataset) -> np.ndarray:
    """(row, column) pixel indices of one slice -> patient coordinates (mm)."""
    orientation = np.asarray(source.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    origin = np.asarray(source.ImagePositionPatient, float)
    # Columns advance along the first direction cosine, rows along the second (PS3.3 C.7.6.2.1.1).
    return origin + np.outer(points_rc[:, 1] * column_spacing, orientation[:3]) + np.outer(points_rc[:, 0] * row_spacing, orientation[3:])


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def write_rtstruct(
    mask: np.ndarray | sitk.Image,
    source_ct_datasets: list,
    out_path: Path,
    *,
    algorithm_name: str,
    algorithm_version: str,
    roi_labels: dict[int, str] | None = None,
) -> Path:
    """Write the label map as an RTSTRUCT (one ROI per label value, CLOSED_PLANAR contours) on the source CT.

    ``mask`` is on the CT grid: a SimpleITK image or a (slices, rows, columns) array whose slice axis runs
    in ascending position along the slice normal (SimpleITK's order for a DICOM series), as for the SEG.
    """
    if not source_ct_datasets:
        raise ValueError("no source CT datasets given")
    sources = sorted(source_ct_datasets, key=slice_position)
    array = sitk.GetArrayFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    expected = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if array.shape != expected:
        raise ValueError(f"mask shape {array.shape} does not match the CT grid {expected} (slices, rows, columns)")
    if array.min() < 0 or not np.array_equal(array, np.round(array)):
        raise ValueError("mask must be a non-negative integer label map")
    labels = array.astype(np.uint16)
    first = sources[0]
    frame_of_reference = str(first.FrameOfReferenceUID)
    source_uids = [str(ds.SOPInstanceUID) for ds in sources]
    series_uid = derived_uid("rtstruct-series", algorithm_name, algorithm_version, *source_uids)
    sop_uid = derived_uid("rtstruct-instance", series_uid, hashlib.sha256(labels.tobytes()).hexdigest())
    now = dt.datetime.now()

    ds = Dataset()
    if first.get("SpecificCharacterSet"):
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in _PATIENT_AND_STUDY:
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
        elif keyword in _TYPE2_DEFAULTS:
            setattr(ds, keyword, "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 901
    ds.SeriesDescription = f"{algorithm_name} {algorithm_version} lesion contours"
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Manufacturer = RADPLAN_MANUFACTURER
    ds.ManufacturerModelName = algorithm_name
    ds.SoftwareVersions = algorithm_version
    ds.DeviceSerialNumber = "0"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "Lesions"
    ds.StructureSetName = algorithm_name[:16]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"

    series_item = Dataset()
    series_item.SeriesInstanceUID = str(first.SeriesInstanceUID)
    series_item.ContourImageSequence = Sequence([_reference(str(s.SOPClassUID), str(s.SOPInstanceUID)) for s in sources])
    study_item = _reference(DETACHED_STUDY_MANAGEMENT, str(first.StudyInstanceUID))
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = frame_of_reference
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_item])

    roi_numbers = [int(v) for v in np.unique(labels) if v > 0]
    structure_rois, roi_contours, observations = [], [], []
    for index, number in enumerate(roi_numbers):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = (roi_labels or {}).get(number, f"Lesion {number}")
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{algorithm_name} {algorithm_version}"[:64]
        structure_rois.append(roi)

        contours = []
        for slice_index, source in enumerate(sources):
            inside = labels[slice_index] == number
            if not inside.any():
                continue
            for outline in slice_contours(inside):
                data = _contour_data(_to_patient(outline, source))
                for tolerance in _SIMPLIFY_TOLERANCES_PX[1:]:
                    if data.length <= _MAX_VALUE_BYTES:
                        break
                    outline = approximate_polygon(np.vstack([outline, outline[:1]]), tolerance=tolerance)[:-1]
                    data = _contour_data(_to_patient(outline, source))
                if data.length > _MAX_VALUE_BYTES or len(outline) < 3:
                    raise ValueError(f"ROI {number}: an outline on slice {slice_index + 1} is too intricate for one RTSTRUCT contour")
                contour = Dataset()
                contour.ContourImageSequence = Sequence([_reference(str(source.SOPClassUID), str(source.SOPInstanceUID))])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(outline)
                contour.ContourNumber = len(contours) + 1
                contour[CONTOUR_DATA] = data
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = list(_COLOURS[index % len(_COLOURS)])
        roi_contour.ContourSequence = Sequence(contours)
        roi_contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(structure_rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.RTROIObservationsSequence = Sequence(observations)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return out_path
