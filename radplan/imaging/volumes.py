"""DICOM series -> SimpleITK volume, intensity normalisation and isotropic resampling.

Slice order comes from geometry (ImagePositionPatient projected on the slice normal),
never from file names or InstanceNumber. A series is accepted only if it forms one
regular grid: same orientation, size and pixel spacing on every slice, slice origins on
one line along the normal, and equal steps between slices. Anything else (missing
slice, gantry tilt, mixed orientations, duplicates) raises InvalidDicomError.

``normalize_volume`` records every choice in a plain dict that becomes asset metadata:
  * CT: Hounsfield units, clipped to [-1024, 3071] HU (the 12-bit CT range; values
    outside are padding or metal/reconstruction artefacts).
  * PET: SUV body weight. Units GML are already SUVbw and pass through; Units BQML are
    converted with PatientWeight and the decay-corrected injected dose (DecayCorrection
    START or ADMIN); anything else (CNTS, NONE decay correction, missing dose) is refused
    with InvalidDicomError, since a wrong SUV silently corrupts every feature.
  * MR: z-score, mean and standard deviation taken over the body foreground (Otsu
    threshold of the image), so the amount of air in the field of view does not change
    the scaling.
  Then linear resampling onto an isotropic grid covering the same physical extent.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut

from radplan.errors import InvalidDicomError
from radplan.imaging.series import instance_header_from_dataset, read_dataset

CT_CLIP_RANGE_HU = (-1024.0, 3071.0)
# Relative tolerance on slice steps and in-plane offsets (fraction of the slice step / pixel).
_SPACING_RTOL = 0.01
_ORIENTATION_ATOL = 1e-4


@dataclass(frozen=True)
class SeriesGeometry:
    """The regular grid of a single-frame image series, slices in geometric order."""

    paths: tuple[Path, ...]
    sop_uids: tuple[str, ...]
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    frame_of_reference_uid: str | None

    def empty_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """A zero image on this grid (for masks)."""
        image = sitk.Image(list(self.size), pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> None:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def physical_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """Continuous (x=column, y=row, z=slice) indices of LPS points (N x 3)."""
        direction = np.asarray(self.direction).reshape(3, 3)
        offsets = np.asarray(points_mm, dtype=float) - np.asarray(self.origin)
        return (offsets @ direction) / np.asarray(self.spacing)


def _plane_vectors(ds: pydicom.Dataset, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if not (abs(np.linalg.norm(row_dir) - 1) < 1e-3 and abs(np.linalg.norm(col_dir) - 1) < 1e-3 and abs(row_dir @ col_dir) < 1e-3):
        raise InvalidDicomError(f"{name}: ImageOrientationPatient is not two orthonormal vectors")
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def _series_geometry_from_datasets(paths: Sequence[Path], datasets: Sequence[pydicom.Dataset]) -> tuple[SeriesGeometry, list[int]]:
    """Check that the slices form one regular grid; return it and the geometric order."""
    if not datasets:
        raise InvalidDicomError("empty series: no instances given")
    for path, ds in zip(paths, datasets):
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise InvalidDicomError(f"{Path(path).name}: multi-frame instances are not supported as a slice series")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if keyword not in ds:
                raise InvalidDicomError(f"{Path(path).name}: missing {keyword}, cannot place the slice")
    first = datasets[0]
    row_dir, col_dir, normal = _plane_vectors(first, Path(paths[0]).name)
    reference_orientation = np.concatenate([row_dir, col_dir])
    rows, columns = int(first.Rows), int(first.Columns)
    pixel_spacing = np.asarray([float(v) for v in first.PixelSpacing])
    for path, ds in zip(paths, datasets):
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(orientation, reference_orientation, atol=_ORIENTATION_ATOL):
            raise InvalidDicomError(f"{Path(path).name}: mixed slice orientations in one series")
        if (int(ds.Rows), int(ds.Columns)) != (rows, columns):
            raise InvalidDicomError(f"{Path(path).name}: slice size differs within the series")
        if not np.allclose([float(v) for v in ds.PixelSpacing], pixel_spacing, rtol=1e-4):
            raise InvalidDicomError(f"{Path(path).name}: pixel spacing differs within the series")

    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    distances = positions @ normal
    order = list(np.argsort(distances, kind="stable"))
    sorted_positions = positions[order]
    sorted_distances = distances[order]

    if len(datasets) > 1:
        names = [Path(paths[i]).name for i in order]
        steps = np.diff(sorted_distances)
        if np.any(steps < 1e-3):
            k = int(np.argmax(steps < 1e-3))
            raise InvalidDicomError(f"{names[k]} and {names[k + 1]}: two slices share the same position "
                                    "(duplicate or multi-acquisition series)")
        slice_step = float(np.median(steps))
        irregular = np.abs(steps - slice_step) > _SPACING_RTOL * slice_step + 1e-3
        if np.any(irregular):
            k = int(np.argmax(np.abs(steps - slice_step)))
            reason = "missing slice" if steps[k] > 1.5 * slice_step else "inconsistent slice spacing"
            raise InvalidDicomError(
                f"{reason} between {names[k]} and {names[k + 1]} ({steps[k]:.3f} mm apart, median step "
                f"{slice_step:.3f} mm; {int(irregular.sum())} irregular step(s) in {len(names)} slices)"
            )
        # Every origin must sit on the line through the first origin along the normal
        # (a sheared stack, e.g. gantry tilt, is not a regular grid).
        in_plane_offsets = (sorted_positions - sorted_positions[0]) - np.outer(sorted_distances - sorted_distances[0], normal)
        sheared = np.linalg.norm(in_plane_offsets, axis=1) > _SPACING_RTOL * pixel_spacing.min() * 10
        if np.any(sheared):
            raise InvalidDicomError(f"{names[int(np.argmax(sheared))]}: slice origins are not aligned along the slice normal "
                                    "(gantry tilt or sheared stack)")
    else:
        slice_step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)

    direction = np.column_stack([row_dir, col_dir, normal])
    geometry = SeriesGeometry(
        paths=tuple(Path(paths[i]) for i in order),
        sop_uids=tuple(str(datasets[i].SOPInstanceUID) for i in order),
        size=(columns, rows, len(datasets)),
        # PixelSpacing is (row spacing, column spacing); SimpleITK x runs along a row.
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), slice_step),
        origin=tuple(float(v) for v in sorted_positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or "") or None,
    )
    return geometry, order


def _read_header(path: Path) -> pydicom.Dataset:
    ds = read_dataset(path, with_pixels=False)
    instance_header_from_dataset(path, ds)  # uniform InvalidDicomError for missing UIDs
    return ds


def series_geometry(paths: Sequence[Path]) -> SeriesGeometry:
    """Grid of a single-frame image series from headers only (no pixel data read)."""
    paths = [Path(p) for p in paths]
    geometry, _ = _series_geometry_from_datasets(paths, [_read_header(p) for p in paths])
    return geometry


def load_series_volume(paths: Sequence[Path]) -> sitk.Image:
    """Load one single-frame image series as a 3D SimpleITK image in LPS physical space.

    Slices are ordered along the slice normal and checked to form one regular grid
    (see module docstring). The modality LUT (RescaleSlope/Intercept) is applied, so CT
    comes out in HU. Integer results that fit int16 stay int16, anything else is float32.
    Pixels are read one slice at a time into a preallocated array.
    """
    paths = [Path(p) for p in paths]
    headers = [_read_header(p) for p in paths]
    modalities = {str(h.get("Modality", "")) for h in headers}
    if len(modalities) != 1:
        raise InvalidDicomError(f"mixed modalities in one series: {sorted(modalities)}")
    series_uids = {str(h.SeriesInstanceUID) for h in headers}
    if len(series_uids) != 1:
        raise InvalidDicomError(f"{len(series_uids)} different SeriesInstanceUIDs given as one series")
    geometry, _ = _series_geometry_from_datasets(paths, headers)

    columns, rows, n_slices = geometry.size
    slopes = {float(h.get("RescaleSlope", 1) or 1) for h in headers}
    intercepts = {float(h.get("RescaleIntercept", 0) or 0) for h in headers}
    integer_valued = all(s == int(s) for s in slopes) and all(i == int(i) for i in intercepts) and "ModalityLUTSequence" not in headers[0]
    volume = np.empty((n_slices, rows, columns), dtype=np.float32)
    for index, path in enumerate(geometry.paths):
        ds = pydicom.dcmread(path)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoders raise many types for corrupt/truncated data
            raise InvalidDicomError(f"{path.name}: pixel data does not decode ({type(exc).__name__})") from exc
        if pixels.shape != (rows, columns):
            raise InvalidDicomError(f"{path.name}: pixel array shape {pixels.shape} != ({rows}, {columns})")
        volume[index] = apply_modality_lut(pixels, ds)
    if integer_valued and volume.min() >= np.iinfo(np.int16).min and volume.max() <= np.iinfo(np.int16).max:
        volume = volume.astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    geometry.apply_to(image)
    return image


def _dicom_datetime(date_value, time_value) -> dt.datetime | None:
    if not date_value or not time_value:
        return None
    time_text = str(time_value).split(".")[0].ljust(6, "0")
    fraction = str(time_value).split(".")[1] if "." in str(time_value) else "0"
    stamp = dt.datetime.strptime(f"{date_value}{time_text}", "%Y%m%d%H%M%S")
    return stamp + dt.timedelta(seconds=float(f"0.{fraction}"))


def _suv_bw_factor(headers: pydicom.Dataset) -> tuple[float, dict]:
    """Factor turning Bq/ml into SUVbw (g/ml), and what went into it (no dates, no identifiers)."""
    weight = headers.get("PatientWeight")
    if not weight or float(weight) <= 0:
        raise InvalidDicomError("PET BQML: PatientWeight missing, SUVbw cannot be computed")
    sequence = headers.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise InvalidDicomError("PET BQML: RadiopharmaceuticalInformationSequence missing, no injected dose")
    radiopharmaceutical = sequence[0]
    dose = radiopharmaceutical.get("RadionuclideTotalDose")
    half_life = radiopharmaceutical.get("RadionuclideHalfLife")
    if not dose or float(dose) <= 0 or not half_life or float(half_life) <= 0:
        raise InvalidDicomError("PET BQML: RadionuclideTotalDose/RadionuclideHalfLife missing")
    decay_correction = str(headers.get("DecayCorrection", "")).upper()
    decay_seconds = 0.0
    if decay_correction == "START":
        # Image values are decay-corrected to the series start: decay the dose to that time too.
        start_datetime = str(radiopharmaceutical.get("RadiopharmaceuticalStartDateTime", "") or "")
        if start_datetime:
            injection = _dicom_datetime(start_datetime[:8], start_datetime[8:].split("+")[0].split("-")[0])
        else:
            injection = _dicom_datetime(headers.get("SeriesDate"), radiopharmaceutical.get("RadiopharmaceuticalStartTime"))
        series_start = _dicom_datetime(headers.get("SeriesDate"), headers.get("SeriesTime"))
        if injection is None or series_start is None:
            raise InvalidDicomError("PET BQML: injection or series start time missing, cannot decay-correct the dose")
        decay_seconds = (series_start - injection).total_seconds()
        if decay_seconds < 0:
            raise InvalidDicomError("PET BQML: injection time is after the series start")
    elif decay_correction != "ADMIN":
        raise InvalidDicomError(f"PET BQML: DecayCorrection {decay_correction or 'missing'} is not supported (need START or ADMIN)")
    decayed_dose = float(dose) * math.exp(-math.log(2) * decay_seconds / float(half_life))
    factor = float(weight) * 1000.0 / decayed_dose
    return factor, {
        "suv_type": "BW",
        "decay_correction": decay_correction,
        "injection_to_scan_seconds": decay_seconds,
        "decayed_dose_bq": decayed_dose,
        "patient_weight_kg": float(weight),
    }


def _foreground_mask(image: sitk.Image) -> sitk.Image:
    # Otsu splits air/background from body; the body is the brighter class.
    return sitk.OtsuThreshold(image, 0, 1)


def normalize_volume(
    image: sitk.Image,
    modality: str,
    headers: pydicom.Dataset,
    *,
    spacing_mm: float | tuple[float, float, float] = 1.0,
) -> tuple[sitk.Image, dict]:
    """Normalise intensities per modality, then resample linearly to ``spacing_mm``.

    ``headers`` is one representative instance of the series (PET needs its SUV tags).
    Returns the float32 image and the settings dict (see module docstring).
    """
    modality = modality.upper()
    image = sitk.Cast(image, sitk.sitkFloat32)
    settings: dict = {
        "modality": modality,
        "original_size": list(image.GetSize()),
        "original_spacing_mm": [round(s, 6) for s in image.GetSpacing()],
    }
    if modality == "CT":
        low, high = CT_CLIP_RANGE_HU
        image = sitk.Clamp(image, sitk.sitkFloat32, low, high)
        settings.update(intensity_unit="HU", normalization="clip", clip_range=[low, high])
        outside_value = low
    elif modality in ("PT", "PET"):
        units = str(headers.get("Units", "")).upper()
        if units == "GML":
            settings.update(intensity_unit="SUVbw", normalization="none (stored as SUVbw, Units GML)")
        elif units == "BQML":
            factor, suv_settings = _suv_bw_factor(headers)
            image = image * factor
            settings.update(intensity_unit="SUVbw", normalization="Bq/ml to SUVbw", suv_factor=factor, **suv_settings)
        else:
            raise InvalidDicomError(f"PET Units {units or 'missing'}: cannot convert to SUV (need BQML or GML)")
        outside_value = 0.0
    elif modality == "MR":
        foreground = _foreground_mask(image)
        statistics = sitk.LabelStatisticsImageFilter()
        statistics.Execute(image, foreground)
        if not statistics.HasLabel(1) or statistics.GetSigma(1) <= 0:
            raise InvalidDicomError("MR: no foreground with intensity variation, cannot z-score")
        mean, sigma = statistics.GetMean(1), statistics.GetSigma(1)
        image = (image - mean) / sigma
        settings.update(
            intensity_unit="z-score",
            normalization="z-score over Otsu foreground",
            foreground_voxels=int(statistics.GetCount(1)),
        )
        outside_value = float((0.0 - mean) / sigma)
    else:
        raise InvalidDicomError(f"modality {modality} has no normalisation defined (CT, PT, MR)")

    new_spacing = (float(spacing_mm),) * 3 if np.isscalar(spacing_mm) else tuple(float(s) for s in spacing_mm)  # type: ignore[arg-type]
    resampled = resample_to_spacing(image, new_spacing, sitk.sitkLinear, outside_value)
    settings.update(
        spacing_mm=list(new_spacing),
        interpolator="linear",
        size=list(resampled.GetSize()),
        outside_value=outside_value,
    )
    return resampled, settings


def resample_to_spacing(image: sitk.Image, spacing: tuple[float, float, float], interpolator: int, default_value: float) -> sitk.Image:
    """Resample onto a grid with the same origin and direction covering the same extent."""
    old_size, old_spacing = image.GetSize(), image.GetSpacing()
    new_size = [max(1, int(round(n * s / t))) for n, s, t in zip(old_size, old_spacing, spacing)]
    return sitk.Resample(
        image, new_size, sitk.Transform(), interpolator, image.GetOrigin(), spacing, image.GetDirection(), default_value, image.GetPixelID()
    )


def resample_mask_to(mask: sitk.Image, reference_image: sitk.Image) -> sitk.Image:
    """Nearest-neighbour resampling of a mask/label map onto ``reference_image``'s grid."""
    return sitk.Resample(mask, reference_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
