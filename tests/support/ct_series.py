"""A synthetic axial CT series as DICOM files: a soft-tissue body in air with brighter spherical lesions.

For tests and benchmarks that need a study of a chosen size (the inference benchmark's 512x512x100 CT).
Names and ids are synthetic; UIDs derive from the seed, so a re-run writes the same study.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID


def _uid(seed: int, *parts) -> str:
    digest = hashlib.sha256("\x00".join(map(str, (seed, *parts))).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def write_ct_series(folder: Path, *, rows: int = 512, columns: int = 512, slices: int = 100, pixel_mm: float = 0.8,
                    slice_mm: float = 2.5, lesions: int = 3, seed: int = 0) -> list[Path]:
    """Write one CT series (int16, rescale -1024) into ``folder``; returns the file paths in slice order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    r, c = np.mgrid[:rows, :columns]
    body = ((r - rows / 2) / (0.42 * rows)) ** 2 + ((c - columns / 2) / (0.46 * columns)) ** 2 < 1
    centres = [(rng.uniform(0.3, 0.7) * slices * slice_mm, rng.uniform(0.35, 0.65) * rows * pixel_mm,
                rng.uniform(0.35, 0.65) * columns * pixel_mm, rng.uniform(8, 20)) for _ in range(lesions)]
    study, series, frame = _uid(seed, "study"), _uid(seed, "series"), _uid(seed, "frame")
    paths = []
    for k in range(slices):
        hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, (rows, columns))
        for z, y, x, radius in centres:
            inside = (r * pixel_mm - y) ** 2 + (c * pixel_mm - x) ** 2 + (k * slice_mm - z) ** 2 < radius**2
            hu[inside] += 110.0
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "instance", k)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Phantom", f"SYN{seed:05d}", "19600101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", f"ACC{seed}", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "synthetic", 1, k + 1
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-columns * pixel_mm / 2, -rows * pixel_mm / 2, k * slice_mm]
        ds.SliceThickness, ds.PixelSpacing = slice_mm, [pixel_mm, pixel_mm]
        ds.KVP, ds.AcquisitionNumber = 120, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (np.clip(hu, -1024, 3071) + 1024).astype("<i2").tobytes()
        path = folder / f"{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
