"""DICOM objects radplan itself writes back to the hospital PACS, and how to recognise them there.

The predicted lesion SEG (:func:`radplan.models.segmentation.write_seg_dicom`) and RTSTRUCT
(:func:`radplan.imaging.rtstruct.write_rtstruct`) carry Manufacturer ``radplan``. The PACS arrival
scan leaves series of these modalities from this manufacturer out (``OrthancPacs``): they are
neither a new study to segment nor a reference mask to train on, so storing them back cannot start
a feedback loop. Masks from the synthetic cohort generator say ``radplan synth`` and stay references.
"""

RADPLAN_MANUFACTURER = "radplan"
RADPLAN_OUTPUT_MODALITIES = frozenset({"SEG", "RTSTRUCT"})


def is_radplan_output(modality: str | None, manufacturer: str | None) -> bool:
    """Whether a series with these Modality and Manufacturer values is one radplan wrote back."""
    return str(modality or "").upper() in RADPLAN_OUTPUT_MODALITIES and str(manufacturer or "").strip() == RADPLAN_MANUFACTURER
