"""Peak memory of the imaging chain's per-study steps for one 512 x 512 x 300 CT series.

The parent writes a synthetic 512 x 512 x 300 CT series (0.78 mm pixels, 1.25 mm slices, int16,
the demo's DICOM header with its PHI, via ``radplan.synth.ct.ct_datasets``) and a lesion label map
on the same grid. A child process then runs the per-study steps as the assets do, each step reading
what the previous one wrote: de-identification of every instance (``deidentify_file``) -> volume
(``load_series_volume``) -> normalization and 1.5 mm resampling (``normalize_volume``, written
as NRRD) -> label map onto that grid -> radiomics (``extract_lesion_features``, 2 workers as the
asset). Peak memory is sampled every 50 ms as the summed RSS of the child and all its
descendants (the radiomics workers included); the child's own ``ru_maxrss`` is recorded too.

Writes benchmarks/results/memory.json (``ct_series_peak_memory``; target <= 2.5 GiB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import QUICK, REPO, result_row, write_results

LIMIT_GIB = 2.5


def write_series(folder: Path, matrix: int, n_slices: int) -> tuple[Path, Path]:
    """The DICOM series and its label map (NRRD, same grid); returns (dicom folder, label map path)."""
    import dataclasses

    import numpy as np
    import SimpleITK as sitk

    from radplan.synth.cohort import draw_patient
    from radplan.synth.ct import Geometry, ct_datasets

    plan = draw_patient(7, 0)
    spacing_xy, spacing_z = 0.78, 1.25
    study = dataclasses.replace(plan.studies[0], n_slices=n_slices, pixel_spacing=spacing_xy, slice_thickness=spacing_z)
    half = (matrix - 1) / 2 * spacing_xy
    geo = Geometry(n_slices, spacing_xy, spacing_z, (-half, -half, -100.0 - (n_slices - 1) / 2 * spacing_z))
    rng = np.random.default_rng(7)
    y, x = np.mgrid[:matrix, :matrix].astype(np.float32) * spacing_xy - half
    body = (x / 180.0) ** 2 + (y / 140.0) ** 2 <= 1.0
    lungs = ((np.abs(x) - 90.0) / 55.0) ** 2 + ((y + 10.0) / 80.0) ** 2 <= 1.0
    base = np.where(body, np.where(lungs, -850, 40), -1000).astype(np.int16)
    hu = np.empty((n_slices, matrix, matrix), dtype=np.int16)
    labels = np.zeros((n_slices, matrix, matrix), dtype=np.uint8)
    z_mm = (np.arange(n_slices) - n_slices / 2) * spacing_z
    lesion_xy = ((x + 60.0) ** 2 + (y - 20.0) ** 2)
    for k in range(n_slices):  # slice by slice: the generator's own footprint stays small
        noise = rng.normal(0.0, 12.0, (matrix, matrix)).astype(np.float32)
        slice_hu = base + noise.astype(np.int16) * body
        inside = lesion_xy + z_mm[k] ** 2 <= 25.0**2
        slice_hu[inside] = 60 + noise[inside].astype(np.int16) * 3
        hu[k], labels[k] = slice_hu, inside
    dicom = folder / "dicom"
    dicom.mkdir()
    for index, ds in enumerate(ct_datasets(plan, study, 7, hu, geo)):
        ds.Rows = ds.Columns = matrix  # ct_datasets' shared header says the demo's 128
        ds.save_as(dicom / f"{index:04d}.dcm", enforce_file_format=True)
    label_map = sitk.GetImageFromArray(labels)
    label_map.SetSpacing((spacing_xy, spacing_xy, spacing_z))
    label_map.SetOrigin(geo.origin)
    mask_path = folder / "labels.nrrd"
    sitk.WriteImage(label_map, str(mask_path))
    return dicom, mask_path


def child(dicom: Path, mask_path: Path, work: Path) -> None:
    """The per-study steps, as the assets run them; prints one JSON line of per-step times and ru_maxrss."""
    import resource

    import pydicom
    import SimpleITK as sitk

    from radplan.imaging import radiomics, volumes
    from radplan.imaging.deid import DeidOptions, deidentify_file
    from radplan.pseudonym import DEMO_KEY, Pseudonymizer

    steps: dict[str, dict] = {}

    def mark(name: str, started: float) -> None:
        steps[name] = {"seconds": round(time.perf_counter() - started, 2),
                       "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

    started = time.perf_counter()
    pseudonymizer, options = Pseudonymizer(DEMO_KEY), DeidOptions()
    outputs = [deidentify_file(path, work / "deid", pseudonymizer, options).output_path for path in sorted(dicom.iterdir())]
    mark("deidentify", started)

    started = time.perf_counter()
    image = volumes.load_series_volume(outputs)
    mark("load_series_volume", started)

    started = time.perf_counter()
    normalized, _ = volumes.normalize_volume(image, "CT", pydicom.dcmread(outputs[0], stop_before_pixels=True), spacing_mm=1.5)
    del image
    volume_path = work / "volume.nrrd"
    sitk.WriteImage(normalized, str(volume_path), useCompression=True)
    on_grid = volumes.resample_mask_to(sitk.ReadImage(str(mask_path)), normalized)
    del normalized
    mask_on_grid = work / "mask.nrrd"
    sitk.WriteImage(on_grid, str(mask_on_grid), useCompression=True)
    mark("normalize_and_resample", started)

    started = time.perf_counter()
    params = radiomics.load_params("CT")
    params["setting"]["resampledPixelSpacing"] = None
    features = radiomics.extract_lesion_features(sitk.ReadImage(str(volume_path)), sitk.ReadImage(str(mask_on_grid)),
                                                 params, n_workers=2)
    mark("radiomics", started)
    print(json.dumps({"steps": steps, "lesions": len(features), "instances": len(outputs)}))


def run_child(dicom: Path, mask_path: Path, work: Path) -> dict:
    """Run :func:`child` in a fresh interpreter, sampling the RSS of its whole process tree."""
    import psutil

    process = subprocess.Popen([sys.executable, __file__, "--child", str(dicom), str(mask_path), str(work)],
                               stdout=subprocess.PIPE, text=True, cwd=REPO)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:  # a process ended between listing and reading
            pass
        time.sleep(0.05)
    out = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"per-study chain failed (exit {process.returncode})")
    report = json.loads(out.strip().splitlines()[-1])
    report["peak_tree_rss_gib"] = round(peak / 2**30, 3)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=int, default=256 if QUICK else 512)
    parser.add_argument("--slices", type=int, default=100 if QUICK else 300)
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="radplan-bench-memory-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        dicom, mask_path = write_series(folder, args.matrix, args.slices)
        generate_seconds = time.perf_counter() - started
        work = folder / "work"
        work.mkdir()
        report = run_child(dicom, mask_path, work)
    peak = report["peak_tree_rss_gib"]
    results = [result_row(
        "ct_series_peak_memory", radplan=peak, peer=LIMIT_GIB, unit="GiB", ratio=round(peak / LIMIT_GIB, 3), runs=1,
        lower_is_better=True, target="<= 1 (peak <= 2.5 GiB)", peer_tool="the 2.5 GiB target",
        series=f"{args.matrix} x {args.matrix} x {args.slices} CT, int16", steps=report["steps"],
        generate_seconds=round(generate_seconds, 1),
        note="peak summed RSS of the process running de-id -> volume -> normalize/resample -> radiomics (2 workers) "
             "and its descendants, sampled every 50 ms")]
    write_results("memory.json", results)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
