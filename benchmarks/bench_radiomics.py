"""Radiomics: radplan's radiomic_features step vs bare pyradiomics on the same image, mask and parameters.

Input: one synthetic chest CT rendered by radplan.synth (the demo's phantom and lesion
texture model) carrying ``--lesions`` lesions taken from the first demo patients (seed 7),
normalized and resampled to 1.5 mm like ``normalized_volumes``, written as NRRD.

* ``bare``: read image + label map, one ``RadiomicsFeatureExtractor(params).execute`` per label
  (what a user writes without radplan).
* ``radplan``: the body of the ``radiomic_features`` asset: read image + label map,
  ``load_params('CT')`` with resampling off (the volume is already isotropic),
  ``extract_lesion_features`` (validation, per-lesion error capture, settings record) and the
  Parquet write; with 1 worker (overhead) and 2 workers (parallel speed-up; pool start included,
  the forkserver already running as in a long-lived worker process; the cold first call is recorded too).

Wall time, engines interleaved in each repeat, median over repeats.
Writes benchmarks/results/radiomics.json (``radiomics_overhead``, ``radiomics_parallel_speedup``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from _common import QUICK, result_row, write_results

from radplan.imaging import radiomics  # noqa: E402

SEED = 7
SPACING_MM = 1.5  # normalized_volumes' default grid


def _reach(lesion) -> float:
    """How far (mm) a lesion's ellipsoid and lobes extend from its centre (as the phantom renders them)."""
    mean_radius = sum(lesion.radii_mm) / 3.0
    return max(lesion.radii_mm) + max((float(np.abs(offset).max()) + mean_radius * scale for offset, scale in lesion.lobes),
                                      default=0.0)


def _collect_lesions(count: int):
    """``count`` non-overlapping lesions from the first demo patients, and the study to render them in."""
    # Imported here: process-pool workers re-import this module, and need none of radplan.synth.
    from radplan.synth.cohort import draw_patient

    chosen, base_study = [], None
    for index in range(200):
        plan = draw_patient(SEED, index)
        for study in plan.studies:
            base_study = base_study or study
            for lesion in study.lesions:
                if all(np.linalg.norm(np.subtract(lesion.center_mm, other.center_mm)) > _reach(lesion) + _reach(other) + 2.0
                       for other in chosen):
                    chosen.append(lesion)
                if len(chosen) == count:
                    return plan, dataclasses.replace(base_study, lesions=chosen)
    raise RuntimeError(f"could not place {count} separate lesions")


def build_input(folder: Path, lesions: int) -> tuple[Path, Path, int]:
    """Write the normalized CT and its label map; returns their paths and the number of labels present."""
    from radplan.imaging import volumes
    from radplan.synth.ct import render_study

    plan, study = _collect_lesions(lesions)
    hu, labels, geo = render_study(plan, study, SEED)
    spacing = (geo.spacing_xy, geo.spacing_xy, geo.spacing_z)
    image = sitk.GetImageFromArray(hu)
    label_map = sitk.GetImageFromArray(labels)
    for item in (image, label_map):
        item.SetSpacing(spacing)
        item.SetOrigin(geo.origin)
    normalized, _ = volumes.normalize_volume(image, "CT", None, spacing_mm=SPACING_MM)
    on_grid = volumes.resample_mask_to(label_map, normalized)
    image_path, mask_path = folder / "ct.nrrd", folder / "labels.nrrd"
    sitk.WriteImage(normalized, str(image_path))
    sitk.WriteImage(on_grid, str(mask_path))
    present = len(np.unique(sitk.GetArrayViewFromImage(on_grid))) - 1
    return image_path, mask_path, present


def _params() -> dict:
    params = radiomics.load_params("CT")
    params["setting"]["resampledPixelSpacing"] = None  # as the asset: the volume is already isotropic
    return params


def run_bare(image_path: Path, mask_path: Path) -> int:
    from radiomics import featureextractor

    image, label_map = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    extractor = featureextractor.RadiomicsFeatureExtractor(_params())
    labels = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label_map)) if v != 0]
    return len([extractor.execute(image, label_map, label=label) for label in labels])


def run_radplan(image_path: Path, mask_path: Path, out: Path, workers: int) -> int:
    image, label_map = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
    params = _params()
    features = radiomics.extract_lesion_features(image, label_map, params, n_workers=workers)
    features["extraction_settings"] = json.dumps(radiomics.extraction_settings(params), sort_keys=True, default=str)
    features.to_parquet(out)
    return len(features)


def _wall(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=4 if QUICK else 6)
    parser.add_argument("--repeats", type=int, default=1 if QUICK else 3)
    args = parser.parse_args(argv)

    import logging

    import radiomics as pyradiomics

    pyradiomics.setVerbosity(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="radplan-bench-radiomics-") as tmp:
        folder = Path(tmp)
        image_path, mask_path, present = build_input(folder, args.lesions)
        size = sitk.ReadImage(str(image_path)).GetSize()
        out = folder / "features.parquet"
        # Warm-up: imports, pyradiomics C extensions, pyarrow; the first 2-worker call also starts the
        # forkserver that later pools of the process reuse (recorded apart as the cold 2-worker time).
        run_bare(image_path, mask_path)
        run_radplan(image_path, mask_path, out, 1)
        cold_2_workers = _wall(run_radplan, image_path, mask_path, out, 2)
        times: dict[str, list[float]] = {"bare": [], "radplan_1": [], "radplan_2": []}
        for _ in range(args.repeats):
            times["bare"].append(_wall(run_bare, image_path, mask_path))
            times["radplan_1"].append(_wall(run_radplan, image_path, mask_path, out, 1))
            times["radplan_2"].append(_wall(run_radplan, image_path, mask_path, out, 2))
    median = {name: statistics.median(values) for name, values in times.items()}
    common = {"unit": "s", "runs": args.repeats, "lesions": present, "image_size": list(size),
              "input": f"synthetic CT (radplan.synth phantom), {present} lesions, {SPACING_MM} mm isotropic, CT params",
              "timing": "wall time, median of interleaved repeats", "cold_2_workers_s": round(cold_2_workers, 3),
              "times_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()}}
    results = [
        result_row("radiomics_overhead", radplan=round(median["radplan_1"], 3), peer=round(median["bare"], 3),
                   ratio=round(median["radplan_1"] / median["bare"], 3), target="<= 1.10", lower_is_better=True,
                   peer_tool="pyradiomics RadiomicsFeatureExtractor.execute per label", **common),
        result_row("radiomics_parallel_speedup", radplan=round(median["radplan_2"], 3), peer=round(median["radplan_1"], 3),
                   ratio=round(median["radplan_1"] / median["radplan_2"], 3), target=">= 1.7",
                   peer_tool="radplan with 1 worker (radplan column: 2 workers)", **common),
    ]
    write_results("radiomics.json", results)
    for name, values in times.items():
        print(f"{name:10s} median {median[name]:7.2f} s  runs {[round(v, 2) for v in values]}")
    for row in results:
        print(f"{row['name']}: ratio {row['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
