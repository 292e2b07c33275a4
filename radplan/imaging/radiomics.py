"""Per-lesion radiomic features with pyradiomics, and the settings stored beside them.

Parameters are pyradiomics parameter files (``setting`` / ``imageType`` / ``featureClass``);
``params/{ct,mr,pet}.yaml`` are the IBSI-aligned defaults, one comment per choice.
Every lesion label of the label map gives one row: ``lesion_label``, ``voxel_count`` and
``volume_ml`` (on the input grid), every pyradiomics feature (``original_<class>_<Feature>``)
as float, ``extraction_error`` (None, or why pyradiomics refused that lesion; its features
are then NaN), and ``params_sha256`` / ``pyradiomics_version`` so any row can be traced to the
exact settings (``extraction_settings`` gives the full record).

Lesions are extracted in parallel with a process pool (forkserver, modules preloaded), largest first.
When pyradiomics would read nothing outside a lesion's bounding box (original image, no resampling,
no normalization: the ``radiomic_features`` asset's case, its volumes being resampled already), each
lesion is cropped first and a worker receives only its lesion; otherwise each worker receives the
whole image once (pool initializer). Small cropped lesions are extracted in-process: a pool would
cost more than it saves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml

from radplan.errors import RadplanInputError
from radplan.imaging.ibsi import (
    PREPROCESSING_SETTINGS,
    fixed_bin_width_from,
    fixed_bin_width_lower_bound,
    ibsi_settings,
    interpolate_image,
    interpolate_mask,
    resegment,
)

PARAMS_DIR = Path(__file__).parent / "params"
_MODALITY_PARAMS = {"ct": "ct.yaml", "mr": "mr.yaml", "pet": "pet.yaml", "pt": "pet.yaml"}
_PARAM_SECTIONS = {"setting", "imageType", "featureClass", "voxelSetting", "ibsi"}
# "pyradiomics": pyradiomics' own preprocessing, output identical to bare pyradiomics (for users with
# pyradiomics baselines). "ibsi": the IBSI reference manual's preprocessing (radplan.imaging.ibsi) first.
MODES = ("pyradiomics", "ibsi")

_worker_state: dict = {}
CROP_RIM_VOXELS = 2
# Cropped lesions smaller than this in all are extracted in-process even when workers are asked for:
# a process pool costs more to start and feed than it saves on them. Measured with bench_radiomics.py:
# 6 demo lesions (10.7k voxels) take 0.3 s on 1 worker, 0.34 s on 2; two lesions of 70k voxels in all
# take 0.70 s on 1 worker and 0.81 s on 2. The limit sits above both, with a margin.
PARALLEL_MIN_LESION_VOXELS = 150_000


def load_params(modality_or_path: str | Path) -> dict:
    """The parameter dict for a modality ('CT', 'MR', 'PET'/'PT') or from a YAML file."""
    key = str(modality_or_path).lower()
    path = PARAMS_DIR / _MODALITY_PARAMS[key] if key in _MODALITY_PARAMS else Path(modality_or_path)
    if not path.is_file():
        raise RadplanInputError(f"radiomics parameter file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RadplanInputError(f"{path.name}: not valid YAML ({exc})") from exc
    return _checked_params(params, path.name)


def _checked_params(params: object, source: str) -> dict:
    if not isinstance(params, dict):
        raise RadplanInputError(f"{source}: radiomics parameters must be a mapping")
    unknown = set(params) - _PARAM_SECTIONS
    if unknown:
        raise RadplanInputError(f"{source}: unknown parameter sections {sorted(unknown)}")
    _extractor(params)  # pyradiomics validates the rest against its schema
    if "ibsi" in params:
        ibsi_settings(params)
    return params


def _pyradiomics_params(params: dict) -> dict:
    """The parameter dict without the ``ibsi`` section, which only radplan reads."""
    return {key: value for key, value in params.items() if key != "ibsi"}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise RadplanInputError(f"radiomics mode {mode!r} unknown (one of {', '.join(MODES)})")


def _extractor(params: dict):
    import logging

    import radiomics
    from radiomics import featureextractor

    # pyradiomics logs every step at INFO; progress is reported per lesion instead.
    radiomics.setVerbosity(logging.WARNING)

    try:
        return featureextractor.RadiomicsFeatureExtractor(_pyradiomics_params(params))
    except Exception as exc:  # noqa: BLE001 - pykwalify raises its own SchemaError types
        raise RadplanInputError(f"invalid pyradiomics parameters: {exc}") from exc


def extraction_settings(params: dict | Path, mode: str = "pyradiomics") -> dict:
    """Settings record stored beside every feature table: mode, parameters, their hash, versions.

    In IBSI mode the hash covers the mode too (the same file gives other values in each mode);
    in IBSI mode ``ibsi_preprocessing`` spells out every preprocessing step's effective setting.
    """
    import radiomics

    _check_mode(mode)
    params = params if isinstance(params, dict) else load_params(params)
    # pyradiomics mode keeps the hash it always had, so existing tables stay traceable.
    hashed = params if mode == "pyradiomics" else {"mode": mode, "params": params}
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return {
        "mode": mode,
        "ibsi_preprocessing": ibsi_settings(params).record() if mode == "ibsi" else None,
        "params": params,
        "params_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "pyradiomics_version": radiomics.__version__,
        "simpleitk_version": sitk.Version.VersionString(),
        "feature_naming": "<imageType>_<featureClass>_<Feature>, pyradiomics convention",
    }


def _ibsi_pyradiomics_params(params: dict) -> tuple[dict, dict | None]:
    """IBSI mode: (params for every class but shape, params for shape alone or None), pyradiomics'
    own interpolation and re-segmentation off (radplan.imaging.ibsi did them)."""
    setting = {k: v for k, v in (params.get("setting") or {}).items() if k not in PREPROCESSING_SETTINGS}
    classes = dict(params.get("featureClass") or {})
    shape = {"shape": classes.pop("shape")} if "shape" in classes else None
    base = {k: v for k, v in params.items() if k not in ("setting", "featureClass", "ibsi")}
    intensity = {**base, "setting": setting, "featureClass": classes} if classes else None
    return intensity, ({**base, "setting": setting, "featureClass": shape} if shape else None)


def _init_worker(params: dict, image: sitk.Image | None = None, label_map: sitk.Image | None = None,
                 mode: str = "pyradiomics") -> None:
    if mode == "ibsi":
        intensity, shape = _ibsi_pyradiomics_params(params)
        _worker_state.update(mode=mode, intensity_extractor=intensity and _extractor(intensity),
                             shape_extractor=shape and _extractor(shape))
        return
    _worker_state.update(mode=mode, extractor=_extractor(params), image=image, label_map=label_map)


def _features(result: dict) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in result.items() if not name.startswith("diagnostics_")}


def _extract_one(
    label: int, image: sitk.Image | None = None, label_map: sitk.Image | None = None,
    intensity_mask: sitk.Image | None = None, bin_lower_bound: float | None = None,
) -> tuple[int, dict[str, float], str | None]:
    """Features of one lesion (from its crop, else the worker's whole image), or why pyradiomics refused it.

    pyradiomics refuses an ROI too small or flat for the settings. In IBSI mode ``label_map`` is the
    lesion's morphological mask (shape features) and ``intensity_mask`` its re-segmented mask (the
    other classes), both with label 1.
    """
    if _worker_state["mode"] == "ibsi":
        features: dict[str, float] = {}
        try:
            if _worker_state["shape_extractor"] is not None:
                features.update(_features(_worker_state["shape_extractor"].execute(image, label_map, label=1)))
            if _worker_state["intensity_extractor"] is not None:
                if not sitk.GetArrayViewFromImage(intensity_mask).any():
                    raise ValueError("no voxel left in the ROI after IBSI re-segmentation")
                with fixed_bin_width_from(bin_lower_bound):
                    features.update(_features(_worker_state["intensity_extractor"].execute(image, intensity_mask, label=1)))
        except (ValueError, AssertionError, RadplanInputError) as exc:
            return int(label), {}, f"{type(exc).__name__}: {exc}"
        return int(label), features, None
    extractor = _worker_state["extractor"]
    image = image if image is not None else _worker_state["image"]
    label_map = label_map if label_map is not None else _worker_state["label_map"]
    try:
        result = extractor.execute(image, label_map, label=int(label))
    except (ValueError, AssertionError) as exc:
        return int(label), {}, f"{type(exc).__name__}: {exc}"
    return int(label), _features(result), None


def _crops_are_exact(params: dict) -> bool:
    """Whether a lesion's bounding-box crop gives pyradiomics exactly what the whole image would.

    True when pyradiomics reads nothing outside the lesion's box: the original image only (filters
    read neighbouring voxels), no resampling (pyradiomics aligns its grid to the input's origin) and
    no normalization (whole-image statistics). Then cropping first spares pyradiomics' whole-image
    mask checks per lesion and sends each worker only its lesion.
    """
    setting = params.get("setting") or {}
    image_types = set(params.get("imageType") or {"Original": {}})
    return image_types == {"Original"} and not setting.get("resampledPixelSpacing") and not setting.get("normalize")


def _crop_box(label_map: sitk.Image, label: int, shape: sitk.LabelShapeStatisticsImageFilter | None = None) -> tuple[list, list]:
    """(extent, start index) of a label's bounding box plus a 2-voxel rim, within the image."""
    if shape is None:
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.Execute(label_map)
    dimension = label_map.GetDimension()
    size = np.array(label_map.GetSize())
    box = shape.GetBoundingBox(label)
    start = np.maximum(np.array(box[:dimension]) - CROP_RIM_VOXELS, 0)
    stop = np.minimum(np.array(box[:dimension]) + np.array(box[dimension:]) + CROP_RIM_VOXELS, size)
    return (stop - start).tolist(), start.tolist()


def _lesion_crops(image: sitk.Image, label_map: sitk.Image, labels: list[int]) -> dict[int, tuple[sitk.Image, sitk.Image]]:
    """Each lesion's bounding box (plus a 2-voxel rim) cut from the image and the label map, same physical positions."""
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(label_map)
    crops = {}
    for label in labels:
        extent, origin = _crop_box(label_map, label, shape)
        crops[label] = (sitk.RegionOfInterest(image, extent, origin), sitk.RegionOfInterest(label_map, extent, origin))
    return crops


def _ibsi_lesion_inputs(image: sitk.Image, label_map: sitk.Image, labels: list[int], params: dict) -> dict[int, tuple]:
    """IBSI mode: per lesion (image crop, morphological mask crop, intensity mask crop, FBS lower bound).

    The image is interpolated once on the IBSI grid of the whole image (the grid depends on the
    whole image's extent, so it cannot be cut first); each lesion's mask is interpolated on its own,
    then both are cut to the lesion's box: pyradiomics then reads nothing outside it.
    """
    settings = ibsi_settings(params)
    interpolated = interpolate_image(image, settings)
    inputs = {}
    for label in labels:
        morphology = interpolate_mask(label_map == label, interpolated, settings)
        if not sitk.GetArrayViewFromImage(morphology).any():
            inputs[label] = None  # smaller than the partial-volume threshold on the new grid
            continue
        intensity = resegment(interpolated, morphology, settings)
        lower_bound = fixed_bin_width_lower_bound(settings, interpolated, intensity)
        extent, origin = _crop_box(morphology, 1)
        image_crop, morphology_crop, intensity_crop = (sitk.RegionOfInterest(item, extent, origin)
                                                       for item in (interpolated, morphology, intensity))
        inputs[label] = (image_crop, morphology_crop, intensity_crop, lower_bound)
    return inputs


def _pool_context():
    """forkserver with radiomics preloaded: workers never inherit the caller's threads/locks (Dagster,
    loggers), and after the first pool of a process they start in ~0.1 s instead of re-importing
    pyradiomics/SimpleITK/pandas (~2-3 s), which dominated small-lesion extractions."""
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__, "radiomics.featureextractor"])  # no effect once the server runs
    return context


def _lesion_sizes(label_map: sitk.Image) -> dict[int, int]:
    labels, counts = np.unique(sitk.GetArrayViewFromImage(label_map), return_counts=True)
    return {int(label): int(count) for label, count in zip(labels, counts) if label != 0}


def _integer_labels(label_map: sitk.Image) -> sitk.Image:
    """pyradiomics needs an integer label map; a float one is accepted only with whole-number labels."""
    if label_map.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        values = sitk.GetArrayViewFromImage(label_map)
        if not np.array_equal(values, np.round(values)) or values.min() < 0:
            raise RadplanInputError("label map has non-integer or negative values (a probability map?)")
        return sitk.Cast(label_map, sitk.sitkUInt32)
    return label_map


def _check_same_grid(image: sitk.Image, label_map: sitk.Image) -> None:
    if image.GetSize() != label_map.GetSize():
        raise RadplanInputError(f"image size {image.GetSize()} and label map size {label_map.GetSize()} differ")
    if not (np.allclose(image.GetOrigin(), label_map.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetSpacing(), label_map.GetSpacing(), rtol=1e-4)
            and np.allclose(image.GetDirection(), label_map.GetDirection(), atol=1e-4)):
        raise RadplanInputError("image and label map are not on the same grid (origin/spacing/direction)")


def extract_lesion_features(
    image: sitk.Image,
    label_map: sitk.Image,
    params: dict | Path,
    *,
    n_workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    min_parallel_voxels: int = PARALLEL_MIN_LESION_VOXELS,
    mode: str = "pyradiomics",
) -> pd.DataFrame:
    """One row per nonzero label of ``label_map`` (sorted by label), features as float.

    ``mode`` "pyradiomics" gives exactly what bare pyradiomics gives with ``params``; "ibsi" runs
    the IBSI preprocessing of radplan.imaging.ibsi first (same parameter file, see there).
    ``progress(done, total)`` is called after each lesion. ``n_workers`` processes are used when
    there are lesions enough to share, and, for cropped lesions, at least ``min_parallel_voxels``
    lesion voxels in all. ``df.attrs['extraction_settings']``
    holds ``extraction_settings(params, mode)``; every row names its ``radiomics_mode``. A lesion
    pyradiomics refuses (too small or flat for the settings) keeps its row with NaN features and
    the reason in ``extraction_error`` (None otherwise), so one bad lesion neither hides nor blocks
    the others. ``voxel_count`` and ``volume_ml`` are on the input grid. Raises RadplanInputError
    for mismatched grids, an empty or non-integer label map, an unknown mode.
    """
    params = params if isinstance(params, dict) else load_params(params)
    settings = extraction_settings(params, mode)
    _check_same_grid(image, label_map)
    label_map = _integer_labels(label_map)
    sizes = _lesion_sizes(label_map)
    if not sizes:
        raise RadplanInputError("label map contains no lesion (all zero)")
    voxel_ml = float(np.prod(label_map.GetSpacing())) / 1000.0
    labels = sorted(sizes)
    results: dict[int, tuple[dict[str, float], str | None]] = {}

    if mode == "ibsi":
        ibsi_inputs = _ibsi_lesion_inputs(image, label_map, labels, params)
        for label in [label for label, inputs in ibsi_inputs.items() if inputs is None]:
            results[label] = ({}, "lesion vanishes on the IBSI interpolation grid (partial volume below the threshold)")
        crops = {label: inputs for label, inputs in ibsi_inputs.items() if inputs is not None}
        # ROI sizes on the IBSI grid: shape features' mask, and what re-segmentation left for the rest.
        ibsi_counts = {
            label: {"ibsi_morphology_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(inputs[1]))) if inputs else 0,
                    "ibsi_intensity_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(inputs[2]))) if inputs else 0}
            for label, inputs in ibsi_inputs.items()
        }
    else:
        crops = _lesion_crops(image, label_map, labels) if _crops_are_exact(params) else None
        ibsi_counts = {}
    pending = [label for label in labels if label not in results]

    def task(label: int) -> tuple:
        return (label, *crops[label]) if crops else (label,)

    small = crops is not None and sum(sizes[label] for label in pending) < min_parallel_voxels
    if n_workers <= 1 or len(pending) <= 1 or small:
        _init_worker(params, image, label_map, mode)
        try:
            for label in pending:
                _, features, error = _extract_one(*task(label))
                results[label] = (features, error)
                if progress:
                    progress(len(results), len(labels))
        finally:
            _worker_state.clear()
    else:
        # With crops each task carries its lesion; without, each worker gets the whole image once.
        whole = (None, None) if crops else (image, label_map)
        with ProcessPoolExecutor(
            max_workers=min(n_workers, len(pending)),
            mp_context=_pool_context(),
            initializer=_init_worker,
            initargs=(params, *whole, mode),
        ) as pool:
            # Largest lesions first: the slowest task starts early, so the workers finish together.
            futures = [pool.submit(_extract_one, *task(label)) for label in sorted(pending, key=lambda lab: -sizes[lab])]
            for future in as_completed(futures):
                label, features, error = future.result()
                results[label] = (features, error)
                if progress:
                    progress(len(results), len(labels))

    rows = [
        {
            "lesion_label": label,
            "voxel_count": sizes[label],
            "volume_ml": sizes[label] * voxel_ml,
            **results[label][0],
            **ibsi_counts.get(label, {}),
            "extraction_error": results[label][1],
            "radiomics_mode": mode,
            "params_sha256": settings["params_sha256"],
            "pyradiomics_version": settings["pyradiomics_version"],
        }
        for label in labels
    ]
    table = pd.DataFrame(rows)
    # Feature columns in a fixed order even when the first lesion failed (its row is NaN).
    feature_columns = list(dict.fromkeys(name for label in labels for name in results[label][0]))
    ibsi_columns = ["ibsi_morphology_voxels", "ibsi_intensity_voxels"] if mode == "ibsi" else []
    table = table.reindex(columns=["lesion_label", "voxel_count", "volume_ml", *feature_columns, *ibsi_columns,
                                   "extraction_error", "radiomics_mode", "params_sha256", "pyradiomics_version"])
    table.attrs["extraction_settings"] = settings
    return table
