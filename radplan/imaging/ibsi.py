"""IBSI 1 image processing in front of pyradiomics ("ibsi" radiomics mode).

pyradiomics' own preprocessing differs from the IBSI reference manual (Zwanenburg et al.,
arXiv:1612.07003, chapter 2) in ways that change feature values: its resampled grid keeps the
input's origin (IBSI aligns the centres of the old and new grids), it interpolates the mask by
nearest neighbour (IBSI interpolates it like the image and keeps voxels with a partial volume
of at least 0.5), it has no intensity rounding and no combined range + outlier re-segmentation,
and its fixed-bin-width discretisation counts bins from a multiple of the bin width below the
ROI minimum (IBSI counts from the lower bound of the re-segmentation range). This module does
those steps the IBSI way; pyradiomics then computes features on the result with its own
preprocessing switched off.

Steps, in the manual's order, each driven by a parameter-file setting (``setting`` section, the
pyradiomics keys keep their meaning; the ``ibsi`` section holds what pyradiomics has no key for):

1. Interpolation (``resampledPixelSpacing``; 0 keeps an axis, so ``[2, 2, 0]`` is IBSI 2D
   in-plane interpolation): new grid size ``ceil(n * s / s_new)`` per axis, grid centre on the
   old grid's centre. Image interpolator ``interpolator`` (sitkLinear = (bi/tri)linear,
   sitkBSpline = cubic spline); points outside the old grid take the nearest edge value.
2. Intensity rounding (``ibsi.roundIntensities``): to the nearest integer, for CT (HU are
   integers).
3. Mask interpolation (``ibsi.maskInterpolator``, default sitkLinear) of each lesion's binary
   mask on the same grid, kept where the interpolated value >= ``ibsi.partialVolumeThreshold``
   (default 0.5). This is the morphological mask (shape features).
4. Re-segmentation of the intensity mask: range ``resegmentRange`` (inclusive; one value = lower
   bound only), then outlier filtering (``ibsi.outlierSigma``: keep mean +/- k standard
   deviations of the intensities left by the range step).
5. Discretisation: fixed bin count (``binCount``) as pyradiomics does it (same as IBSI); fixed
   bin width (``binWidth``) with bin 1 starting at the re-segmentation range's lower bound, or
   at the ROI minimum when no range is set.

IBSI mode covers IBSI 1 (features of the unfiltered image): filtered image types and pyradiomics'
``normalize`` are refused rather than computed on the lesion crops pyradiomics receives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from radplan.errors import RadplanInputError

IBSI_DEFAULTS = {"roundIntensities": False, "outlierSigma": None, "maskInterpolator": "sitkLinear", "partialVolumeThreshold": 0.5}
_INTERPOLATORS = {
    "sitkNearestNeighbor": sitk.sitkNearestNeighbor,
    "sitkLinear": sitk.sitkLinear,
    "sitkBSpline": sitk.sitkBSpline,
}
# pyradiomics settings whose work this module does in IBSI mode (pyradiomics must not repeat it).
PREPROCESSING_SETTINGS = ("resampledPixelSpacing", "interpolator", "resegmentRange", "resegmentMode", "resegmentShape")


@dataclass(frozen=True)
class IbsiSettings:
    """Effective IBSI preprocessing settings (see module docstring), as recorded beside features."""

    spacing_mm: tuple[float, ...] | None
    interpolator: str
    mask_interpolator: str
    partial_volume_threshold: float
    round_intensities: bool
    resegment_range: tuple[float, float | None] | None
    outlier_sigma: float | None
    bin_width: float | None
    bin_count: int | None

    def record(self) -> dict:
        return {
            "interpolation_grid": "centre-aligned (IBSI)",
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "image_interpolator": self.interpolator if self.spacing_mm else None,
            "mask_interpolator": self.mask_interpolator if self.spacing_mm else None,
            "partial_volume_threshold": self.partial_volume_threshold if self.spacing_mm else None,
            "round_intensities": self.round_intensities,
            "resegment_range": list(self.resegment_range) if self.resegment_range else None,
            "outlier_sigma": self.outlier_sigma,
            "discretisation": (f"FBN {self.bin_count} bins" if self.bin_count else
                               f"FBS {self.bin_width} from {'the re-segmentation lower bound' if self.resegment_range else 'the ROI minimum'}"),
        }


def ibsi_settings(params: dict) -> IbsiSettings:
    """IbsiSettings from a parameter dict (``setting`` + optional ``ibsi`` section); RadplanInputError when invalid."""
    setting = dict(params.get("setting") or {})
    extra = {**IBSI_DEFAULTS, **(params.get("ibsi") or {})}
    unknown = set(extra) - set(IBSI_DEFAULTS)
    if unknown:
        raise RadplanInputError(f"unknown ibsi settings {sorted(unknown)} (known: {sorted(IBSI_DEFAULTS)})")
    if setting.get("normalize"):
        raise RadplanInputError("IBSI mode does not normalise intensities (pyradiomics 'normalize'): normalise the image first")
    image_types = set(params.get("imageType") or {"Original": {}})
    if image_types != {"Original"}:
        # IBSI 1 standardises features of the unfiltered image; filters would also read past each lesion's crop.
        raise RadplanInputError(f"IBSI mode computes features of the original image only, not {sorted(image_types - {'Original'})}")
    interpolator = str(setting.get("interpolator", "sitkBSpline"))
    mask_interpolator = str(extra["maskInterpolator"])
    for name in (interpolator, mask_interpolator):
        if name not in _INTERPOLATORS:
            raise RadplanInputError(f"interpolator {name!r} is not supported in IBSI mode (use one of {sorted(_INTERPOLATORS)})")
    spacing = setting.get("resampledPixelSpacing")
    reseg = setting.get("resegmentRange")
    if reseg is not None and str(setting.get("resegmentMode", "absolute")) != "absolute":
        raise RadplanInputError("IBSI mode re-segments by absolute range (resegmentMode absolute) and ibsi.outlierSigma")
    threshold = float(extra["partialVolumeThreshold"])
    if not 0 < threshold <= 1:
        raise RadplanInputError(f"ibsi.partialVolumeThreshold must be in (0, 1], got {threshold}")
    if setting.get("binCount") is None and not setting.get("binWidth", 25):
        raise RadplanInputError("IBSI mode needs binWidth or binCount")
    return IbsiSettings(
        spacing_mm=tuple(float(s) for s in spacing) if spacing else None,
        interpolator=interpolator,
        mask_interpolator=mask_interpolator,
        partial_volume_threshold=threshold,
        round_intensities=bool(extra["roundIntensities"]),
        resegment_range=(float(reseg[0]), float(reseg[1]) if len(reseg) > 1 else None) if reseg else None,
        outlier_sigma=float(extra["outlierSigma"]) if extra["outlierSigma"] is not None else None,
        bin_width=None if setting.get("binCount") is not None else float(setting.get("binWidth", 25)),
        bin_count=int(setting["binCount"]) if setting.get("binCount") is not None else None,
    )


def centre_aligned_grid(image: sitk.Image, spacing_mm: tuple[float, ...]) -> tuple[list[int], list[float], list[float]]:
    """(size, origin, spacing) of the IBSI interpolation grid: ceil(n * s / s_new) voxels per axis, same centre.

    A spacing of 0 (or None) keeps that axis as it is.
    """
    if len(spacing_mm) != image.GetDimension():
        raise RadplanInputError(f"resampledPixelSpacing {list(spacing_mm)} does not match a {image.GetDimension()}D image")
    direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
    size, spacing, shift = [], [], np.zeros(image.GetDimension())
    for axis, (n_old, s_old, s_new) in enumerate(zip(image.GetSize(), image.GetSpacing(), spacing_mm)):
        if not s_new:
            size.append(int(n_old))
            spacing.append(float(s_old))
            continue
        n_new = int(math.ceil(n_old * s_old / s_new - 1e-9))
        size.append(n_new)
        spacing.append(float(s_new))
        # Centre of the old grid: origin + (n_old - 1) * s_old / 2 along the axis; same for the new one.
        shift += direction[:, axis] * ((n_old - 1) * s_old - (n_new - 1) * s_new) / 2.0
    origin = (np.asarray(image.GetOrigin()) + shift).tolist()
    return size, origin, spacing


def _resample(image: sitk.Image, grid: tuple[list[int], list[float], list[float]], interpolator: str) -> sitk.Image:
    size, origin, spacing = grid
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(size)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(_INTERPOLATORS[interpolator])
    resampler.SetOutputPixelType(sitk.sitkFloat64)
    # IBSI leaves extrapolation open; the nearest edge value keeps border voxels plausible.
    resampler.SetUseNearestNeighborExtrapolator(True)
    return resampler.Execute(sitk.Cast(image, sitk.sitkFloat64))


def interpolate_image(image: sitk.Image, settings: IbsiSettings) -> sitk.Image:
    """Steps 1-2: the image on the IBSI grid (float64), rounded when the settings say so."""
    if settings.spacing_mm:
        image = _resample(image, centre_aligned_grid(image, settings.spacing_mm), settings.interpolator)
    else:
        image = sitk.Cast(image, sitk.sitkFloat64)
    if settings.round_intensities:
        image = sitk.Round(image)
    return image


def interpolate_mask(binary_mask: sitk.Image, reference: sitk.Image, settings: IbsiSettings) -> sitk.Image:
    """Step 3: a binary mask moved onto ``reference`` (the interpolated image's grid)."""
    if not settings.spacing_mm:
        return sitk.Cast(binary_mask != 0, sitk.sitkUInt8)
    grid = (list(reference.GetSize()), list(reference.GetOrigin()), list(reference.GetSpacing()))
    moved = _resample(sitk.Cast(binary_mask != 0, sitk.sitkFloat64), grid, settings.mask_interpolator)
    return sitk.Cast(moved >= settings.partial_volume_threshold, sitk.sitkUInt8)


def resegment(image: sitk.Image, morphology_mask: sitk.Image, settings: IbsiSettings) -> sitk.Image:
    """Step 4: the intensity mask (range, then outlier filtering), uint8 on the same grid."""
    values = sitk.GetArrayViewFromImage(image)
    keep = sitk.GetArrayFromImage(morphology_mask).astype(bool)
    if settings.resegment_range:
        low, high = settings.resegment_range
        keep &= values >= low
        if high is not None:
            keep &= values <= high
    if settings.outlier_sigma is not None and keep.any():
        inside = values[keep]
        mean, sd = float(inside.mean()), float(inside.std())
        keep &= np.abs(values - mean) <= settings.outlier_sigma * sd
    mask = sitk.GetImageFromArray(keep.astype(np.uint8))
    mask.CopyInformation(morphology_mask)
    return mask


def fixed_bin_width_lower_bound(settings: IbsiSettings, image: sitk.Image, intensity_mask: sitk.Image) -> float | None:
    """Where bin 1 starts for fixed bin width (step 5); None for fixed bin count."""
    if settings.bin_width is None:
        return None
    if settings.resegment_range:
        return settings.resegment_range[0]
    inside = sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(intensity_mask).astype(bool)]
    return float(inside.min()) if inside.size else None


@contextmanager
def fixed_bin_width_from(lower_bound: float | None) -> Iterator[None]:
    """Within the block, pyradiomics' fixed-bin-width edges start at ``lower_bound`` (IBSI) instead of a
    multiple of the bin width below the ROI minimum. No effect for fixed bin count or ``None``.

    pyradiomics has no setting for this; its ``binImage`` looks ``getBinEdges`` up in its module at
    each call, so the replacement is swapped in there for the block only (one extraction at a time
    per process: radiomics extraction is not threaded).
    """
    from radiomics import imageoperations

    original = imageoperations.getBinEdges
    if lower_bound is None:
        yield
        return

    def ibsi_bin_edges(parameter_values, **kwargs):
        if kwargs.get("binCount") is not None:
            return original(parameter_values, **kwargs)
        width = float(kwargs.get("binWidth", 25))
        maximum = float(np.max(parameter_values))
        if np.min(parameter_values) < lower_bound:
            raise RadplanInputError(f"ROI intensity {np.min(parameter_values)} below the discretisation lower bound {lower_bound}")
        # Half-open bins [low + k w, low + (k+1) w); the top edge lies above the maximum.
        count = int(math.floor((maximum - lower_bound) / width)) + 1
        return lower_bound + width * np.arange(count + 1)

    imageoperations.getBinEdges = ibsi_bin_edges
    try:
        yield
    finally:
        imageoperations.getBinEdges = original
