"""Radiomics: radplan's radiomic_features step vs bare pyradiomics, and radplan on 2 workers vs 1.

Input: the first ``--patients`` demo patients (seed 7, as ``radplan demo``), every study of each
rendered by radplan.synth (the demo's phantom and lesion texture model) with its lesions,
normalized and resampled to 1.5 mm like ``normalized_volumes``, label map moved onto that grid
like ``lesion_masks``, both written as NIfTI (.nii.gz) as in the lake: one series per study.

* ``bare``: per series, read image + label map, one ``RadiomicsFeatureExtractor(params).execute``
  per label (what a user writes without radplan).
* ``radplan_1`` / ``radplan_2``: the body of the ``radiomic_features`` asset for all series at once:
  ``load_params('CT')`` with resampling off (the volumes are already isotropic),
  ``extract_series_features`` on the files (validation, per-lesion error capture, settings record)
  and the Parquet write, with 1 worker (in-process) and 2 workers (the process's worker pool, started
  before the timed runs as in a long-lived process; its cold start is recorded apart).

``radiomics_overhead``: radplan_1 vs bare on the first ``--overhead-patients`` patients (bare is
~5x slower). ``parallel_speedup_2_workers``: radplan_2 vs radplan_1 on all patients; the 1- and
2-worker tables are checked bit-identical. Wall time, engines interleaved in each repeat, median over
repeats, with the CPU seconds of the process tree (load-independent). Writes
benchmarks/results/radiomics.json. ``--parallel-only`` times radplan on 1 vs 2 workers alone and
replaces only the speed-up row: the command to rerun on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from _common import QUICK, RESULTS_DIR, load_average, result_row, write_results

from radplan.imaging import radiomics  # noqa: E402

SEED = 7
SPACING_MM = 1.5  # normalized_volumes' default grid
SPEEDUP_ROW = "parallel_speedup_2_workers"


def build_input(folder: Path, patients: int) -> list[tuple[int, Path, Path]]:
    """Write every study of the first demo patients as a normalized CT and its label map: (patient, paths) per study."""
    # Imported here: pool workers re-run this script's top level, and need none of radplan.synth.
    from radplan.imaging import volumes
    from radplan.synth.cohort import draw_patient
    from radplan.synth.ct import render_study

    series = []
    for index in range(patients):
        plan = draw_patient(SEED, index)
        for study in plan.studies:
            hu, labels, geo = render_study(plan, study, SEED)
            image, label_map = sitk.GetImageFromArray(hu), sitk.GetImageFromArray(labels)
            for item in (image, label_map):
                item.SetSpacing((geo.spacing_xy, geo.spacing_xy, geo.spacing_z))
                item.SetOrigin(geo.origin)
            normalized, _ = volumes.normalize_volume(image, "CT", None, spacing_mm=SPACING_MM)
            image_path, mask_path = folder / f"p{index}_s{study.index}_ct.nii.gz", folder / f"p{index}_s{study.index}_labels.nii.gz"
            sitk.WriteImage(normalized, str(image_path), useCompression=True)
            sitk.WriteImage(volumes.resample_mask_to(label_map, normalized), str(mask_path), useCompression=True)
            series.append((index, image_path, mask_path))
    return series


def _params() -> dict:
    params = radiomics.load_params("CT")
    params["setting"]["resampledPixelSpacing"] = None  # as the asset: the volume is already isotropic
    return params


def run_bare(series: list[tuple[int, Path, Path]]) -> int:
    from radiomics import featureextractor

    extractor, count = featureextractor.RadiomicsFeatureExtractor(_params()), 0
    for _, image_path, mask_path in series:
        image, label_map = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(mask_path))
        for label in [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label_map)) if v != 0]:
            extractor.execute(image, label_map, label=label)
            count += 1
    return count


def run_radplan(series: list[tuple[int, Path, Path]], out: Path, workers: int) -> pd.DataFrame:
    params = _params()
    tables = radiomics.extract_series_features([radiomics.SeriesInput(image, mask, params) for _, image, mask in series],
                                               n_workers=workers)
    features = pd.concat([table.assign(series=index) for index, table in enumerate(tables)], ignore_index=True)
    features["extraction_settings"] = json.dumps(tables[0].attrs["extraction_settings"], sort_keys=True, default=str)
    features.to_parquet(out)
    return features


_LAST_SPLIT: list[float] = []  # CPU seconds per process (largest first) of the last timed run


def _tree_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of this process and each descendant (the pool workers), by pid."""
    import psutil

    seconds = {}
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.Error:  # ended between listing and reading
            pass
    return seconds


def _wall(fn, *args, cpu: list | None = None) -> float:
    """Wall seconds of ``fn(*args)``; appends the CPU seconds it took in this process and its workers to ``cpu``."""
    before = _tree_cpu_seconds()
    start = time.perf_counter()
    fn(*args)
    wall = time.perf_counter() - start
    if cpu is not None:
        by_process = sorted((value - before.get(pid, 0.0) for pid, value in _tree_cpu_seconds().items()), reverse=True)
        cpu.append(sum(by_process))
        _LAST_SPLIT[:] = [round(value, 3) for value in by_process if value > 0.005]
    return wall


def _timed(engines: dict, repeats: int) -> tuple[dict, dict, list]:
    """Wall and CPU seconds per engine, engines interleaved in each repeat; CPU split of each 2-worker run."""
    times = {name: [] for name in engines}
    cpu = {name: [] for name in engines}
    split_2_workers: list[list[float]] = []
    for _ in range(repeats):
        for name, (fn, *args) in engines.items():
            times[name].append(_wall(fn, *args, cpu=cpu[name]))
            if name == "radplan_2":
                split_2_workers.append(list(_LAST_SPLIT))
    return times, cpu, split_2_workers


def _describe(series: list, table: pd.DataFrame, patients: int, times: dict, cpu: dict, repeats: int) -> dict:
    lesion_voxels = [int(count) for count in table["voxel_count"]]
    return {"unit": "s", "runs": repeats, "patients": patients, "series": len(series), "lesions": len(lesion_voxels),
            "lesion_voxels_total": int(sum(lesion_voxels)), "lesion_voxels_median": int(statistics.median(lesion_voxels)),
            "input": (f"first {patients} demo patients (synthetic CT, radplan.synth): {len(series)} series, "
                      f"{len(lesion_voxels)} lesions, {SPACING_MM} mm isotropic, NIfTI files, CT params"),
            "timing": "wall time, median of interleaved repeats",
            "times_s": {k: [round(v, 3) for v in vs] for k, vs in times.items()},
            # Load-independent: CPU seconds of the bench process and its pool workers per run. Equal medians
            # for radplan_1 and radplan_2 mean the pool adds no work, only spreads it.
            "cpu_s": {k: [round(v, 3) for v in vs] for k, vs in cpu.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4 if QUICK else 12, help="demo patients for the speed-up")
    parser.add_argument("--overhead-patients", type=int, default=2 if QUICK else 3,
                        help="the first of those for radplan vs bare pyradiomics (bare is ~5x slower)")
    parser.add_argument("--repeats", type=int, default=3 if QUICK else 5)
    parser.add_argument("--parallel-only", action="store_true", help="1 vs 2 workers only; replace only the speed-up row")
    args = parser.parse_args(argv)

    import logging

    import radiomics as pyradiomics

    pyradiomics.setVerbosity(logging.WARNING)
    load_at_start = load_average()
    results = []
    with tempfile.TemporaryDirectory(prefix="radplan-bench-radiomics-") as tmp:
        folder = Path(tmp)
        series = build_input(folder, args.patients)
        out = folder / "features.parquet"
        if not args.parallel_only:
            subset = [item for item in series if item[0] < args.overhead_patients]
            run_bare(subset[:1])  # warm-up: imports, pyradiomics C extensions
            subset_table = run_radplan(subset, out, 1)  # warm-up: pyarrow
            times, cpu, _ = _timed({"bare": (run_bare, subset), "radplan_1": (run_radplan, subset, out, 1)}, args.repeats)
            results.append(result_row(
                "radiomics_overhead", radplan=round(statistics.median(times["radplan_1"]), 3),
                peer=round(statistics.median(times["bare"]), 3),
                ratio=round(statistics.median(times["radplan_1"]) / statistics.median(times["bare"]), 3), target="<= 1.10",
                lower_is_better=True, peer_tool="pyradiomics RadiomicsFeatureExtractor.execute per label",
                load_average_at_start=load_at_start, **_describe(subset, subset_table, args.overhead_patients, times, cpu, args.repeats)))
        one_worker = run_radplan(series, out, 1)
        # The first 2-worker call of the process starts the pool (forkserver, workers importing pyradiomics)
        # that its later calls reuse: timed apart.
        cold_2_workers = _wall(run_radplan, series, out, 2)
        # Same rows, same order, same bits (NaN of refused lesions compare equal in .equals).
        identical = one_worker.equals(run_radplan(series, out, 2))
        if not identical:
            raise SystemExit("radplan on 2 workers gave another table than on 1")
        load_before_speedup = load_average()
        times, cpu, split_2_workers = _timed({"radplan_1": (run_radplan, series, out, 1),
                                              "radplan_2": (run_radplan, series, out, 2)}, args.repeats)
    radiomics.shutdown_worker_pool()
    median = {name: statistics.median(values) for name, values in times.items()}
    results.append(result_row(
        SPEEDUP_ROW, radplan=round(median["radplan_2"], 3), peer=round(median["radplan_1"], 3),
        ratio=round(median["radplan_1"] / median["radplan_2"], 3), target=">= 1.7",
        peer_tool="radplan with 1 worker (radplan column: 2 workers)", load_average_at_start=load_before_speedup,
        cold_2_workers_s=round(cold_2_workers, 3), bit_identical_1_vs_2_workers=identical,
        # Per 2-worker run: CPU seconds of each process (the 2 workers, and the caller reading series and
        # cutting lesions), largest first: how evenly the work is spread, whatever the machine's load.
        cpu_s_per_process_2_workers=split_2_workers,
        rerun="PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_radiomics.py --parallel-only",
        **_describe(series, one_worker, args.patients, times, cpu, args.repeats)))
    if args.parallel_only:
        previous = json.loads((RESULTS_DIR / "radiomics.json").read_text()) if (RESULTS_DIR / "radiomics.json").exists() else []
        results = [row for row in previous if row["name"] == "radiomics_overhead"] + results
    write_results("radiomics.json", results)
    for row in results:
        print(f"{row['name']}: ratio {row['ratio']} ({row['input']}; load average {row['load_average_at_start']} -> "
              f"{row['load_average']})")
        for name, values in row["times_s"].items():
            print(f"  {name:10s} wall median {statistics.median(values):6.2f} s {values}  "
                  f"cpu median {statistics.median(row['cpu_s'][name]):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
