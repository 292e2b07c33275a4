"""Parallel radiomics: lesions of several series on the process's worker pool, same bits and order as 1 worker;
the radiomic_features table (mode and every setting recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radplan.errors import RadplanInputError
from radplan.imaging import radiomics
from radplan.imaging.radiomics import SeriesInput, extract_series_features, lesion_feature_table, load_params

FIRSTORDER_GLCM = {"setting": {"binWidth": 25, "label": 1}, "imageType": {"Original": {}},
                   "featureClass": {"firstorder": None, "glcm": None, "shape": None}}


def _series(seed: int, lesions: int) -> tuple[sitk.Image, sitk.Image]:
    """A textured 1.5 mm CT-like volume with ``lesions`` spherical lesions of different sizes (labels 1..n)."""
    rng = np.random.default_rng(seed)
    shape = (40, 48, 48)
    hu = (rng.normal(0.0, 40.0, shape) - 50.0).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    zz, yy, xx = np.indices(shape)
    for label in range(1, lesions + 1):
        centre = (8 + 11 * (label - 1), 14 + 10 * (label % 2), 16 + 8 * label)
        radius = 3.0 + 1.5 * label
        inside = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
        labels[inside] = label
        hu[inside] += 80.0 + rng.normal(0.0, 25.0, int(inside.sum()))
    image, label_map = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(labels)
    for item in (image, label_map):
        item.SetSpacing((1.5, 1.5, 1.5))
        item.SetOrigin((-36.0 + seed, -36.0, 10.0))
    return image, label_map


def _on_disk(folder: Path, name: str, image: sitk.Image, label_map: sitk.Image) -> tuple[Path, Path]:
    paths = folder / f"{name}_ct.nii.gz", folder / f"{name}_labels.nii.gz"
    sitk.WriteImage(image, str(paths[0]), useCompression=True)
    sitk.WriteImage(label_map, str(paths[1]), useCompression=True)
    return paths


@pytest.mark.slow  # starts a pool from cold: 6.7 s at a load average of 13 on 2 cores
def test_series_batch_on_two_workers_is_bit_identical_and_in_order(tmp_path):
    first, second, third = _series(1, 3), _series(2, 2), _series(3, 3)
    params = dict(FIRSTORDER_GLCM)
    inputs = [SeriesInput(*_on_disk(tmp_path, "a", *first), params),
              SeriesInput(*second, params),  # in memory, mixed with files
              SeriesInput(*_on_disk(tmp_path, "c", *third), params)]
    radiomics.shutdown_worker_pool()
    serial = extract_series_features(inputs, n_workers=1)
    calls = []
    parallel = extract_series_features(inputs, n_workers=2, min_parallel_voxels=0, progress=lambda d, t: calls.append((d, t)))
    assert radiomics._POOL.get("workers") == 2  # the pool really ran
    assert [list(table["lesion_label"]) for table in parallel] == [[1, 2, 3], [1, 2], [1, 2, 3]]
    for one, two in zip(serial, parallel):
        assert one.equals(two)  # same columns, rows and bits (not merely close)
        assert one["extraction_error"].isna().all()
    assert sorted(calls) == [(done, 8) for done in range(1, 9)]
    # A running pool is used even for little work: its start is what the threshold avoids.
    again = extract_series_features(inputs[:1], n_workers=2, min_parallel_voxels=10**9)
    assert again[0].equals(serial[0])


def test_pool_workers_are_initialised_once_with_one_itk_thread():
    image, label_map = _series(4, 3)
    pool_pids = set()
    for _ in range(2):
        extract_series_features([SeriesInput(image, label_map, FIRSTORDER_GLCM)], n_workers=2, min_parallel_voxels=0)
        pool = radiomics._worker_pool(2)
        states = [pool.submit(radiomics._worker_diagnostics).result() for _ in range(4)]
        pool_pids |= {state["pid"] for state in states}
        assert all(state["itk_threads"] == 1 for state in states)
        # One extractor per parameter set per worker, reused by every lesion and call.
        assert all(state["extractors"] <= 1 for state in states)
    assert len(pool_pids) <= 2  # the same workers served both calls


def test_bad_series_is_refused_naming_its_file(tmp_path):
    image, label_map = _series(5, 2)
    empty = sitk.Image(label_map.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(label_map)
    image_path, _ = _on_disk(tmp_path, "good", image, label_map)
    _, empty_path = _on_disk(tmp_path, "empty", image, empty)
    with pytest.raises(RadplanInputError, match="empty_labels.nii.gz: label map contains no lesion"):
        extract_series_features([SeriesInput(image_path, empty_path, FIRSTORDER_GLCM)])
    broken = tmp_path / "broken_labels.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(RadplanInputError, match="broken_labels.nii.gz: not a readable label map"):
        extract_series_features([SeriesInput(image_path, broken, FIRSTORDER_GLCM)])


@pytest.mark.parametrize("mode", ["pyradiomics", "ibsi"])
def test_feature_table_records_mode_and_every_setting(tmp_path, mode):
    image, label_map = _series(6, 2)
    volume_settings = {"modality": "CT", "spacing_mm": [1.5, 1.5, 1.5], "interpolator": "linear"}
    (tmp_path / "features").mkdir()
    _on_disk(tmp_path / "features", "s1", image, label_map)
    volumes = pd.DataFrame([{"series_uid": "1.2.3", "study_uid": "1.2", "study_date_shifted": "20240101", "modality": "CT",
                             "volume_path": "features/s1_ct.nii.gz", "settings": json.dumps(volume_settings)}])
    masks = pd.DataFrame([{"image_series_uid": "1.2.3", "source": "SEG", "mask_path": "features/s1_labels.nii.gz"}])
    table, series = lesion_feature_table(volumes, masks, tmp_path, mode=mode)
    assert series == 1 and list(table["lesion_label"]) == [1, 2]
    assert list(table.columns[:5]) == ["image_series_uid", "study_uid", "study_date_shifted", "modality", "mask_source"]
    assert (table["radiomics_mode"] == mode).all()
    record = json.loads(table["extraction_settings"].iloc[0])
    params = load_params("CT")
    params["setting"]["resampledPixelSpacing"] = None
    assert record["mode"] == mode and record["params"] == params
    assert record["volume_preprocessing"] == volume_settings
    assert record["interpolation"] == radiomics.UPSTREAM_INTERPOLATION[mode]
    assert record["params_sha256"] == table["params_sha256"].iloc[0]
    assert (record["ibsi_preprocessing"] is not None) == (mode == "ibsi")
    assert table["original_firstorder_Mean"].notna().all()
