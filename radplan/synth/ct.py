"""Synthetic CT studies: an HU-realistic chest phantom with lesions, written as DICOM CT series,
a highdicom SEG of the lesions, and the true label map as NIfTI.

Phantom (LPS patient coordinates, mm): air outside a body ellipse with a subcutaneous fat rim,
soft tissue ~40 HU, two lungs ~-850 HU, a vertebral body ~+700 HU cortex around ~+250 HU
marrow, and 1-3 lesions (ellipsoid plus 0-2 lobes) whose HU texture has a smooth random
component scaled by the patient's heterogeneity (the radiomic texture proxy of the outcome model).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from radplan.lake import atomic_path
from radplan.synth.cohort import PatientPlan, Study, age_on, patient_rng, stable_uid

MATRIX = 128
TABLE_Z_MM = -100.0  # world z of the slab centre
RESCALE_INTERCEPT = -1024
IMPLEMENTATION_CLASS_UID = "2.25.181373962526376880347183093651830290851"
IMPLEMENTATION_VERSION = "RADPLAN_SYNTH_1"
PRIVATE_CREATOR = "NORTHSHORE PACS 2.1"
MANUFACTURER = "Tomographix"
MODEL = "Helix 64"


@dataclass(frozen=True)
class Geometry:
    n_slices: int
    spacing_xy: float
    spacing_z: float
    origin: tuple[float, float, float]  # centre of voxel (0,0,0), LPS mm

    def world(self, k: int, j: int, i: int) -> tuple[float, float, float]:
        return (self.origin[0] + i * self.spacing_xy, self.origin[1] + j * self.spacing_xy, self.origin[2] + k * self.spacing_z)


def study_geometry(study: Study) -> Geometry:
    half_xy = (MATRIX - 1) / 2 * study.pixel_spacing
    half_z = (study.n_slices - 1) / 2 * study.slice_thickness
    return Geometry(study.n_slices, study.pixel_spacing, study.slice_thickness, (-half_xy, -half_xy, TABLE_Z_MM - half_z))


def render_study(plan: PatientPlan, study: Study, seed: int) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Return (HU int16 volume z,y,x; lesion label map uint8 z,y,x with labels 1..n; geometry)."""
    rng = patient_rng(seed, plan.index, f"ct/{study.index}")
    geo = study_geometry(study)
    z = geo.origin[2] + np.arange(geo.n_slices) * geo.spacing_z - TABLE_Z_MM
    y = geo.origin[1] + np.arange(MATRIX) * geo.spacing_xy
    x = geo.origin[0] + np.arange(MATRIX) * geo.spacing_xy
    zz, yy, xx = np.meshgrid(z.astype(np.float32), y.astype(np.float32), x.astype(np.float32), indexing="ij")

    hu = np.full(zz.shape, -1000.0, dtype=np.float32)
    body = (xx / 90.0) ** 2 + (yy / 70.0) ** 2 <= 1.0
    inner = (xx / 82.0) ** 2 + (yy / 62.0) ** 2 <= 1.0
    hu[body] = -100.0  # fat rim
    hu[inner] = 40.0
    lung_scale = np.sqrt(np.clip(1.0 - (zz / 140.0) ** 2, 0.2, 1.0))
    lungs = np.zeros(zz.shape, dtype=bool)
    for side in (-1, 1):
        lungs |= ((xx - side * 45.0) / (28.0 * lung_scale)) ** 2 + ((yy + 5.0) / (40.0 * lung_scale)) ** 2 <= 1.0
    hu[lungs] = -850.0
    spine_r2 = xx**2 + (yy - 45.0) ** 2
    hu[spine_r2 <= 12.0**2] = 700.0
    hu[spine_r2 <= 8.0**2] = 250.0
    noise_sd = np.where(lungs, 25.0, 12.0)
    hu += rng.normal(0.0, 1.0, hu.shape).astype(np.float32) * noise_sd * (hu > -990)

    labels = np.zeros(zz.shape, dtype=np.uint8)
    for number, lesion in enumerate(study.lesions, start=1):
        cx, cy, cz = lesion.center_mm
        a, b, c = lesion.radii_mm
        mean_radius = (a + b + c) / 3.0
        # Work in the lesion's bounding box only: whole-volume filtering per lesion is slow.
        reach = max(a, b, c) + max([np.abs(off).max() + mean_radius * sc for off, sc in lesion.lobes], default=0.0) + 3.0
        box = tuple(
            slice(int(np.searchsorted(axis, centre - reach)), int(np.searchsorted(axis, centre + reach, side="right")))
            for axis, centre in ((z, cz), (y, cy), (x, cx))
        )
        bx, by, bz = xx[box], yy[box], zz[box]
        inside = ((bx - cx) / a) ** 2 + ((by - cy) / b) ** 2 + ((bz - cz) / c) ** 2 <= 1.0
        for offset, scale in lesion.lobes:
            r = mean_radius * scale
            inside |= (bx - cx - offset[0]) ** 2 + (by - cy - offset[1]) ** 2 + (bz - cz - offset[2]) ** 2 <= r * r
        inside &= body[box]
        labels[box][inside] = number
        smooth = ndimage.gaussian_filter(rng.normal(0.0, 1.0, inside.shape).astype(np.float32), sigma=1.5)
        smooth /= max(float(smooth.std()), 1e-6)
        texture = lesion.mean_hu + (10.0 + 50.0 * lesion.heterogeneity) * smooth + rng.normal(0.0, 8.0, inside.shape)
        hu[box][inside] = texture[inside]

    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), labels, geo


def _da(date: dt.date) -> str:
    return date.strftime("%Y%m%d")


def _file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def study_uids(seed: int, plan: PatientPlan, study: Study) -> dict[str, str]:
    key = (plan.index, study.index)
    return {
        "study": stable_uid(seed, "study", *key),
        "series": stable_uid(seed, "series", *key),
        "frame_of_reference": stable_uid(seed, "for", *key),
        "seg_series": stable_uid(seed, "seg-series", *key),
        "seg_instance": stable_uid(seed, "seg-instance", *key),
    }


def ct_instance_uid(seed: int, plan: PatientPlan, study: Study, slice_index: int) -> str:
    return stable_uid(seed, "sop", plan.index, study.index, slice_index)


# Attributes that differ between the slices of a series; everything else is shared.
PER_SLICE_KEYWORDS = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData")


def ct_datasets(plan: PatientPlan, study: Study, seed: int, hu: np.ndarray, geo: Geometry) -> list[Dataset]:
    """One CT Image Storage dataset per slice, with the PHI a hospital export carries.

    The slices share one dict of study/series/patient elements (built once: pydicom's per-attribute
    validation dominates otherwise) and differ only in PER_SLICE_KEYWORDS and their file meta.
    """
    common = _common_ct_dataset(plan, study, seed, geo)
    datasets = []
    for k in range(geo.n_slices):
        ds = Dataset(dict(common._dict))
        ds.file_meta = _file_meta(CTImageStorage, ct_instance_uid(seed, plan, study, k))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.InstanceNumber = k + 1
        position = geo.world(k, 0, 0)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{position[2]:.4f}"
        # Explicit OW: an ambiguous "OB or OW" VR is only resolved inside save_as().
        ds.add_new(0x7FE00010, "OW", (hu[k].astype(np.int32) - RESCALE_INTERCEPT).astype("<i2").tobytes())
        datasets.append(ds)
    return datasets


def _common_ct_dataset(plan: PatientPlan, study: Study, seed: int, geo: Geometry) -> Dataset:
    uids = study_uids(seed, plan, study)
    study_date, study_time = _da(study.date), study.time
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study_date
    ds.InstanceCreationTime = study_time
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = study.accession
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = plan.institution["name"]
    ds.InstitutionAddress = plan.institution["address"]
    ds.ReferringPhysicianName = _person(plan.oncologist)
    ds.StationName = "CT01"
    ds.StudyDescription = study.description
    ds.SeriesDescription = "AXIAL 2.5MM SOFT TISSUE" + (f" {plan.last.upper()}" if plan.last.upper() in study.description else "")
    ds.PerformingPhysicianName = _person(study.physician)
    ds.OperatorsName = _person(study.operator)
    ds.ManufacturerModelName = MODEL
    ds.PatientName = plan.dicom_name
    ds.PatientID = plan.mrn
    ds.IssuerOfPatientID = plan.institution["name"]
    ds.PatientBirthDate = _da(plan.birth_date)
    ds.PatientSex = plan.sex
    other = Dataset()
    other.PatientID = plan.other_mrn
    other.IssuerOfPatientID = "EPIC"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other]
    ds.OtherPatientIDs = plan.other_mrn
    ds.PatientAge = f"{age_on(plan, study.date):03d}Y"
    ds.PatientSize = f"{plan.height_cm / 100:.2f}"
    ds.PatientWeight = f"{plan.weight_kg:.1f}"
    ds.PatientAddress = plan.address_line
    ds.PatientTelephoneNumbers = plan.phone
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{geo.spacing_z:.1f}"
    ds.KVP = "120"
    ds.DeviceSerialNumber = "TX64-0042"
    ds.SoftwareVersions = "4.2.1"
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = study.study_id
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = MATRIX
    ds.Columns = MATRIX
    ds.PixelSpacing = [f"{geo.spacing_xy:.4f}", f"{geo.spacing_xy:.4f}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    request = Dataset()
    request.AccessionNumber = study.accession
    request.RequestedProcedureID = f"RP{study.accession[3:]}"
    request.ScheduledProcedureStepID = f"SPS{study.study_id}"
    request.RequestedProcedureDescription = "CT chest abdomen with contrast"
    ds.RequestAttributesSequence = [request]
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", plan.mrn)
    block.add_new(0x11, "LO", plan.dicom_name)
    return ds


class SeriesEncoder:
    """Serialise datasets that share most elements: shared elements are encoded once.

    Produces the same bytes as ``save_as(enforce_file_format=True)`` for explicit VR little endian
    (a data set is its elements in tag order), about 20x faster for a CT series.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[object, bytes]] = {}

    def _element_bytes(self, elem, encodings) -> bytes:
        cached = self._cache.get(id(elem))
        if cached is not None and cached[0] is elem:
            return cached[1]
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, False
        write_data_element(buffer, elem, encodings)
        data = buffer.getvalue()
        if elem.keyword not in PER_SLICE_KEYWORDS:
            self._cache[id(elem)] = (elem, data)
        return data

    def encode(self, ds: Dataset) -> bytes:
        if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
            raise ValueError("SeriesEncoder writes explicit VR little endian only")
        meta = DicomBytesIO()
        meta.is_little_endian, meta.is_implicit_VR = True, False
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        encodings = ds._character_set
        body = b"".join(self._element_bytes(ds[tag], encodings) for tag in sorted(ds.keys()))
        return b"\x00" * 128 + b"DICM" + meta.getvalue() + body


def _person(full_name: str) -> str:
    first, last = full_name.rsplit(" ", 1)
    return f"{last}^{first}"


def segmentation(plan: PatientPlan, study: Study, seed: int, sources: list[Dataset], labels: np.ndarray) -> Dataset:
    """A BINARY highdicom SEG with one segment "Lesion" (all lesions), referencing every CT slice."""
    uids = study_uids(seed, plan, study)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        tracking_uid=stable_uid(seed, "seg-tracking", plan.index, study.index),
        tracking_id="Lesion",
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=(labels > 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=uids["seg_series"],
        series_number=300,
        sop_instance_uid=uids["seg_instance"],
        instance_number=1,
        manufacturer="radplan synth",
        manufacturer_model_name="truth",
        software_versions="1",
        device_serial_number="SYNTH-1",
        content_description="Lesion segmentation",
        content_creator_name=_person(study.physician),
    )
    # highdicom stamps "now" and random dimension-organisation UIDs; the cohort must be byte-identical per seed.
    fixed = {
        "ContentDate": _da(study.date), "SeriesDate": _da(study.date), "InstanceCreationDate": _da(study.date),
        "ContentTime": study.time, "SeriesTime": study.time, "InstanceCreationTime": study.time,
        "ContributionDateTime": _da(study.date) + study.time,
        "DimensionOrganizationUID": stable_uid(seed, "seg-dimension-organization", plan.index, study.index),
    }

    def pin(dataset: Dataset, element) -> None:
        if element.keyword in fixed:
            element.value = fixed[element.keyword]

    seg.walk(pin)
    return seg


def write_label_nifti(labels: np.ndarray, geo: Geometry, path: Path) -> None:
    image = sitk.GetImageFromArray(labels)  # numpy z,y,x -> ITK x,y,z
    image.SetSpacing((geo.spacing_xy, geo.spacing_xy, geo.spacing_z))
    image.SetOrigin(geo.origin)
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    with atomic_path(path) as tmp:
        tmp_nii = tmp.with_name(tmp.name + ".nii.gz")
        try:
            sitk.WriteImage(image, str(tmp_nii), useCompression=True)
            tmp_nii.replace(tmp)
        finally:
            tmp_nii.unlink(missing_ok=True)


