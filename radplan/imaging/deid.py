"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

Options applied: Retain Longitudinal Temporal Information with Modified Dates,
Retain Patient Characteristics and Clean Descriptors. UIDs are *not* retained:
every non-well-known UID is replaced by the keyed ``Pseudonymizer.uid``.

The attribute actions are data (``data/annex_e_table_e1_1.csv``, Table E.1-1);
``data/deid_policy.json`` holds the rest of the policy. Rules, in order:

* private tags (odd groups, private creators included), curve groups (50xx),
  overlay groups (60xx, whole group so no half overlay is left), command-set
  elements and group lengths are removed;
* a tag in Table E.1-1 gets the basic-profile action, overridden by the column
  of each enabled option. Compound actions are resolved without IOD knowledge
  to the choice that stays conformant whatever the attribute's type:
  X/Z -> Z, X/D, Z/D, X/Z/D -> D, X/Z/U* -> keep the sequence and remap UIDs in it
  (and X -> Z for the policy's few Type 2 attributes, e.g. TreatmentMachineName);
* a tag not in the table is handled by its VR: SQ is walked, UI remapped
  (well-known UIDs stay: those in pydicom's UID dictionary or under the DICOM
  root 1.2.840.10008, i.e. SOP classes, transfer syntaxes, coding schemes),
  DA/DT shifted, TM/AS/IS/DS kept only when well-formed, CS kept, any other
  text VR (PN, LO, SH, LT, ST, UT, UC, UR, AE) is emptied unless its keyword is
  on the policy's safe-keep list, unknown (UN) elements are removed;
* **clean** (the C action, and every text value that is kept at all): the value
  is kept only if it contains none of the patient's identifying strings (name
  components, patient/other IDs, accession number, study ID, physician and
  operator name components, institution name) as a whole word, IDs of 4+
  characters anywhere, and no date-like string (YYYYMMDD, YYYY-MM-DD,
  DD/MM/YYYY, MM-DD-YYYY...); otherwise it is emptied;
* PatientID becomes the patient key and PatientName ``<patient key>^`` (a PN with a component
  delimiter; dummy PN values likewise); a non-empty StudyID becomes a keyed token of the study
  (the same for all its instances), so the output adds no dciodvfy error or warning to the input's;
* dates (DA, the date part of DT) move by ``Pseudonymizer.date_shift_days``
  of the original PatientID, the same shift as the EHR chain; times stay.

Nested sequences are walked to any depth with the same rules. Pixel data and
every numeric/binary element are copied byte for byte (raw elements are never
decoded), which also keeps geometry and rescale values unchanged.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Literal

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError as PydicomInvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID_dictionary

from radplan.errors import BurnedInAnnotationError, InvalidDicomError
from radplan.lake import atomic_path, quarantine_file
from radplan.pseudonym import Pseudonymizer

DATA_PACKAGE = "radplan.imaging"
TABLE_FILE = "annex_e_table_e1_1.csv"
POLICY_FILE = "deid_policy.json"

DICOM_UID_ROOT = "1.2.840.10008."
TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC", "UR", "AE"})
# Elements whose value we never decode: copied raw, byte for byte.
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "US", "SS", "UL", "SL", "FL", "FD", "AT", "SV", "UV",
                        "US or SS", "OB or OW", "US or OW", "US or SS or OW"})

# Resolved actions.
REMOVE, EMPTY, DUMMY, KEEP, CLEAN, REMAP, SHIFT, WALK = "X", "Z", "D", "K", "C", "U", "SHIFT", "WALK"
_COMPOUND = {"X/Z": EMPTY, "X/D": DUMMY, "Z/D": DUMMY, "X/Z/D": DUMMY, "X/Z/U*": WALK}

# CID 7050 De-identification Method codes (DCM), checked against pydicom's codes.cid7050.
CID7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
}
# Written by deidentify_dataset itself, so the walk skips them.
_REWRITTEN_TAGS = frozenset({0x00100010, 0x00100020, 0x00120062, 0x00120063, 0x00120064, 0x00280303})

# Pixel options an earlier de-identification may have applied: still true, since pixels are untouched.
PIXEL_OPTIONS = ("clean_pixel_data", "clean_visual_features")

_DA_RE = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
_DT_RE = re.compile(r"^(\d{8})(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?$")
_TM_RE = re.compile(r"^\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)?$")
_AS_RE = re.compile(r"^\d{3}[DWMY]$")
_IS_RE = re.compile(r"^[+-]?\d{1,12}$")
_DS_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_ASCII_VRS = frozenset({"UI", "DA", "DT", "TM", "CS", "AS", "IS", "DS"})
_SINGLE_VALUE_VRS = frozenset({"LT", "ST", "UT", "UR"})
# pydicom's Python codec names for the default repertoire, ISO_IR 100 and ISO_IR 192.
_SIMPLE_CODECS = frozenset({"iso8859", "latin_1", "UTF8"})
_FORMAT_VALIDATORS = {"TM": _TM_RE, "AS": _AS_RE, "IS": _IS_RE, "DS": _DS_RE}
_DATE_LIKE = (
    r"(?<!\d)(?:19|20)\d\d[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01])(?!\d)"
    r"|(?<!\d)(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)\d\d(?!\d)"
    r"|(?<!\d)(?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)\d\d(?!\d)"
)
# Root attributes whose values identify the patient or the people and places of the encounter.
_NAME_KEYWORDS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                  "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                  "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician",
                  "ResponsiblePerson")
_ID_KEYWORDS = ("PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "StudyID",
                "AdmissionID", "MedicalRecordLocator", "PatientTelephoneNumbers", "InstitutionName",
                "PatientAddress")


@dataclass(frozen=True)
class DeidOptions:
    retain_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = True
    burned_in_policy: Literal["quarantine", "flag"] = "quarantine"


@dataclass(frozen=True)
class DeidInstanceResult:
    """Post-de-identification identity of one instance (PHI-free)."""

    patient_key: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    sop_class_uid: str
    burned_in_flagged: bool
    output_path: Path | None


@lru_cache(maxsize=1)
def _policy() -> dict:
    return json.loads(resources.files(DATA_PACKAGE).joinpath("data", POLICY_FILE).read_text("utf-8"))


@lru_cache(maxsize=1)
def _table_rows() -> tuple[dict, ...]:
    with resources.files(DATA_PACKAGE).joinpath("data", TABLE_FILE).open("r", encoding="utf-8", newline="") as fh:
        return tuple(csv.DictReader(fh))


def _resolve(code: str) -> str:
    return _COMPOUND.get(code, code)


@lru_cache(maxsize=8)
def _action_table(options: DeidOptions) -> dict[int, str]:
    """Tag -> resolved action for the enabled options (repeating-group rows are handled by group)."""
    actions: dict[int, str] = {}
    for row in _table_rows():
        if "X" in row["tag"].upper():
            continue  # 50xx/60xx rows: whole repeating groups are removed in the walk
        action = _resolve(row["basic_profile"])
        if options.retain_modified_dates and row["retain_long_modified_dates"]:
            action = SHIFT  # "C" in the modified-dates column: shift dates, keep times
        if options.retain_patient_characteristics and row["retain_patient_characteristics"]:
            action = _resolve(row["retain_patient_characteristics"])
        if options.clean_descriptors and row["clean_descriptors"]:
            action = CLEAN
        actions[int(row["tag"], 16)] = action
    for tag in _keyword_tags(_policy()["remove_as_empty_keywords"]):
        if actions.get(tag) == REMOVE:
            actions[tag] = EMPTY
    return actions


def _keyword_tags(keywords: Iterable[str]) -> frozenset[int]:
    by_keyword = {entry[4]: tag for tag, entry in DicomDictionary.items()}
    return frozenset(by_keyword[k] for k in keywords if k in by_keyword)


@lru_cache(maxsize=1)
def _policy_tags() -> tuple[frozenset[int], frozenset[int]]:
    policy = _policy()
    return _keyword_tags(policy["safe_keep_text_keywords"]), _keyword_tags(policy["dates_not_shifted_keywords"])


class _PhiMatcher:
    """Finds the patient's identifying strings and date-like text inside a value."""

    def __init__(self, ds: Dataset):
        names: set[str] = set()
        ids: set[str] = set()
        sources = [ds] + (list(ds.OtherPatientIDsSequence) if "OtherPatientIDsSequence" in ds else [])
        for source in sources:
            for keyword in _NAME_KEYWORDS:
                for value in _root_texts(source, keyword):
                    names.update(p for p in re.split(r"[\^=\s,]+", value) if len(p) >= 2)
            for keyword in _ID_KEYWORDS:  # matched whole: "IMAGING" of an institution is no identifier
                ids.update(value for value in _root_texts(source, keyword) if len(value) >= 2)
        whole_word = sorted(names | ids, key=len, reverse=True)
        anywhere = sorted((i for i in ids if len(i) >= 4), key=len, reverse=True)
        parts = [_DATE_LIKE]
        if whole_word:
            parts.append(r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, whole_word)) + r")(?![A-Za-z0-9])")
        if anywhere:
            parts.append("|".join(map(re.escape, anywhere)))
        self._pattern = re.compile("|".join(parts), re.IGNORECASE)

    def identifying(self, value: str) -> bool:
        return self._pattern.search(value) is not None


def _string_values(elem_value) -> list[str]:
    if elem_value is None:
        return []
    if isinstance(elem_value, DataElement):
        elem_value = elem_value.value
    if isinstance(elem_value, (list, MultiValue)):
        return [str(v) for v in elem_value if v is not None]
    return [str(elem_value)] if str(elem_value) else []


class _Deidentifier:
    """One dataset's walk: holds the patient's shift, the UID mapping and the PHI matcher."""

    def __init__(self, ds: Dataset, pseudonymizer: Pseudonymizer, options: DeidOptions):
        self.pseudonymizer = pseudonymizer
        self.options = options
        self.source_patient_id = _required(ds, "PatientID")
        self.shift = dt.timedelta(days=pseudonymizer.date_shift_days(self.source_patient_id))
        self.actions = _action_table(options)
        self.safe_keep, self.not_shifted = _policy_tags()
        self.dummy = _policy()["dummy_values"]
        self.matcher = _PhiMatcher(ds)

    # -- values -----------------------------------------------------------------------------
    def remap_uid(self, value: str) -> str:
        value = value.strip().rstrip("\x00")
        if not value or value in UID_dictionary or value.startswith(DICOM_UID_ROOT):
            return value
        return self.pseudonymizer.uid(value)

    def shift_da(self, value: str) -> str | None:
        match = _DA_RE.match(value.strip())
        if not match:
            return None
        try:
            day = dt.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
        return (day + self.shift).strftime("%Y%m%d")

    def shift_dt(self, value: str) -> str | None:
        value = value.strip()
        match = _DT_RE.match(value)
        if not match:
            return None
        shifted = self.shift_da(match[1])
        return None if shifted is None else shifted + value[8:]

    def clean_text(self, values: list[str]) -> bool:
        return not any(self.matcher.identifying(v) for v in values)

    # -- elements ---------------------------------------------------------------------------
    def walk(self, src: Dataset, skip: frozenset[int] = frozenset()) -> Dataset:
        """A new dataset holding the de-identified elements of ``src`` (``skip``: tags left out)."""
        elements = {}
        for tag, raw in src.items():  # raw elements stay undecoded unless an action needs the value
            number = tag.real  # a plain int: BaseTag's Python-level __eq__ slows every dict look-up
            group = number >> 16
            if group & 1 or not number & 0xFFFF or group in (0x0000, 0x0002) or (group & 0xFF00) in (0x5000, 0x6000):
                continue
            vr = raw.VR
            if vr is None or vr == "UN":
                vr = _dictionary_vr(number)
                if vr is None or vr == "UN":
                    continue  # unknown standard element: its content cannot be judged
            action = self.actions.get(number) or self.default_action(number, vr)
            if action == REMOVE or number in skip:
                continue
            new_elem = self.transform(src, raw, vr, action)
            if new_elem is not None:
                elements[tag] = new_elem
        # Same encoding and character set as the source (sequence items inherit the parent's),
        # so pydicom writes untouched raw elements byte for byte instead of re-encoding them.
        out = Dataset(elements, parent_encoding=src.original_character_set)
        implicit_vr, little_endian = src.original_encoding
        out.set_original_encoding(implicit_vr, little_endian, src.original_character_set)
        return out

    def default_action(self, tag: int, vr: str) -> str:
        if vr == "SQ":
            return WALK
        if vr == "UI":
            return REMAP
        if vr in ("DA", "DT"):
            if tag in self.not_shifted:
                return KEEP
            return SHIFT if self.options.retain_modified_dates else EMPTY
        if vr in TEXT_VRS:
            return CLEAN if tag in self.safe_keep else EMPTY
        return KEEP  # CS, TM, AS, IS, DS (validated) and binary VRs

    def transform(self, src: Dataset, raw: DataElement | RawDataElement, vr: str,
                  action: str) -> DataElement | RawDataElement | None:
        """The output element for one input element (``raw`` itself when kept unchanged), or None."""
        tag = raw.tag
        if vr == "SQ":
            if action == EMPTY:
                return DataElement(tag, vr, Sequence())
            return DataElement(tag, vr, Sequence([self.walk(item) for item in _decoded(src, tag).value]))
        kept = raw if isinstance(raw, RawDataElement) else _elem_copy(raw)
        if action == EMPTY:
            return _new_element(raw, vr, [])
        if action == DUMMY and vr != "UI":
            return _new_element(raw, vr, [] if vr in BINARY_VRS else [self.dummy.get(vr, "")])
        if vr in BINARY_VRS:
            return kept
        validator = _FORMAT_VALIDATORS.get(vr)
        if validator is not None:  # checked on the raw bytes: large DS arrays are never decoded
            return kept if _well_formed(raw, validator) else None
        values = _text_values(src, raw, vr)
        if not values:
            return kept
        if vr == "UI":
            new = [self.remap_uid(v) for v in values]
            return kept if new == values else _new_element(raw, vr, new)
        if vr in ("DA", "DT"):
            pattern = _DA_RE if vr == "DA" else _DT_RE
            if action == KEEP:
                return kept if all(pattern.match(v) for v in values) else _new_element(raw, vr, [])
            if action != SHIFT:
                return _new_element(raw, vr, [])
            shifter = self.shift_da if vr == "DA" else self.shift_dt
            new = [shifter(v) for v in values]
            return _new_element(raw, vr, [] if None in new else new)
        # Every text value that survives (K, C, safe-keep, CS...) must be free of identifying text.
        return kept if self.clean_text(values) else _new_element(raw, vr, [])


def _elem_copy(elem: DataElement) -> DataElement:
    value = elem.value
    if isinstance(value, MultiValue):
        value = list(value)
    return DataElement(elem.tag, elem.VR, value)


def _well_formed(elem: DataElement | RawDataElement, validator: re.Pattern) -> bool:
    """All values of a TM/AS/IS/DS element match their VR's format (an empty value is fine)."""
    if isinstance(elem, RawDataElement):
        try:
            text = (elem.value or b"").decode("ascii")
        except UnicodeDecodeError:
            return False
        values = text.strip(" \x00").split("\\")
    else:
        values = _string_values(elem.value)
    values = [v.strip(" \x00") for v in values]
    return values == [""] or all(validator.match(v) for v in values)


def _text_values(src: Dataset, raw: DataElement | RawDataElement, vr: str) -> list[str]:
    """The element's string values (stripped, empty ones dropped).

    Raw values are decoded straight from their bytes when that is what pydicom would do anyway:
    ASCII-only VRs, and text under the default, Latin-1 or UTF-8 character sets. Anything else
    (ISO 2022 code extensions...) goes through pydicom's character-set handling.
    """
    if isinstance(raw, RawDataElement):
        codec = "ascii" if vr in _ASCII_VRS else _simple_codec(src.original_character_set)
        if codec is not None:
            data = raw.value or b""
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                text = data.decode("latin-1")
            values = text.split("\\") if vr not in _SINGLE_VALUE_VRS else [text]
            return [v for v in (v.strip(" \x00") for v in values) if v]
    values = [v.strip(" \x00") for v in _string_values(_decoded(src, raw.tag).value)]
    return [v for v in values if v]


def _simple_codec(character_set: str | list[str] | None) -> str | None:
    if isinstance(character_set, (list, MultiValue)):
        character_set = character_set[0] if len(character_set) == 1 else None
    return character_set if character_set in _SIMPLE_CODECS or character_set is None else None


def _root_texts(ds: Dataset, keyword: str) -> list[str]:
    """String values of a top-level attribute, without decoding anything else."""
    tag = _keyword_tag(keyword)
    if tag not in ds:
        return []
    raw = ds.get_item(tag)
    return _text_values(ds, raw, raw.VR if raw.VR not in (None, "UN") else (_dictionary_vr(tag) or "UN"))


@lru_cache(maxsize=256)
def _keyword_tag(keyword: str) -> BaseTag:
    return BaseTag(tag_for_keyword(keyword))


def _new_element(like: DataElement | RawDataElement, vr: str, values: list[str]) -> DataElement | RawDataElement:
    """An element with new (ASCII) values, encoded like ``like``.

    Beside a raw source element it is built raw too: the writer then copies bytes instead of
    validating and re-encoding a DataElement, which is most of the cost of a de-identified write.
    """
    if not isinstance(like, RawDataElement):
        if not values:
            return DataElement(like.tag, vr, None if vr in BINARY_VRS else "")
        return DataElement(like.tag, vr, values[0] if len(values) == 1 else values)
    data = "\\".join(values).encode("ascii")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return RawDataElement(like.tag, None if like.is_implicit_VR else vr, len(data), data, 0,
                          like.is_implicit_VR, like.is_little_endian)


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _decoded(ds: Dataset, tag: int) -> DataElement:
    try:
        return ds[tag]
    except (ValueError, EOFError, struct.error, NotImplementedError, UnicodeDecodeError, BytesLengthException) as exc:
        where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
        raise InvalidDicomError(f"malformed element {where}: {type(exc).__name__}") from exc


def burned_in_risk(ds: Dataset) -> bool:
    """True when the pixels may carry burned-in text (flag YES, or absent on a high-risk class/modality)."""
    flag = "".join(_root_texts(ds, "BurnedInAnnotation")).upper()
    if flag == "YES":
        return True
    if flag == "NO":
        return False
    policy = _policy()
    return ("".join(_root_texts(ds, "SOPClassUID")) in policy["burned_in_risk_sop_class_uids"]
            or "".join(_root_texts(ds, "Modality")).upper() in policy["burned_in_risk_modalities"])


def deidentification_method(options: DeidOptions) -> str:
    """DeidentificationMethod text (LO, at most 64 characters) naming the profile and options."""
    parts = ["radplan PS3.15 Basic"]
    if options.retain_modified_dates:
        parts.append("ModDates")
    if options.retain_patient_characteristics:
        parts.append("PatChars")
    if options.clean_descriptors:
        parts.append("CleanDesc")
    return ";".join(parts)


def _method_codes(options: DeidOptions) -> list[tuple[str, str]]:
    codes = [CID7050["basic"]]
    if options.retain_modified_dates:
        codes.append(CID7050["modified_dates"])
    if options.retain_patient_characteristics:
        codes.append(CID7050["patient_characteristics"])
    if options.clean_descriptors:
        codes.append(CID7050["clean_descriptors"])
    return codes


def _required(ds: Dataset, keyword: str) -> str:
    value = "\\".join(_root_texts(ds, keyword))
    if not value:
        raise InvalidDicomError(f"missing {keyword}: cannot de-identify this instance")
    return value


def deidentify_dataset(ds: Dataset, pseudonymizer: Pseudonymizer,
                       options: DeidOptions = DeidOptions()) -> tuple[Dataset, DeidInstanceResult]:
    """De-identify ``ds`` into a new dataset (the input's values are left as they are)."""
    for keyword in ("PatientID", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        _required(ds, keyword)
    flagged = burned_in_risk(ds)
    if flagged and options.burned_in_policy == "quarantine":
        raise BurnedInAnnotationError("pixel data may contain burned-in annotation (quarantine policy)")

    walker = _Deidentifier(ds, pseudonymizer, options)
    out = walker.walk(ds, skip=_REWRITTEN_TAGS)
    patient_key = pseudonymizer.patient_key(walker.source_patient_id)
    methods = [m for m in _root_texts(ds, "DeidentificationMethod") if walker.clean_text([m])]
    methods.append(deidentification_method(options))
    temporal = "MODIFIED" if options.retain_modified_dates else "REMOVED"
    # PN with a component delimiter: a single-component name is the retired PN form (dciodvfy warns).
    for tag, vr, value in ((0x00100020, "LO", patient_key), (0x00100010, "PN", f"{patient_key}^"),
                           (0x00120062, "CS", "YES"), (0x00120063, "LO", methods if len(methods) > 1 else methods[0]),
                           (0x00280303, "CS", temporal)):
        out.add_new(tag, vr, value)
    if _root_texts(ds, "StudyID"):
        # Table E.1-1 empties StudyID (Type 2); an empty one makes the study unfit for a DICOMDIR (dciodvfy
        # warns), so it becomes a keyed token of the study: the same for every instance, nothing of the original.
        out.add_new(0x00200010, "SH", pseudonymizer.token("study-id", _required(ds, "StudyInstanceUID"), 16))
    # Earlier pixel cleaning still holds (pixels are untouched); other earlier option claims may not.
    earlier = {value for item in ds.get("DeidentificationMethodCodeSequence", [])
               for value in _root_texts(item, "CodeValue")}
    codes = Sequence()
    for value, meaning in [CID7050[key] for key in PIXEL_OPTIONS if CID7050[key][0] in earlier] + \
            _method_codes(options):
        codes.append(Dataset({BaseTag(tag): DataElement(tag, vr, text) for tag, vr, text in
                              ((0x00080100, "SH", value), (0x00080102, "SH", "DCM"), (0x00080104, "LO", meaning))}))
    out.add_new(0x00120064, "SQ", codes)

    source_meta = getattr(ds, "file_meta", None)
    meta = FileMetaDataset()
    identity = {keyword: "\\".join(_root_texts(out, keyword)) for keyword in
                ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality")}
    meta.MediaStorageSOPClassUID = identity["SOPClassUID"]
    meta.MediaStorageSOPInstanceUID = identity["SOPInstanceUID"]
    transfer_syntax = source_meta.get("TransferSyntaxUID") if source_meta is not None else None
    meta.TransferSyntaxUID = transfer_syntax or pydicom.uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out.file_meta = meta

    result = DeidInstanceResult(
        patient_key=patient_key,
        study_uid=identity["StudyInstanceUID"],
        series_uid=identity["SeriesInstanceUID"],
        sop_uid=identity["SOPInstanceUID"],
        modality=identity["Modality"],
        sop_class_uid=identity["SOPClassUID"],
        burned_in_flagged=flagged,
        output_path=None,
    )
    return out, result


def read_dicom(src: Path | BinaryIO) -> Dataset:
    """Read a DICOM Part 10 file (path or binary file object); bad input raises ``InvalidDicomError``."""
    try:
        ds = pydicom.dcmread(src)
    except (PydicomInvalidDicomError, EOFError, struct.error, ValueError, TypeError, KeyError,
            NotImplementedError, UnicodeDecodeError, BytesLengthException) as exc:
        raise InvalidDicomError(f"not a readable DICOM file: {type(exc).__name__}") from exc
    except OSError as exc:  # pydicom's "No tag to read" on a file cut inside an element header
        if isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
            raise  # a missing file is the caller's error, not bad input
        raise InvalidDicomError(f"not a readable DICOM file: {type(exc).__name__}") from exc
    try:
        _check_complete(ds)
    except (EOFError, struct.error, ValueError, TypeError, KeyError, NotImplementedError, UnicodeDecodeError,
            BytesLengthException) as exc:
        # pydicom converts some elements on access (e.g. an unknown VR): they fail here, not in dcmread.
        raise InvalidDicomError(f"malformed element: {type(exc).__name__}") from exc
    return ds


def _us_value(ds: Dataset, tag: int, default: int) -> int:
    """A top-level US value, unpacked from the raw bytes when still raw."""
    if tag not in ds:
        return default
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement):
        if len(raw.value or b"") < 2:
            return default
        return struct.unpack("<H" if raw.is_little_endian else ">H", raw.value[:2])[0]
    return int(raw.value) if raw.value is not None else default


def _check_complete(ds: Dataset) -> None:
    """pydicom reads a file cut short without complaint: compare declared and read lengths."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length != 0xFFFFFFFF and len(raw.value or b"") != raw.length:
            raise InvalidDicomError(f"truncated file: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) is incomplete")
    transfer_syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if 0x7FE00010 in ds and transfer_syntax is not None and not transfer_syntax.is_compressed:
        rows, columns = _us_value(ds, 0x00280010, 0), _us_value(ds, 0x00280011, 0)
        samples, bits = _us_value(ds, 0x00280002, 1), _us_value(ds, 0x00280100, 0)
        frames_text = "".join(_root_texts(ds, "NumberOfFrames")) or "1"
        if not _IS_RE.match(frames_text):
            raise InvalidDicomError("invalid NumberOfFrames")
        frames = int(frames_text)
        expected = (rows * columns * samples * frames * bits + 7) // 8
        if len(ds.get_item(0x7FE00010).value or b"") < expected:
            raise InvalidDicomError("truncated file: pixel data shorter than Rows x Columns x frames")


def deidentify_file(src: Path, out_root: Path, pseudonymizer: Pseudonymizer,
                    options: DeidOptions = DeidOptions()) -> DeidInstanceResult:
    """De-identify one file into ``out_root/<patient_key>/<study>/<series>/<sop>.dcm`` (atomic write)."""
    ds = read_dicom(Path(src))
    out, result = deidentify_dataset(ds, pseudonymizer, options)
    target = Path(out_root) / result.patient_key / result.study_uid / result.series_uid / f"{result.sop_uid}.dcm"
    with atomic_path(target) as tmp:
        try:
            out.save_as(tmp, enforce_file_format=True)
        except (ValueError, struct.error, OverflowError) as exc:
            raise InvalidDicomError(f"cannot re-encode instance: {type(exc).__name__}") from exc
    return DeidInstanceResult(**{**result.__dict__, "output_path": target})


def _input_files(in_dir: Path) -> list[Path]:
    return sorted(p for p in Path(in_dir).rglob("*") if p.is_file() and not p.name.startswith("."))


def deidentify_folder(in_dir: Path, out_dir: Path, pseudonymizer: Pseudonymizer, quarantine_dir: Path,
                      options: DeidOptions = DeidOptions(),
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """De-identify every file under ``in_dir``; bad or burned-in inputs are quarantined, the rest goes on.

    Returns a PHI-free summary (counts, pseudonymous keys and quarantine records' safe summaries).
    """
    files = _input_files(in_dir)
    patients: set[str] = set()
    studies: set[str] = set()
    series: set[str] = set()
    quarantined: list[dict] = []
    written = flagged = 0
    for index, path in enumerate(files, start=1):
        try:
            result = deidentify_file(path, out_dir, pseudonymizer, options)
        except InvalidDicomError as exc:  # BurnedInAnnotationError included
            quarantined.append(quarantine_file(quarantine_dir, path, exc.stage, exc).safe_summary())
        else:
            written += 1
            flagged += result.burned_in_flagged
            patients.add(result.patient_key)
            studies.add(result.study_uid)
            series.add(result.series_uid)
        if progress is not None:
            progress(index, len(files))
    return {
        "instances_written": written,
        "quarantined": quarantined,
        "patients": len(patients),
        "patient_keys": sorted(patients),
        "studies": len(studies),
        "series": len(series),
        "burned_in_flagged": flagged,
    }
