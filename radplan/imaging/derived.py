"""DICOM objects radplan itself writes back to the hospital PACS, and how to recognise them there.

The predicted lesion SEG (:func:`radplan.models.segmentation.write_seg_dicom`) and RTSTRUCT
(:func:`radplan.imaging.rtstruct.write_rtstruct`) carry Manufacturer ``radplan``. The PACS arrival
scan leaves series of these modalities from this manufacturer out (``OrthancPacs``): they are
neither a new study to segment nor a reference mask to train on, so storing them back cannot start
a feedback loop. Masks from the synthetic cohort generator say ``radplan synth`` and stay references.
"""

import hashlib

import numpy as np

RADPLAN_MANUFACTURER = "radplan"
RADPLAN_OUTPUT_MODALITIES = frozenset({"SEG", "RTSTRUCT"})


def is_radplan_output(modality: str | None, manufacturer: str | None) -> bool:
    """Whether a series with these Modality and Manufacturer values is one radplan wrote back."""
    return str(modality or "").upper() in RADPLAN_OUTPUT_MODALITIES and str(manufacturer or "").strip() == RADPLAN_MANUFACTURER


def slice_position(dataset) -> float:
    """A source slice's position along the normal of its image plane (sorts slices whatever their file order)."""
    row, col = np.asarray(dataset.ImageOrientationPatient[:3], float), np.asarray(dataset.ImageOrientationPatient[3:], float)
    return float(np.dot(np.cross(row, col), np.asarray(dataset.ImagePositionPatient, float)))


def derived_uid(*parts: str) -> str:
    """Deterministic UID under the 2.25 root (UUID-derived form, PS3.5 B.2) from the inputs' content."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"
