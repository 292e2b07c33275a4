"""``radplan radiomics IMAGE MASK --params P --out FEATURES.csv``: per-lesion features, same code as the asset.

IMAGE: any SimpleITK-readable file (NRRD, NIfTI, ...) or a folder holding one DICOM
image series. MASK: a label map file (each nonzero label is one lesion), a DICOM series
folder, or a DICOM SEG / RTSTRUCT file drawn on the IMAGE series (then each segment/ROI
becomes one label, in file order). ``--split-lesions`` turns the mask into connected
lesions first. The extraction settings are written beside the table as
``FEATURES.settings.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from radplan.errors import RadplanInputError

if TYPE_CHECKING:  # SimpleITK, numpy and pyradiomics load inside the command: `radplan --help` stays instant
    import SimpleITK as sitk


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


def read_label_map(path: Path, image: sitk.Image, image_dicom_paths: list[Path] | None) -> sitk.Image:
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
            convert = mask_from_seg if modality == "SEG" else mask_from_rtstruct
            named = convert(path, image_dicom_paths)
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
        label_map = read_label_map(Path(args.mask), image, dicom_paths)
        if args.split_lesions:
            label_map = label_lesions(label_map, min_voxels=args.min_voxels)
        with progress.task("radiomics (lesions)") as bar:
            table = extract_lesion_features(image, label_map, params, n_workers=args.workers, progress=bar.callback)
    except RadplanInputError as error:
        print(f"radplan radiomics: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:
        table.to_csv(temporary, index=False)
    atomic_write_json(out.with_suffix(".settings.json"), json.loads(json.dumps(extraction_settings(params), default=str)))
    print(f"radplan radiomics: {len(table)} lesion(s), {table.shape[1]} columns -> {out}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("radiomics", help="per-lesion pyradiomics features of an image and a label map")
    parser.add_argument("image", help="image file (NRRD, NIfTI, ...) or a DICOM series folder")
    parser.add_argument("mask", help="label map file, DICOM series folder, or DICOM SEG/RTSTRUCT of the image series")
    parser.add_argument("--params", required=True, help="pyradiomics parameter YAML, or ct / mr / pet for the packaged ones")
    parser.add_argument("--out", required=True, help="output CSV (settings go to <out>.settings.json)")
    parser.add_argument("--workers", type=int, default=1, help="processes for parallel extraction across lesions")
    parser.add_argument("--split-lesions", action="store_true", help="split the mask into connected lesions first")
    parser.add_argument("--min-voxels", type=int, default=10, help="smallest lesion kept by --split-lesions")
    parser.set_defaults(func=run)
