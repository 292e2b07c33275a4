"""Synthetic CT cohort for the segmentation benchmark, built the way the pipeline builds its inputs.

Each study of each patient is rendered by the generator (radplan.synth.ct.render_study), turned into
a SimpleITK HU volume with the study geometry, normalised by the pipeline's own
``radplan.imaging.volumes.normalize_volume`` (CT: HU clip, linear resampling to 1.5 mm) and the true
lesion label map moved onto that grid with ``resample_mask_to`` (nearest neighbour), as the
``normalized_volumes`` and ``lesion_masks`` assets do. Label value k is the study's k-th lesion, so
its site (``Lesion.site``: "lung" or "soft_tissue", drawn from the cancer type's
``lesion_site_weights``) is known exactly; no DICOM round trip is needed for that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from radplan.imaging.volumes import normalize_volume, resample_mask_to
from radplan.synth.cohort import draw_patient
from radplan.synth.ct import render_study

SPACING_MM = 1.5


def _sitk_volume(array_zyx: np.ndarray, geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((geometry.spacing_xy, geometry.spacing_xy, geometry.spacing_z))
    image.SetOrigin(geometry.origin)
    return image


def build_cohort(folder: Path, seed: int, patient_indices: range) -> list[dict]:
    """Write (image, label) NIfTI pairs for every study of the patients; returns one record per study.

    Record: image, label (paths), patient (index), study (index), sites ({label value: site}).
    A manifest.json in ``folder`` caches the records (same seed and indices: reused).
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    key = {"seed": seed, "patients": [patient_indices.start, patient_indices.stop], "spacing_mm": SPACING_MM}
    if manifest.exists():
        cached = json.loads(manifest.read_text())
        if cached["key"] == key and all(Path(r["image"]).exists() and Path(r["label"]).exists() for r in cached["records"]):
            return cached["records"]
    records = []
    for index in patient_indices:
        plan = draw_patient(seed, index)
        for study in plan.studies:
            hu, labels, geometry = render_study(plan, study, seed)
            ct, _ = normalize_volume(_sitk_volume(hu, geometry), "CT", Dataset(), spacing_mm=SPACING_MM)
            label = resample_mask_to(_sitk_volume(labels, geometry), ct)
            stem = f"p{index:04d}_s{study.index}"
            image_path, label_path = folder / f"{stem}_ct.nii.gz", folder / f"{stem}_label.nii.gz"
            sitk.WriteImage(ct, str(image_path), useCompression=True)
            sitk.WriteImage(label, str(label_path), useCompression=True)
            records.append({"image": str(image_path), "label": str(label_path), "patient": index, "study": study.index,
                            "sites": {str(number): lesion.site for number, lesion in enumerate(study.lesions, start=1)}})
    manifest.write_text(json.dumps({"key": key, "records": records}))
    return records
