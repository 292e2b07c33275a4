"""``radplan radiomics IMAGE MASK --params P --out FEATURES.csv``: per-lesion features, same code as the asset.

IMAGE: any SimpleITK-readable file (NRRD, NIfTI, ...) or a folder holding one DICOM
image series. MASK: a label map file (each nonzero label is one lesion), a DICOM series
folder, or a DICOM SEG / RTSTRUCT file drawn on the IMAGE series (then each segment/ROI
becomes one label, in file order; a FRACTIONAL SEG is cut at ``--seg-fractional-threshold``).
``--split-lesions`` turns the mask into connected
lesions first. The extraction settings are written beside the table as
``FEATURES.settings.json``. ``--mode ibsi`` runs the IBSI preprocessing first (radplan.imaging.ibsi).

``radplan radiomics-conformance DIR``: IBSI 1 conformance of the IBSI mode on the IBSI CT
radiomics phantom (DIR: ``phantom.nii.gz``, ``mask.nii.gz``, ``ibsi_1_reference_values_config_{A..E}.csv``),
one line per configuration; exit status 1 when a configuration is below ``--min-share``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from radplan.errors import RadplanInputError

if TYPE_CHECKING:  # SimpleITK, numpy and pyradiomics load inside the commands: `radplan --help` stays instant
    import SimpleITK as sitk

# The choices the parser offers, spelled here so that building it imports nothing heavy; a test checks they equal
# radplan.imaging.radiomics.MODES and radplan.imaging.ibsi_conformance.CONFIGURATIONS.
MODES = ("pyradiomics", "ibsi")
CONFIGURATIONS = ("A", "B", "C", "D", "E")


def _dicom_series_paths(folder: Path) -> list[Path]:
    from radplan.imaging.series import group_series, read_instance_header

    headers = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        headers.append(read_instance_header(path))
    series = [instances for study in group_series(headers).values() for instances in study.values()]
    if len(series) != 1:
        raise RadplanInputError(f"{folder}: expected one DICOM series, found {len(series)}")
    return [header.path for header in series[0]]


def read_image(path: Path) -> tuple[sitk.Image, list[Path] | None]:
    """The image, and its DICOM instance paths when it came from a DICOM folder."""
    import SimpleITK as sitk

    from radplan.imaging.volumes import load_series_volume

    if path.is_dir():
        paths = _dicom_series_paths(path)
        return load_series_volume(paths), paths
    if not path.is_file():
        raise RadplanInputError(f"{path}: not found")
    try:
        return sitk.ReadImage(str(path)), None
    except RuntimeError as exc:
        raise RadplanInputError(f"{path.name}: SimpleITK cannot read it ({exc})") from exc


def read_label_map(path: Path, image: sitk.Image, image_dicom_paths: list[Path] | None, *,
                   fractional_threshold: float = 0.5) -> sitk.Image:
    """Label map on the image grid from a label file, a DICOM folder, or a SEG/RTSTRUCT."""
    import numpy as np
    import SimpleITK as sitk

    from radplan.imaging.masks import mask_from_rtstruct, mask_from_seg
    from radplan.imaging.series import read_instance_header
    from radplan.imaging.volumes import resample_mask_to

    if path.is_file() and image_dicom_paths is not None:
        try:
            modality = read_instance_header(path).modality
        except RadplanInputError:
            modality = ""
        if modality in ("SEG", "RTSTRUCT"):
            if modality == "SEG":
                named = mask_from_seg(path, image_dicom_paths, fractional_threshold=fractional_threshold)
            else:
                named = mask_from_rtstruct(path, image_dicom_paths)
            labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint16)
            for label, mask in enumerate(named.values(), start=1):
                labels[sitk.GetArrayViewFromImage(mask) > 0] = label
            label_map = sitk.GetImageFromArray(labels)
            label_map.CopyInformation(image)
            return label_map
    mask, _ = read_image(path)
    # Identity when the grids coincide; otherwise places the labels by physical position.
    return resample_mask_to(mask, image)


def run(args: argparse.Namespace) -> int:
    from radplan import progress
    from radplan.imaging.masks import label_lesions
    from radplan.imaging.radiomics import extract_lesion_features, extraction_settings, load_params
    from radplan.lake import atomic_path, atomic_write_json

    try:
        params = load_params(args.params)
        image, dicom_paths = read_image(Path(args.image))
        label_map = read_label_map(Path(args.mask), image, dicom_paths, fractional_threshold=args.seg_fractional_threshold)
        if args.split_lesions:
            label_map = label_lesions(label_map, min_voxels=args.min_voxels)
        with progress.task("radiomics (lesions)") as bar:
            table = extract_lesion_features(image, label_map, params, n_workers=args.workers, progress=bar.callback, mode=args.mode)
    except RadplanInputError as error:
        print(f"radplan radiomics: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        table.to_csv(temporary, index=False)
    atomic_write_json(out.with_suffix(".settings.json"), json.loads(json.dumps(extraction_settings(params, args.mode), default=str)))
    print(f"radplan radiomics: {len(table)} lesion(s), {table.shape[1]} columns -> {out}", file=sys.stderr)
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("radiomics", help="per-lesion pyradiomics features of an image and a label map")
    parser.add_argument("image", help="image file (NRRD, NIfTI, ...) or a DICOM series folder")
    parser.add_argument("mask", help="label map file, DICOM series folder, or DICOM SEG/RTSTRUCT of the image series")
    parser.add_argument("--params", required=True, help="pyradiomics parameter YAML, or ct / mr / pet for the packaged ones")
    parser.add_argument("--out", required=True, help="output CSV (settings go to <out>.settings.json)")
    parser.add_argument("--workers", type=int, default=1, help="processes for parallel extraction across lesions")
    parser.add_argument("--split-lesions", action="store_true", help="split the mask into connected lesions first")
    parser.add_argument("--min-voxels", type=int, default=10, help="smallest lesion kept by --split-lesions")
    parser.add_argument("--seg-fractional-threshold", type=_fraction, default=0.5,
                        help="a FRACTIONAL SEG's voxel is in the segment from this fraction on (default 0.5)")
    parser.add_argument("--mode", choices=MODES, default="pyradiomics",
                        help="pyradiomics: pyradiomics' own preprocessing (default); ibsi: IBSI reference-manual preprocessing")
    parser.set_defaults(func=run)

    conformance = subparsers.add_parser(
        "radiomics-conformance", help="IBSI 1 conformance of the IBSI radiomics mode on the IBSI CT phantom (configurations A-E)"
    )
    conformance.add_argument("directory", help="folder with phantom.nii.gz, mask.nii.gz, ibsi_1_reference_values_config_{A..E}.csv")
    conformance.add_argument("--configurations", default="".join(CONFIGURATIONS), help="which of A-E to run (default: all)")
    conformance.add_argument("--min-share", type=float, default=0.95, help="share of features that must conform (exit 1 below it)")
    conformance.add_argument("--show-failures", action="store_true", help="list every feature outside its tolerance")
    conformance.set_defaults(func=run_conformance_report)


def run_conformance_report(args: argparse.Namespace) -> int:
    from radplan.imaging.ibsi_conformance import run_conformance

    configurations = tuple(args.configurations.upper())
    try:
        results = run_conformance(Path(args.directory), configurations)
    except RadplanInputError as error:
        print(f"radplan radiomics-conformance: {error}", file=sys.stderr)
        return 2
    below = False
    for result in results:
        print(result.line())
        below |= result.conforming < args.min_share * len(result.checks)
        if args.show_failures:
            for check in result.checks:
                if not check.conforms:
                    print(f"  {check.tag}: {check.value} (reference {check.reference} +/- {check.tolerance})")
    return 1 if below else 0
