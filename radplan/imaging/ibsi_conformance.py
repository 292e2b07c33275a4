"""IBSI 1 conformance of radplan's IBSI radiomics mode on the IBSI CT radiomics phantom, configurations A-E.

A conformance folder holds ``phantom.nii.gz``, ``mask.nii.gz`` and the published reference values
``ibsi_1_reference_values_config_{A..E}.csv`` (columns ``reference value``, ``tolerance``, ``tag``;
the layout of the IBSI data sets). Each configuration's parameter file is
``params/ibsi_ct_config_<x>.yaml``; features are compared through ``params/ibsi_phantom_feature_map.csv``
(the IBSI tag of each pyradiomics feature and the documented relation between the two
definitions, see ``params/IBSI_NOTES.md``). A feature conforms when its value lies within
``reference value +/- tolerance``; a feature radplan did not compute counts as not conforming.

Configurations A and B compute texture in 2D (in-plane neighbours). pyradiomics accumulates the
in-plane matrices of all slices into one matrix per direction, which is the IBSI "2.5D" aggregation,
so their texture features are compared with the ``_2_5D`` reference tags.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from radplan.errors import RadplanInputError
from radplan.imaging.radiomics import PARAMS_DIR, extract_lesion_features, load_params

CONFIGURATIONS = ("A", "B", "C", "D", "E")
FEATURE_MAP = PARAMS_DIR / "ibsi_phantom_feature_map.csv"


@dataclass(frozen=True)
class FeatureCheck:
    tag: str
    feature: str
    value: float | None
    reference: float
    tolerance: float

    @property
    def conforms(self) -> bool:
        return self.value is not None and math.isfinite(self.value) and abs(self.value - self.reference) <= self.tolerance


@dataclass(frozen=True)
class ConfigurationResult:
    configuration: str
    checks: tuple[FeatureCheck, ...]
    diagnostics: dict

    @property
    def conforming(self) -> int:
        return sum(check.conforms for check in self.checks)

    def line(self) -> str:
        return f"config {self.configuration}: {self.conforming}/{len(self.checks)} features within tolerance"


def feature_map() -> list[dict[str, str]]:
    with open(FEATURE_MAP, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def reference_values(path: Path) -> dict[str, tuple[float, float]]:
    """IBSI tag -> (reference value, tolerance) from a published reference CSV."""
    if not path.is_file():
        raise RadplanInputError(f"{path}: reference values not found")
    values = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            try:
                values[row["tag"]] = (float(row["reference value"]), float(row["tolerance"] or 0))
            except (KeyError, ValueError):
                continue  # rows without a numeric reference (not every feature has a consensus value)
    if not values:
        raise RadplanInputError(f"{path.name}: no reference values (expected columns 'reference value', 'tolerance', 'tag')")
    return values


def tag_for_configuration(tag: str, configuration: str) -> str:
    """The reference tag of a 3D-texture tag in a 2D configuration (A, B): IBSI '2.5D' aggregation."""
    if configuration not in ("A", "B"):
        return tag
    if tag.endswith("_3D_avg"):
        return tag[: -len("_3D_avg")] + "_2_5D_avg"
    if tag.endswith("_3D"):
        return tag[: -len("_3D")] + "_2_5D"
    return tag


def ibsi_value(row, item: dict[str, str]) -> float | None:
    """The IBSI-defined value of a mapped feature from a feature-table row (relation applied)."""
    value = row.get(item["pyradiomics_feature"])
    if value is None or not math.isfinite(float(value)):
        return None
    value = float(value)
    relation = item["relation"]
    if relation == "plus_3":  # pyradiomics kurtosis -> IBSI excess kurtosis
        return value - 3.0
    if relation == "population_sd":  # pyradiomics divides by N, IBSI by N - 1 (N: ROI voxels on the feature grid)
        voxels = float(row["ibsi_morphology_voxels"])
        return value / math.sqrt((voxels - 1) / voxels)
    if relation != "equal":
        raise ValueError(f"unknown relation {relation!r} in {FEATURE_MAP.name}")
    return value


def run_configuration(directory: Path, configuration: str, image: sitk.Image | None = None,
                      mask: sitk.Image | None = None) -> ConfigurationResult:
    directory = Path(directory)
    if configuration not in CONFIGURATIONS:
        raise RadplanInputError(f"IBSI configuration {configuration!r} unknown (one of {', '.join(CONFIGURATIONS)})")
    image = image if image is not None else _read(directory / "phantom.nii.gz")
    mask = mask if mask is not None else _read(directory / "mask.nii.gz")
    reference = reference_values(directory / f"ibsi_1_reference_values_config_{configuration}.csv")
    params = load_params(PARAMS_DIR / f"ibsi_ct_config_{configuration.lower()}.yaml")
    table = extract_lesion_features(image, sitk.Cast(mask != 0, sitk.sitkUInt8), params, mode="ibsi")
    row = table.iloc[0].to_dict()
    if row["extraction_error"]:
        raise RadplanInputError(f"configuration {configuration}: extraction failed ({row['extraction_error']})")
    checks = []
    for item in feature_map():
        tag = tag_for_configuration(item["ibsi_tag"], configuration)
        if tag not in reference:
            raise RadplanInputError(f"configuration {configuration}: no reference value for {tag}")
        value, tolerance = reference[tag]
        checks.append(FeatureCheck(tag, item["pyradiomics_feature"], ibsi_value(row, item), value, tolerance))
    diagnostics = {
        "morphology_voxels": int(row["ibsi_morphology_voxels"]),
        "intensity_voxels": int(row["ibsi_intensity_voxels"]),
        "reference_morphology_voxels": reference.get("morph_mask_vox_count_reseg_roi"),
        "reference_intensity_voxels": reference.get("int_mask_vox_count_reseg_roi"),
    }
    return ConfigurationResult(configuration, tuple(checks), diagnostics)


def _read(path: Path) -> sitk.Image:
    if not path.is_file():
        raise RadplanInputError(f"{path}: not found")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise RadplanInputError(f"{path.name}: SimpleITK cannot read it ({exc})") from exc


def run_conformance(directory: Path, configurations: tuple[str, ...] = CONFIGURATIONS) -> list[ConfigurationResult]:
    directory = Path(directory)
    image, mask = _read(directory / "phantom.nii.gz"), _read(directory / "mask.nii.gz")
    return [run_configuration(directory, configuration, image, mask) for configuration in configurations]
