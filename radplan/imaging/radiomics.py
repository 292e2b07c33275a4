"""Per-lesion radiomic features with pyradiomics, and the settings stored beside them.

Parameters are pyradiomics parameter files (``setting`` / ``imageType`` / ``featureClass``);
``params/{ct,mr,pet}.yaml`` are the IBSI-aligned defaults, one comment per choice.
Every lesion label of the label map gives one row: ``lesion_label``, ``voxel_count`` and
``volume_ml`` (on the input grid), every pyradiomics feature (``original_<class>_<Feature>``)
as float, ``extraction_error`` (None, or why pyradiomics refused that lesion; its features
are then NaN), and ``params_sha256`` / ``pyradiomics_version`` so any row can be traced to the
exact settings (``extraction_settings`` gives the full record).

Lesions are extracted in parallel by the process's worker pool (``_worker_pool``: forkserver with
pyradiomics preloaded, started on first use and kept, ITK at one thread per worker, one extractor per
parameter set per worker), one task per lesion, lesions of several series (``extract_series_features``:
a patient's studies, or a cohort) in one batch. When pyradiomics would read nothing outside a lesion's
bounding box (original image, no resampling, no normalization: the ``radiomic_features`` asset's case,
its volumes being resampled already; and IBSI mode), the calling process reads one series at a time and
sends each lesion's crop; otherwise a worker reads each series' files once. Results are assembled in a
fixed order and are bit-identical whatever the number of workers. A few small lesions are extracted
in-process while no pool runs: starting one would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
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

# Per process (the caller, or a pool worker): pyradiomics extractors by parameters, the batch's loaded series.
_worker_state: dict = {}
_POOL: dict = {}  # the process's worker pool and its size (_worker_pool)
# Series a worker keeps loaded: tasks come series by series, so the current one and the one before suffice.
WORKER_SERIES_CACHE = 2
CROP_RIM_VOXELS = 2
# Cropped lesions smaller than this in all are extracted in-process when the process has no worker pool
# running yet: starting one (forkserver, workers importing pyradiomics) costs more than it saves on them.
# Measured before the pool was kept per process: 6 demo lesions (10.7k voxels) took 0.3 s on 1 worker and
# 0.34 s on 2; two lesions of 70k voxels in all 0.70 s on 1 worker and 0.81 s on 2. A demo patient has
# ~14k lesion voxels at 1.5 mm (~0.15 s on 1 worker): extracted in-process unless a pool is running.
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


def _cut(image: sitk.Image, extent: list, origin: list) -> sitk.Image:
    """``sitk.RegionOfInterest`` on one thread: a lesion's box is too small to share (a 30^3 crop: 0.26 ms wall on
    one thread, 0.47 ms on ITK's default pool, measured), and while a pool runs its workers own the cores."""
    region = sitk.RegionOfInterestImageFilter()
    region.SetNumberOfThreads(1)
    region.SetSize(extent)
    region.SetIndex(origin)
    return region.Execute(image)


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


def _pool_context():
    """forkserver with radiomics preloaded: workers never inherit the caller's threads/locks (Dagster,
    loggers), and after the first pool of a process they start in ~0.1 s instead of re-importing
    pyradiomics/SimpleITK/pandas (~2-3 s), which dominated small-lesion extractions."""
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__, "radiomics.featureextractor"])  # no effect once the server runs
    return context


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


@dataclass(frozen=True)
class SeriesInput:
    """One image and its lesion label map (same grid), each in memory or as a file, with its parameters."""

    image: sitk.Image | str | Path
    label_map: sitk.Image | str | Path
    params: dict | Path


@dataclass
class _Series:
    """A series in the calling process: checked label map, lesion sizes and boxes; the image read when first needed."""

    image: sitk.Image | None  # None: not read yet (or released), from image_file
    image_file: Path | None
    label_map: sitk.Image  # integer labels
    label_map_file: Path | None
    params: dict
    mode: str
    settings: dict
    boxes: sitk.LabelShapeStatisticsImageFilter
    _ibsi_image: sitk.Image | None = None

    @property
    def sizes(self) -> dict[int, int]:
        return {int(label): int(self.boxes.GetNumberOfPixels(label)) for label in self.boxes.GetLabels()}

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.label_map.GetSpacing())) / 1000.0

    def loaded_image(self) -> sitk.Image:
        if self.image is None:
            self.image = sitk.ReadImage(str(self.image_file))
        return self.image

    def ibsi_image(self) -> sitk.Image:
        # The IBSI grid depends on the whole image's extent: interpolated once per series, then cut per lesion.
        if self._ibsi_image is None:
            self._ibsi_image = interpolate_image(self.loaded_image(), ibsi_settings(self.params))
        return self._ibsi_image

    def release(self) -> None:
        """Drop pixels read from a file once every lesion is sent: a batch holds one series' image at a time."""
        self._ibsi_image = None
        if self.image_file is not None:
            self.image = None


def _image_header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise RadplanInputError(f"not a readable image ({str(exc).strip().splitlines()[-1]})") from exc
    return reader


def _read_series(item: SeriesInput, mode: str) -> _Series:
    """Checks a series (same grid, integer labels, at least one lesion) and measures its lesions.

    Errors name the file. A label map given as a file is read here; an image given as a file only has
    its header read (its pixels are read when the lesions are cut, or by the workers).
    """
    params = item.params if isinstance(item.params, dict) else load_params(item.params)
    image_file = Path(item.image) if isinstance(item.image, (str, Path)) else None
    label_map_file = Path(item.label_map) if isinstance(item.label_map, (str, Path)) else None
    try:
        if label_map_file is None:
            label_map = item.label_map
        else:
            try:
                label_map = sitk.ReadImage(str(label_map_file))
            except RuntimeError as exc:
                raise RadplanInputError(f"not a readable label map ({str(exc).strip().splitlines()[-1]})") from exc
        try:
            _check_same_grid(_image_header(image_file) if image_file else item.image, label_map)
        except RadplanInputError as error:
            raise RadplanInputError(f"{image_file.name}: {error}" if image_file else str(error)) from error
        label_map = _integer_labels(label_map)
        boxes = sitk.LabelShapeStatisticsImageFilter()
        boxes.SetComputePerimeter(False)  # only sizes and bounding boxes are read
        boxes.SetNumberOfThreads(1)  # while a pool runs, its workers own the cores
        boxes.Execute(label_map)
        if not boxes.GetLabels():
            raise RadplanInputError("label map contains no lesion (all zero)")
    except RadplanInputError as error:
        raise RadplanInputError(f"{label_map_file.name}: {error}" if label_map_file else str(error)) from error
    return _Series(None if image_file else item.image, image_file, label_map, label_map_file, params, mode,
                   extraction_settings(params, mode), boxes)


def _lesion_input(series: _Series, label: int) -> tuple[tuple | None, str | None, dict[str, int]]:
    """(what pyradiomics receives for a lesion, or None and why it is not extracted, the IBSI ROI sizes).

    The lesion's bounding box cut from the image and label map when that is exact (``_crops_are_exact``);
    in IBSI mode cut from the IBSI grid with the lesion's morphological and intensity masks (label 1) and
    its FBS lower bound; otherwise (None, None, label): pyradiomics needs the whole series.
    """
    if series.mode == "ibsi":
        settings = ibsi_settings(series.params)
        interpolated = series.ibsi_image()
        morphology = interpolate_mask(series.label_map == int(label), interpolated, settings)
        morphology_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(morphology)))
        if not morphology_voxels:
            return (None, "lesion vanishes on the IBSI interpolation grid (partial volume below the threshold)",
                    {"ibsi_morphology_voxels": 0, "ibsi_intensity_voxels": 0})
        intensity_mask = resegment(interpolated, morphology, settings)
        counts = {"ibsi_morphology_voxels": morphology_voxels,
                  "ibsi_intensity_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(intensity_mask)))}
        lower_bound = fixed_bin_width_lower_bound(settings, interpolated, intensity_mask)
        extent, origin = _crop_box(morphology, 1)
        crops = tuple(_cut(item, extent, origin) for item in (interpolated, morphology, intensity_mask))
        return (*crops, lower_bound, counts["ibsi_intensity_voxels"]), None, counts
    if _crops_are_exact(series.params):
        extent, origin = _crop_box(series.label_map, label, series.boxes)
        image, label_map = (_cut(item, extent, origin) for item in (series.loaded_image(), series.label_map))
        return (image, label_map, label), None, {}
    return (None, None, label), None, {}


def _extractors(params: dict, mode: str) -> dict:
    """The pyradiomics extractor(s) for these parameters, built once per process and reused for every lesion."""
    key = mode + json.dumps(params, sort_keys=True, default=str)
    cache = _worker_state.setdefault("extractors", {})
    if key not in cache:
        if mode == "ibsi":
            intensity, shape = _ibsi_pyradiomics_params(params)
            cache[key] = {"intensity": intensity and _extractor(intensity), "shape": shape and _extractor(shape)}
        else:
            cache[key] = {"extractor": _extractor(params)}
    return cache[key]


def _features(result: dict) -> dict[str, float]:
    return {name: float(np.asarray(value)) for name, value in result.items() if not name.startswith("diagnostics_")}


def _extract(params: dict, mode: str, inputs: tuple, whole: tuple[sitk.Image, sitk.Image] | None = None) -> tuple[dict[str, float], str | None]:
    """Features of one lesion from ``_lesion_input``'s inputs (``whole``: the series' image and label map,
    for inputs without a crop), or why pyradiomics refused it (an ROI too small or flat for the settings)."""
    extractors = _extractors(params, mode)
    features: dict[str, float] = {}
    try:
        if mode == "ibsi":
            image, morphology, intensity_mask, lower_bound, intensity_voxels = inputs
            if extractors["shape"] is not None:
                features.update(_features(extractors["shape"].execute(image, morphology, label=1)))
            if extractors["intensity"] is not None:
                if not intensity_voxels:
                    raise ValueError("no voxel left in the ROI after IBSI re-segmentation")
                with fixed_bin_width_from(lower_bound):
                    features.update(_features(extractors["intensity"].execute(image, intensity_mask, label=1)))
        else:
            image, label_map, label = inputs
            if image is None:
                image, label_map = whole
            features = _features(extractors["extractor"].execute(image, label_map, label=int(label)))
    except (ValueError, AssertionError, RadplanInputError) as exc:
        return {}, f"{type(exc).__name__}: {exc}"
    return features, None


def _init_pool_worker() -> None:
    # n workers share n cores: ITK's own threads (one per core by default) would oversubscribe them.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _pool_task(batch: str, index: int, files: tuple[str, str] | None, params: dict, mode: str, label: int,
               inputs: tuple) -> tuple:
    """One lesion, in a pool worker. A lesion without a crop needs its whole series: the worker reads the
    series' files on its first such lesion and keeps the current batch's last ``WORKER_SERIES_CACHE`` series."""
    whole = None
    if mode == "pyradiomics" and inputs[0] is None:
        cache = _worker_state.setdefault("series", {})
        if _worker_state.get("batch") != batch:
            cache.clear()
            _worker_state["batch"] = batch
        if index not in cache:
            while len(cache) >= WORKER_SERIES_CACHE:
                cache.pop(next(iter(cache)))
            image_file, label_map_file = files
            cache[index] = (sitk.ReadImage(image_file), _integer_labels(sitk.ReadImage(label_map_file)))
        whole = cache[index]
    return index, label, *_extract(params, mode, inputs, whole)


def _worker_diagnostics() -> dict:
    """A pool worker's state (tested: one ITK thread, extractors built once)."""
    import os

    return {"pid": os.getpid(), "itk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(),
            "extractors": len(_worker_state.get("extractors", {}))}


def _worker_pool(n_workers: int) -> ProcessPoolExecutor:
    """The process's radiomics worker pool, started on first use and kept: each worker imports pyradiomics
    and SimpleITK once (forkserver preload) and builds each extractor once, whatever the number of calls.
    Replaced when another number of workers is asked for."""
    pool = _POOL.get("executor")
    if pool is not None and _POOL["workers"] != n_workers:
        shutdown_worker_pool()
        pool = None
    if pool is None:
        pool = ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context(), initializer=_init_pool_worker)
        _POOL.update(workers=n_workers, executor=pool)
    return pool


def shutdown_worker_pool() -> None:
    """Stop the radiomics worker pool (a later parallel extraction starts a new one)."""
    pool = _POOL.pop("executor", None)
    _POOL.pop("workers", None)
    if pool is not None:
        pool.shutdown()


def _series_files(series: _Series, index: int, folder: Path) -> tuple[str, str]:
    """Files a worker reads a whole series from: its own, or for one in memory an uncompressed MetaImage copy
    written once (MetaImage keeps spacing, origin and direction exactly; NRRD and NIfTI round them)."""
    paths = []
    for name, given, in_memory in (("image", series.image_file, series.image), ("labels", series.label_map_file, series.label_map)):
        if given is not None:
            paths.append(str(given))
        else:
            path = folder / f"series{index}_{name}.mha"
            sitk.WriteImage(in_memory, str(path), False)
            paths.append(str(path))
    return paths[0], paths[1]


def _feature_table(series: _Series, results: dict[int, tuple], mode: str) -> pd.DataFrame:
    sizes, voxel_ml = series.sizes, series.voxel_ml
    labels = sorted(sizes)
    rows = [
        {
            "lesion_label": label,
            "voxel_count": sizes[label],
            "volume_ml": sizes[label] * voxel_ml,
            **results[label][0],
            **results[label][2],
            "extraction_error": results[label][1],
            "radiomics_mode": mode,
            "params_sha256": series.settings["params_sha256"],
            "pyradiomics_version": series.settings["pyradiomics_version"],
        }
        for label in labels
    ]
    table = pd.DataFrame(rows)
    # Feature columns in a fixed order even when the first lesion failed (its row is NaN).
    feature_columns = list(dict.fromkeys(name for label in labels for name in results[label][0]))
    ibsi_columns = ["ibsi_morphology_voxels", "ibsi_intensity_voxels"] if mode == "ibsi" else []
    table = table.reindex(columns=["lesion_label", "voxel_count", "volume_ml", *feature_columns, *ibsi_columns,
                                   "extraction_error", "radiomics_mode", "params_sha256", "pyradiomics_version"])
    table.attrs["extraction_settings"] = series.settings
    return table


def extract_series_features(
    series: Sequence[SeriesInput],
    *,
    n_workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    min_parallel_voxels: int = PARALLEL_MIN_LESION_VOXELS,
    mode: str = "pyradiomics",
) -> list[pd.DataFrame]:
    """One feature table per series (``extract_lesion_features``' table), the lesions of all series extracted together.

    With ``n_workers`` > 1 each lesion is one task of the process's worker pool (``_worker_pool``).
    The calling process reads one series at a time and sends each lesion's crop while the workers
    extract the lesions sent before; when pyradiomics needs the whole series (filters, resampling,
    normalization) a worker reads the series' files once instead (an image in memory is written once
    to a temporary file). Tables and rows come in a fixed order (series as given, lesions by label)
    whatever the number of workers, with bit-identical features. The pool is used when there are
    several lesions and, when every lesion is cropped (pyradiomics mode with exact crops, IBSI mode),
    at least ``min_parallel_voxels`` lesion voxels in all. ``progress(done, total)`` counts lesions.
    """
    _check_mode(mode)
    items = [_read_series(item, mode) for item in series]
    sizes = [item.sizes for item in items]
    total = sum(len(by_label) for by_label in sizes)
    results: dict[int, dict[int, tuple]] = {index: {} for index in range(len(items))}
    cropped = mode == "ibsi" or all(_crops_are_exact(item.params) for item in items)
    # Starting the pool is what costs (forkserver, worker imports): worth it for enough work only; a running
    # pool is used whatever the work.
    pool_running = _POOL.get("workers") == n_workers
    small = cropped and not pool_running and sum(sum(by_label.values()) for by_label in sizes) < min_parallel_voxels

    def record(index: int, label: int, outcome: tuple) -> None:
        results[index][label] = outcome
        if progress:
            progress(sum(len(done) for done in results.values()), total)

    def lesions(index: int) -> list[int]:
        # Largest first: the slowest tasks start early, so the workers finish together.
        return sorted(sizes[index], key=lambda label: -sizes[index][label])

    if n_workers <= 1 or total <= 1 or small:
        for index, item in enumerate(items):
            for label in lesions(index):
                inputs, error, counts = _lesion_input(item, label)
                whole = None if inputs is None or inputs[0] is not None else (item.loaded_image(), item.label_map)
                outcome = _extract(item.params, mode, inputs, whole) if inputs is not None else ({}, error)
                record(index, label, (*outcome, counts))
            item.release()
        return [_feature_table(item, results[index], mode) for index, item in enumerate(items)]

    counts_by_lesion: dict[tuple[int, int], dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="radplan-radiomics-") as folder:
        pool, batch, futures = _worker_pool(n_workers), uuid.uuid4().hex, []
        try:
            for index, item in enumerate(items):
                files = None if cropped else _series_files(item, index, Path(folder))
                for label in lesions(index):
                    inputs, error, counts = _lesion_input(item, label)
                    if inputs is None:
                        record(index, label, ({}, error, counts))
                        continue
                    counts_by_lesion[index, label] = counts
                    futures.append(pool.submit(_pool_task, batch, index, files, item.params, mode, label, inputs))
                item.release()
            for future in as_completed(futures):
                index, label, features, error = future.result()
                record(index, label, (features, error, counts_by_lesion[index, label]))
        except BrokenProcessPool:
            shutdown_worker_pool()  # a worker died (e.g. killed): the next call starts a fresh pool
            raise
    return [_feature_table(item, results[index], mode) for index, item in enumerate(items)]


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
    lesion voxels in all (``extract_series_features`` for one series). ``df.attrs['extraction_settings']``
    holds ``extraction_settings(params, mode)``; every row names its ``radiomics_mode``. A lesion
    pyradiomics refuses (too small or flat for the settings) keeps its row with NaN features and
    the reason in ``extraction_error`` (None otherwise), so one bad lesion neither hides nor blocks
    the others. ``voxel_count`` and ``volume_ml`` are on the input grid. Raises RadplanInputError
    for mismatched grids, an empty or non-integer label map, an unknown mode.
    """
    return extract_series_features([SeriesInput(image, label_map, params)], n_workers=n_workers, progress=progress,
                                   min_parallel_voxels=min_parallel_voxels, mode=mode)[0]


# How the radiomic_features asset's volumes reach radiomics, recorded beside its features: they are
# resampled upstream, so neither pyradiomics nor the IBSI preprocessing interpolates again.
UPSTREAM_INTERPOLATION = {
    "pyradiomics": "none here: the image was resampled by normalized_volumes (volume_preprocessing: linear, "
                   "origin-aligned grid) and the label map moved onto it by nearest neighbour (lesion_masks)",
    "ibsi": "not IBSI: the image was resampled by normalized_volumes (volume_preprocessing: linear, origin-aligned "
            "grid, not the IBSI centre-aligned grid) and the label map moved onto it by nearest neighbour (lesion_masks), "
            "not interpolated with a partial-volume threshold; IBSI rounding, re-segmentation and discretisation apply. "
            "Fully IBSI-conformant features: `radplan radiomics --mode ibsi` on the original series",
}


def lesion_feature_table(volumes: pd.DataFrame, masks: pd.DataFrame, root: Path, *, mode: str = "pyradiomics",
                         n_workers: int = 1, progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, int]:
    """The ``radiomic_features`` table of one patient and how many series it covers.

    ``volumes``: ``normalized_volumes`` rows; ``masks``: the preferred lesion masks (``image_series_uid``,
    ``source``, ``mask_path``); paths are relative to ``root`` (the lake). One row per lesion of every
    masked series, the lesions of all series extracted together (``extract_series_features``), with the
    parameter file of the series' modality, its resampling off (the volumes are resampled already).
    Every row carries ``extraction_settings``: ``extraction_settings(params, mode)`` plus the upstream
    ``volume_preprocessing`` and what ``interpolation`` the features saw (``UPSTREAM_INTERPOLATION``).
    """
    _check_mode(mode)
    inputs, context = [], []
    for mask in masks.itertuples():
        volume = volumes[volumes["series_uid"] == mask.image_series_uid].iloc[0]
        params = load_params(volume["modality"])
        params["setting"]["resampledPixelSpacing"] = None  # interpolate once (upstream), not twice
        inputs.append(SeriesInput(root / volume["volume_path"], root / mask.mask_path, params))
        context.append((mask, volume))
    tables = extract_series_features(inputs, n_workers=n_workers, progress=progress, mode=mode)
    frames = []
    for table, (mask, volume) in zip(tables, context):
        for position, (name, value) in enumerate((("image_series_uid", mask.image_series_uid), ("study_uid", volume["study_uid"]),
                                                  ("study_date_shifted", volume["study_date_shifted"]),
                                                  ("modality", volume["modality"]), ("mask_source", mask.source))):
            table.insert(position, name, value)
        record = {**table.attrs["extraction_settings"], "volume_preprocessing": json.loads(volume["settings"]),
                  "interpolation": UPSTREAM_INTERPOLATION[mode]}
        table["extraction_settings"] = json.dumps(record, sort_keys=True, default=str)
        frames.append(table)
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), len(frames)
