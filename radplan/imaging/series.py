"""DICOM instance headers, validation and study/series grouping.

Used by PACS ingest and again after de-identification. Grouping is by UIDs
only (StudyInstanceUID, SeriesInstanceUID): folder layout is never trusted,
since PACS exports and de-identification tools rename and reshuffle folders.

Header reads never load pixel data into memory: values above a small size are
deferred (pydicom keeps only their file offset), which still tells whether the
instance carries pixel data. ``validate_instance`` is the full check that
decodes the pixels.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError as PydicomInvalidDicomError
from pydicom.uid import UID

from radplan.errors import InvalidDicomError

# Values larger than this are not read by header-only reads (pixel data, big overlays).
_DEFER_VALUES_ABOVE_BYTES = 1024
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class InstanceHeader:
    """What ingest needs to know about one DICOM instance, read without its pixels."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, ...] | None
    has_pixel_data: bool
    frame_of_reference_uid: str | None

    def slice_position(self) -> float | None:
        """Position along the slice normal (mm), or None without plane geometry."""
        if self.image_position is None or self.image_orientation is None or len(self.image_orientation) != 6:
            return None
        normal = np.cross(self.image_orientation[:3], self.image_orientation[3:])
        return float(np.dot(normal, self.image_position))


def is_image_sop_class(sop_class_uid: str) -> bool:
    """True for SOP classes whose instances must carry decodable pixel data (CT/MR/PET/SEG/...)."""
    name = UID(sop_class_uid).name
    return name.endswith("Image Storage") or name == "Segmentation Storage"


# What pydicom raises for truncated or corrupt element streams (and unknown VRs, odd value lengths); struct.error:
# a file cut inside an element header (CT_small.dcm cut at byte 152, found by tests/reliability/test_parser_properties.py).
_CORRUPT_STREAM_ERRORS = (EOFError, OSError, ValueError, KeyError, TypeError, IndexError, NotImplementedError, BytesLengthException,
                          struct.error)


def read_dataset(path: Path, *, with_pixels: bool) -> pydicom.Dataset:
    """pydicom read with InvalidDicomError for anything unreadable; large values deferred unless ``with_pixels``."""
    try:
        if with_pixels:
            return pydicom.dcmread(path)
        return pydicom.dcmread(path, defer_size=_DEFER_VALUES_ABOVE_BYTES)
    except PydicomInvalidDicomError as exc:
        raise InvalidDicomError(f"{path.name}: not a DICOM Part 10 file ({exc})") from exc
    except _CORRUPT_STREAM_ERRORS as exc:
        raise InvalidDicomError(f"{path.name}: unreadable DICOM ({type(exc).__name__}: {exc})") from exc


def _float_tuple(value, expected_length: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == expected_length else None


def instance_header_from_dataset(path: Path, ds: pydicom.Dataset) -> InstanceHeader:
    """InstanceHeader of an already read dataset; InvalidDicomError when required UIDs are missing."""
    try:
        missing = [keyword for keyword in _REQUIRED_UIDS if not str(ds.get(keyword, "") or "").strip()]
        if missing:
            raise InvalidDicomError(f"{path.name}: missing required UID(s) {', '.join(missing)}")
        modality = str(ds.get("Modality", "") or "").strip()
        if not modality:
            raise InvalidDicomError(f"{path.name}: missing Modality")
        instance_number = ds.get("InstanceNumber")
        position = _float_tuple(ds.get("ImagePositionPatient"), 3)
        orientation = _float_tuple(ds.get("ImageOrientationPatient"), 6)
        frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "").strip() or None
        return InstanceHeader(
            path=Path(path),
            patient_id=str(ds.get("PatientID", "") or ""),
            study_uid=str(ds.StudyInstanceUID).strip(),
            series_uid=str(ds.SeriesInstanceUID).strip(),
            sop_uid=str(ds.SOPInstanceUID).strip(),
            sop_class_uid=str(ds.SOPClassUID).strip(),
            modality=modality,
            instance_number=int(instance_number) if instance_number not in (None, "") else None,
            image_position=position,  # type: ignore[arg-type]
            image_orientation=orientation,
            has_pixel_data=any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS),
            frame_of_reference_uid=frame_of_reference,
        )
    except _CORRUPT_STREAM_ERRORS as exc:
        # Deferred/lazily converted values are parsed here; a truncated or corrupt header surfaces now.
        raise InvalidDicomError(f"{path.name}: corrupt header ({type(exc).__name__}: {exc})") from exc


def read_instance_header(path: Path) -> InstanceHeader:
    """Read the header of one instance without loading its pixels.

    Raises InvalidDicomError for non-DICOM files, unreadable (truncated) headers and
    instances missing the study/series/SOP instance/SOP class UIDs or the modality.
    """
    path = Path(path)
    return instance_header_from_dataset(path, read_dataset(path, with_pixels=False))


def _check_pixel_data(path: Path, ds: pydicom.Dataset) -> None:
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise InvalidDicomError(f"{path.name}: pixel data without valid Rows/Columns")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pixel decoders raise many types for corrupt/truncated data
        raise InvalidDicomError(f"{path.name}: pixel data does not decode ({type(exc).__name__}: {exc})") from exc
    expected = (rows, columns) if frames == 1 else (frames, rows, columns)
    if samples > 1:
        expected = (*expected, samples)
    if tuple(pixels.shape) != expected:
        raise InvalidDicomError(f"{path.name}: decoded pixel array has shape {pixels.shape}, expected {expected}")


def validate_instance(path: Path) -> InstanceHeader:
    """Fully check one instance: header as in ``read_instance_header`` and, for image SOP
    classes, pixel data present and decoding to Rows x Columns (x frames x samples).

    Truncated files fail here (the decoded pixel buffer is short). Raises InvalidDicomError.
    """
    path = Path(path)
    ds = read_dataset(path, with_pixels=True)
    header = instance_header_from_dataset(path, ds)
    if is_image_sop_class(header.sop_class_uid) and not header.has_pixel_data:
        raise InvalidDicomError(f"{path.name}: image SOP class {UID(header.sop_class_uid).name} without pixel data")
    if header.has_pixel_data:
        _check_pixel_data(path, ds)
    return header


def _geometry_sort_key(header: InstanceHeader) -> tuple:
    position = header.slice_position()
    return (
        position is None,
        position if position is not None else 0.0,
        header.instance_number if header.instance_number is not None else 0,
        header.sop_uid,
    )


def group_series(headers: Iterable[InstanceHeader]) -> dict[str, dict[str, list[InstanceHeader]]]:
    """Group instances as study_uid -> series_uid -> instances, by UIDs only.

    Instances within a series are sorted along the slice normal (ImagePositionPatient
    projected on the normal), then by InstanceNumber, then SOP Instance UID (instances
    without geometry, such as RTSTRUCT, come last in UID order). The same SOP instance
    received twice (same SOP Instance UID) is kept once: DICOM defines it as the same
    object. A series UID seen under two studies is inconsistent input: InvalidDicomError.
    """
    grouped: dict[str, dict[str, dict[str, InstanceHeader]]] = defaultdict(lambda: defaultdict(dict))
    study_of_series: dict[str, str] = {}
    for header in headers:
        known_study = study_of_series.setdefault(header.series_uid, header.study_uid)
        if known_study != header.study_uid:
            raise InvalidDicomError(f"{header.path.name}: series appears under two different studies")
        grouped[header.study_uid][header.series_uid].setdefault(header.sop_uid, header)
    return {
        study_uid: {
            series_uid: sorted(instances.values(), key=_geometry_sort_key)
            for series_uid, instances in series.items()
        }
        for study_uid, series in grouped.items()
    }
