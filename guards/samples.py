"""Realistic generated sample studies: chest radiograph phantoms and small CT series, full of PHI.

The samples stand in for a hospital's archive in the demo, the tests and the benchmarks, so they carry PHI
where real files carry it: names (also non-ASCII, with Specific Character Set ISO_IR 100 or ISO_IR 192), IDs,
Other Patient IDs Sequence, addresses, phone numbers, accession numbers, physicians, institution and station
names, device serial numbers, dates, times and datetimes in many attributes, free text naming the patient,
nested sequences, private elements under a private creator, folder names built from the MRN, and burned-in
text (name, ID, date) drawn into the pixels of about 20% of the images with Burned In Annotation set
inconsistently, as in real archives.

Every study has a label (nodule present = 1, absent = 0) that a small model can learn, and demographics drawn
from a configurable :class:`Population` with a small minority group and label prevalence that can differ by
group. Everything is derived from ``seed``: the same seed gives byte-identical files.

All names, IDs and addresses are invented; no real patient data is involved.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from guards.atomic import save_dataset
from guards.errors import GuardError
from guards.progress import progress

logger = logging.getLogger(__name__)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE_CREATOR = "ACME MEDICAL 1.0"
PRIVATE_GROUP = 0x0029

FAMILY = ["Smith", "Johnson", "Garcia", "Okafor", "Nakamura", "Kowalski", "Haddad", "Jensen", "Moreau", "Silva",
          "Novak", "Rossi", "Fischer", "Larsen", "Mbeki", "Tanaka", "Dubois", "Hughes", "Petrov", "Almeida"]
GIVEN = ["Anna", "James", "Maria", "Chinedu", "Yuki", "Piotr", "Layla", "Freja", "Louis", "Beatriz",
         "Tomas", "Giulia", "Lukas", "Ingrid", "Thabo", "Hiro", "Claire", "Owen", "Irina", "Joao"]
LATIN1_NAMES = [("Müller", "Jürgen"), ("Núñez", "José"), ("Sørensen", "Åse"), ("Gonçalves", "Inês")]
UTF8_NAMES = [("Łukasiewicz", "Zoë"), ("Dvořák", "Anežka"), ("Şahin", "Çağla")]
STREETS = ["Maple Avenue", "Harbour Road", "Kingsway", "Linden Street", "Mill Lane", "Quarry Hill"]
CITIES = ["Springfield", "Riverton", "Lakeside", "Fairview"]
SITES = [("St. Example General Hospital", "1 Hospital Way, Springfield"),
         ("Northfield Clinic", "22 North Road, Riverton"),
         ("Riverside Medical Center", "5 River Street, Lakeside"),
         ("Fairview Imaging Institute", "9 Fair Lane, Fairview")]
DEVICES = [("ACME Imaging", "Radix 500", "CR"), ("Globex Medical", "DR-9", "DX"),
           ("Initech Health", "Clarity DX", "DX")]
CT_DEVICE = ("Initech Health", "Helix 64")


class SampleSpecError(GuardError, ValueError):
    """Raised when :func:`generate_corpus` or :class:`Population` gets an option out of range."""


PHYSICIANS = [("House", "Gregory"), ("Quinn", "Michaela"), ("Grey", "Meredith"), ("Carter", "John"),
              ("Yang", "Cristina"), ("Ross", "Douglas")]


@dataclass(frozen=True)
class Population:
    """Who the generated patients are. Shares are normalised; keys are the DICOM code strings."""

    sex: tuple[tuple[str, float], ...] = (("F", 0.5), ("M", 0.5))
    ethnic_groups: tuple[tuple[str, float], ...] = (("GROUP A", 0.6), ("GROUP B", 0.35), ("GROUP C", 0.05))
    prevalence: tuple[tuple[str, float], ...] = (("GROUP A", 0.4), ("GROUP B", 0.4), ("GROUP C", 0.3))
    age_mean: float = 55.0  # age in years at the first study (normal, clipped to age_range)
    age_sd: float = 14.0
    age_range: tuple[int, int] = (20, 85)  # an adult chest cohort: no paediatric or 90+ patients by default
    repeat_study_share: float = 0.3  # share of patients with a second study at a later date
    ct_share: float = 0.15  # share of studies that also have a small CT series
    burned_in_share: float = 0.2  # share of radiographs with burned-in name, ID and date
    monochrome1_share: float = 0.2  # share of radiographs stored as MONOCHROME1
    non_ascii_share: float = 0.1  # share of patients with a non-ASCII name
    sites: int = 3

    def __post_init__(self) -> None:
        for name in ("repeat_study_share", "ct_share", "burned_in_share", "monochrome1_share", "non_ascii_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SampleSpecError(f"Population.{name} must be within [0, 1], got {getattr(self, name)}; "
                                      "give a share between 0 and 1")
        if not 1 <= self.sites <= len(SITES):
            raise SampleSpecError(f"Population.sites must be 1 to {len(SITES)}, got {self.sites}")
        groups = {g for g, _ in self.ethnic_groups}
        missing = groups - {g for g, _ in self.prevalence}
        if missing:
            raise SampleSpecError(f"Population.prevalence lacks the groups {sorted(missing)}; "
                                  "give a label prevalence for every ethnic group")


@dataclass(frozen=True)
class SampleCorpus:
    """What :func:`generate_corpus` wrote, with the ground truth the tests check against."""

    root: Path
    files: list[Path]
    labels_csv: Path
    phi_tokens: dict[str, list[str]]  # relative POSIX path -> PHI strings present in that file's header
    burned_in: dict[str, list[str]]  # relative POSIX path -> tokens drawn into that file's pixels
    demographics: list[dict[str, Any]] = field(default_factory=list)  # one per patient
    labels: dict[str, int] = field(default_factory=dict)  # StudyInstanceUID -> label


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID under the 2.25 root (PS3.5 B.2) from the seed and a path of parts."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _age(birth: date, on: date) -> int:
    """Completed years of age on ``on`` (the Patient's Age (0010,1010) of PS3.3 C.7.2.2)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _choice(rng: np.random.Generator, items: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in items]
    weights = np.array([w for _, w in items], dtype=float)
    return str(names[int(rng.choice(len(names), p=weights / weights.sum()))])


@dataclass
class _Patient:
    index: int
    family: str
    given: str
    charset: str
    patient_id: str
    other_id: str
    sex: str
    ethnic_group: str
    birth: date
    size_m: float
    weight_kg: float
    address: str
    phone: str


def _patient(rng: np.random.Generator, index: int, population: Population, *, first_study: date) -> _Patient:
    """One invented patient whose age at ``first_study`` follows the population's age distribution."""
    roll = rng.random()
    if roll < population.non_ascii_share * 0.6:
        family, given = LATIN1_NAMES[int(rng.integers(len(LATIN1_NAMES)))]
        charset = "ISO_IR 100"
    elif roll < population.non_ascii_share:
        family, given = UTF8_NAMES[int(rng.integers(len(UTF8_NAMES)))]
        charset = "ISO_IR 192"
    else:
        family, given = FAMILY[int(rng.integers(len(FAMILY)))], GIVEN[int(rng.integers(len(GIVEN)))]
        charset = "ISO_IR 100"
    age = float(np.clip(rng.normal(population.age_mean, population.age_sd), *population.age_range))
    birth = first_study - timedelta(days=int(age * 365.25) + int(rng.integers(0, 365)))
    sex = _choice(rng, population.sex)
    size = float(np.round(rng.normal(1.75 if sex == "M" else 1.63, 0.07), 2))
    weight = float(np.round(rng.normal(82 if sex == "M" else 68, 12), 1))
    return _Patient(
        index=index, family=family, given=given, charset=charset,
        patient_id=f"MRN{int(rng.integers(10**6, 10**7))}", other_id=f"NHS{int(rng.integers(10**8, 10**9))}",
        sex=sex, ethnic_group=_choice(rng, population.ethnic_groups), birth=birth, size_m=size, weight_kg=weight,
        address=f"{int(rng.integers(1, 200))} {STREETS[int(rng.integers(len(STREETS)))]}^^"
                f"{CITIES[int(rng.integers(len(CITIES)))]}",
        phone=f"+1-555-{int(rng.integers(1000, 9999))}-{int(rng.integers(100, 999))}",
    )


# ---------------------------------------------------------------------------------------------- pixels


def chest_phantom(rng: np.random.Generator, size: int, *, nodule: bool) -> np.ndarray:
    """A 12-bit chest radiograph phantom (MONOCHROME2 values): body, lungs, ribs, heart, noise, maybe a nodule."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 300.0, dtype=np.float32)
    body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1
    img[body] = 2600
    lungs = np.zeros_like(body)
    for cx in (0.32 + rng.normal(0, 0.01), 0.68 + rng.normal(0, 0.01)):
        lungs |= ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
    img[lungs] = 1100
    ribs = (np.sin((yy * 22 + np.abs(xx - 0.5) * 6) * np.pi) > 0.75) & lungs
    img[ribs] += 500
    heart = ((xx - 0.56) / 0.13) ** 2 + ((yy - 0.62) / 0.14) ** 2 < 1
    img[heart] = 2300
    spine = (np.abs(xx - 0.5) < 0.035) & body
    img[spine] = 3000
    if nodule:
        side = 0.32 if rng.random() < 0.5 else 0.68
        cx, cy = side + rng.normal(0, 0.04), 0.45 + rng.normal(0, 0.08)
        r = rng.uniform(0.03, 0.05)
        img += 1100 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))) * lungs
    img += rng.normal(0, 60, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def ct_slice(rng: np.random.Generator, size: int, *, nodule: bool, z: int) -> np.ndarray:
    """A CT slice phantom in stored values (RescaleIntercept -1024): air, body, lungs, maybe a nodule."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.35) ** 2 < 1
    hu[body] = 40
    lungs = (((xx - 0.32) / 0.13) ** 2 + ((yy - 0.48) / 0.22) ** 2 < 1) | (
        ((xx - 0.68) / 0.13) ** 2 + ((yy - 0.48) / 0.22) ** 2 < 1)
    hu[lungs] = -850
    if nodule and z == 1:
        hu += 900 * np.exp(-(((xx - 0.32) ** 2 + (yy - 0.45) ** 2) / (2 * 0.04**2))) * lungs
    hu += rng.normal(0, 15, hu.shape)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


def burn_text(pixels: np.ndarray, lines: list[str], *, value: int) -> np.ndarray:
    """Draw ``lines`` in white on a dark band in the top-left corner (cap height >= 12 px), as modalities do."""
    h, w = pixels.shape
    font = ImageFont.load_default(size=max(14, h // 12))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    line_h = max(14, h // 12) + 8
    band_w = min(w, max(int(draw.textlength(line, font=font)) for line in lines) + 12)
    band = np.zeros((h, w), dtype=bool)
    band[: line_h * len(lines) + 8, :band_w] = True
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * line_h), line, fill=255, font=font)
    mask = np.asarray(canvas) > 127
    out = pixels.copy()
    out[band] = 0
    out[mask] = value
    return out


# ------------------------------------------------------------------------------------------- datasets


def _base_dataset(p: _Patient, *, sop_class: str, sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("2.25.302213456765423234978001")
    meta.ImplementationVersionName = "RGUARD_SAMPLES"
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = p.charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _pn(family: str, given: str) -> str:
    return f"{family}^{given}"


def _study_tokens(p: _Patient, st: dict[str, Any]) -> list[str]:
    return [p.family, p.given, p.patient_id, p.other_id, p.address.split("^")[0], p.phone,
            p.birth.strftime("%Y%m%d"), st["date"].strftime("%Y%m%d"), st["accession"], st["requested_id"],
            st["referring"][0], st["performing"][0], st["operator"][0], st["site"][0], st["station"],
            st["serial"]]


def _fill_common(ds: Dataset, p: _Patient, st: dict[str, Any], *, modality: str, series_uid: str,
                 series_number: int, instance: int, seed: int) -> None:
    d = st["date"].strftime("%Y%m%d")
    age = _age(p.birth, st["date"])
    # Patient module (PS3.3 C.7.1.1)
    ds.PatientName = _pn(p.family, p.given)
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = st["site"][0]
    ds.PatientBirthDate = p.birth.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    other = Dataset()
    other.PatientID = p.other_id
    other.IssuerOfPatientID = "NATIONAL REGISTRY"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.EthnicGroup = p.ethnic_group
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    ref_patient = Dataset()
    ref_patient.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.4"  # Detached Patient Management (retired)
    ref_patient.ReferencedSOPInstanceUID = _uid(seed, "patient-ref", p.index)
    ds.ReferencedPatientSequence = Sequence([ref_patient])
    # Patient Study module
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientSize = f"{p.size_m:.2f}"
    ds.PatientWeight = f"{p.weight_kg:.1f}"
    ds.AdditionalPatientHistory = f"{p.given} {p.family} reports cough for 3 weeks; smoker. Call {p.phone}."
    # General Study module (PS3.3 C.7.2.1)
    ds.StudyInstanceUID = st["study_uid"]
    ds.StudyDate = d
    ds.StudyTime = st["time"]
    ds.ReferringPhysicianName = _pn(*st["referring"])
    ds.StudyID = st["requested_id"]
    ds.AccessionNumber = st["accession"]
    ds.StudyDescription = f"CHEST {modality} for {p.family.upper()} {p.given.upper()}"
    ref_study = Dataset()
    ref_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
    ref_study.ReferencedSOPInstanceUID = _uid(seed, "study-ref", st["study_uid"])
    ds.ReferencedStudySequence = Sequence([ref_study])
    proc = Dataset()
    proc.CodeValue = "36643-5" if modality != "CT" else "24627-2"
    proc.CodingSchemeDesignator = "LN"
    proc.CodeMeaning = "XR Chest 2 Views" if modality != "CT" else "CT Chest"
    ds.ProcedureCodeSequence = Sequence([proc])
    request = Dataset()
    request.RequestedProcedureID = st["requested_id"]
    request.AccessionNumber = st["accession"]
    request.ScheduledProcedureStepID = f"SPS{st['accession'][3:]}"
    request.RequestedProcedureDescription = f"Chest imaging, {p.family}"
    ds.RequestAttributesSequence = Sequence([request])
    # General Series module (PS3.3 C.7.3.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = d
    ds.SeriesTime = st["time"]
    ds.PerformingPhysicianName = _pn(*st["performing"])
    ds.OperatorsName = _pn(*st["operator"])
    ds.BodyPartExamined = "CHEST"
    ds.Laterality = ""
    ds.PatientPosition = "" if modality != "CT" else "FFS"
    # General Equipment module (PS3.3 C.7.5.1)
    ds.Manufacturer = st["device"][0] if modality != "CT" else CT_DEVICE[0]
    ds.ManufacturerModelName = st["device"][1] if modality != "CT" else CT_DEVICE[1]
    ds.InstitutionName = st["site"][0]
    ds.InstitutionAddress = st["site"][1]
    ds.StationName = st["station"]
    ds.DeviceSerialNumber = st["serial"]
    ds.SoftwareVersions = "4.2.1"
    # General Image / Acquisition modules
    ds.InstanceNumber = instance
    ds.ContentDate = d
    ds.ContentTime = st["time"]
    ds.AcquisitionDate = d
    ds.AcquisitionTime = st["time"]
    ds.AcquisitionDateTime = f"{d}{st['time']}.000000+0100"
    ds.PatientOrientation = ["L", "F"] if modality != "CT" else ""
    ds.ImageComments = f"Patient {p.given} {p.family} ({p.patient_id}), seen by Dr {st['referring'][0]}"
    # Private block holding PHI, as some vendors do (PS3.5 7.8.1)
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", _pn(p.family, p.given))
    block.add_new(0x11, "LO", p.patient_id)
    block.add_new(0x12, "DA", p.birth.strftime("%Y%m%d"))
    block.add_new(0x13, "LO", "protocol CHEST_STD v2")


def _image_pixel(ds: Dataset, pixels: np.ndarray, *, photometric: str) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) for 12 bits stored in 16."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()


def _radiograph(p: _Patient, st: dict[str, Any], rng: np.random.Generator, *, seed: int, size: int,
                burned: bool, population: Population) -> tuple[Dataset, list[str]]:
    modality = st["device"][2]
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE
    series_uid = _uid(seed, "series", st["study_uid"], 1)
    sop_uid = _uid(seed, "sop", series_uid, 1)
    ds = _base_dataset(p, sop_class=sop_class, sop_uid=sop_uid)
    _fill_common(ds, p, st, modality=modality, series_uid=series_uid, series_number=1, instance=1, seed=seed)
    pixels = chest_phantom(rng, size, nodule=bool(st["label"]))
    tokens: list[str] = []
    if burned:
        drawn_date = st["date"].strftime("%d/%m/%Y")
        lines = [f"{p.family.upper()} {p.given.upper()}", p.patient_id, drawn_date]
        pixels = burn_text(pixels, lines, value=4095)
        tokens = [p.family.upper(), p.patient_id, drawn_date]
    inconsistent = rng.random()
    if burned:  # real archives set it inconsistently: YES, NO or absent
        value = "YES" if inconsistent < 0.5 else "NO" if inconsistent < 0.75 else None
    else:
        value = "NO" if inconsistent < 0.6 else None
    if value is None and modality == "DX":  # Type 1 in the DX Image module (PS3.3 C.8.11.3): wrong, not absent
        value = "NO"
    if value is not None:
        ds.BurnedInAnnotation = value
    monochrome1 = rng.random() < population.monochrome1_share
    if monochrome1:
        pixels = (4095 - pixels).astype(np.uint16)
    _image_pixel(ds, pixels, photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
    ds.ViewPosition = "PA"
    if modality == "CR":  # CR Image module (PS3.3 C.8.1.2)
        ds.KVP = "120"
        ds.PlateID = f"PLATE{int(rng.integers(1000, 9999))}"
    else:  # DX Image / DX Detector modules (PS3.3 C.8.11)
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if not monochrome1 else -1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.LossyImageCompression = "00"
        ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
        # DX Anatomy Imaged module (PS3.3 C.8.11.5)
        ds.ImageLaterality = "U"
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-D3000", "SRT", "Chest"
        ds.AnatomicRegionSequence = Sequence([region])
        ds.ImagerPixelSpacing = [0.139, 0.139]
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorID = f"DET-{st['serial']}"
    ds.PixelSpacing = [0.139, 0.139]
    ds.Laterality = ""
    return ds, tokens


def _ct_series(p: _Patient, st: dict[str, Any], rng: np.random.Generator, *, seed: int) -> list[Dataset]:
    series_uid = _uid(seed, "series", st["study_uid"], 2)
    frame_of_reference = _uid(seed, "for", st["study_uid"])
    out = []
    for z in range(3):
        sop_uid = _uid(seed, "sop", series_uid, z + 1)
        ds = _base_dataset(p, sop_class=CT_IMAGE_STORAGE, sop_uid=sop_uid)
        _fill_common(ds, p, st, modality="CT", series_uid=series_uid, series_number=2, instance=z + 1, seed=seed)
        _image_pixel(ds, ct_slice(rng, 64, nodule=bool(st["label"]), z=z), photometric="MONOCHROME2")
        # CT Image module (PS3.3 C.8.2.1) and Image Plane module (C.7.6.2)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP = "120"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = "5.0"
        ds.PixelSpacing = [5.0, 5.0]
        ds.ImagePositionPatient = [-160.0, -160.0, -5.0 * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = -5.0 * z
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.AcquisitionNumber = 1
        out.append(ds)
    return out


def generate_corpus(out: Path, *, studies: int, seed: int, population: Population | None = None,
                    image_size: int = 256) -> SampleCorpus:
    """Write ``studies`` generated studies under ``out`` plus ``out/labels.csv``; deterministic per ``seed``."""
    if studies < 1:
        raise SampleSpecError(f"studies must be at least 1, got {studies}")
    if image_size < 64:
        raise SampleSpecError(f"image_size must be at least 64 pixels, got {image_size}")
    population = population or Population()
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prevalence = dict(population.prevalence)
    plan: list[tuple[_Patient, dict[str, Any]]] = []
    patients: list[_Patient] = []
    while len(plan) < studies:
        first = date(2019, 1, 1) + timedelta(days=int(rng.integers(0, 5 * 365)))
        p = _patient(rng, len(patients), population, first_study=first)
        patients.append(p)
        n_studies = 2 if rng.random() < population.repeat_study_share else 1
        for k in range(min(n_studies, studies - len(plan))):
            site = SITES[int(rng.integers(population.sites))]
            st: dict[str, Any] = {
                "study_uid": _uid(seed, "study", p.index, k),
                "date": first + timedelta(days=int(rng.integers(90, 700)) * k),
                "time": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
                "accession": f"ACC{int(rng.integers(10**7, 10**8))}",
                "requested_id": f"RP{int(rng.integers(10**5, 10**6))}",
                "referring": PHYSICIANS[int(rng.integers(len(PHYSICIANS)))],
                "performing": PHYSICIANS[int(rng.integers(len(PHYSICIANS)))],
                "operator": PHYSICIANS[int(rng.integers(len(PHYSICIANS)))],
                "site": site,
                "station": f"XR{SITES.index(site) + 1}-{int(rng.integers(10, 99))}",
                "serial": f"SN{int(rng.integers(10**6, 10**7))}",
                "device": DEVICES[int(rng.integers(len(DEVICES)))],
                "label": int(rng.random() < prevalence[p.ethnic_group]),
                "ct": bool(rng.random() < population.ct_share),
                "burned": bool(rng.random() < population.burned_in_share),
            }
            plan.append((p, st))
    files: list[Path] = []
    phi_tokens: dict[str, list[str]] = {}
    burned_in: dict[str, list[str]] = {}
    labels: dict[str, int] = {}
    first_age: dict[int, int] = {}  # patient index -> age in years at the first study
    for p, st in progress(plan, total=len(plan), what="samples", logger=logger):
        tokens = _study_tokens(p, st)
        study_dir = out / p.patient_id / f"{st['date']:%Y%m%d}_{st['accession']}"
        ds, drawn = _radiograph(p, st, rng, seed=seed, size=image_size, burned=st["burned"], population=population)
        written = [(ds, study_dir / "1" / "IMG0001.dcm", drawn)]
        if st["ct"]:
            written += [(c, study_dir / "2" / f"CT{n + 1:04d}.dcm", []) for n, c in enumerate(_ct_series(p, st, rng,
                                                                                                     seed=seed))]
        for dataset, path, drawn_tokens in written:
            save_dataset(dataset, path)
            rel = path.relative_to(out).as_posix()
            files.append(path)
            phi_tokens[rel] = list(tokens)
            if drawn_tokens:
                burned_in[rel] = drawn_tokens
        labels[st["study_uid"]] = st["label"]
        first_age.setdefault(p.index, _age(p.birth, st["date"]))
    labels_csv = out / "labels.csv"
    with labels_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["StudyInstanceUID", "label"])
        writer.writerows(sorted(labels.items()))
    demographics = [
        {"PatientID": p.patient_id, "PatientSex": p.sex, "EthnicGroup": p.ethnic_group,
         "PatientBirthDate": p.birth.strftime("%Y%m%d"), "PatientName": _pn(p.family, p.given),
         "PatientAge": first_age[p.index]}
        for p in patients if p.index in first_age
    ]
    logger.info("samples: %d studies, %d patients, %d files under %s", len(plan), len(patients), len(files), out)
    return SampleCorpus(root=out, files=files, labels_csv=labels_csv, phi_tokens=phi_tokens, burned_in=burned_in,
                        demographics=demographics, labels=labels)
