"""A stand-in corpus for the benchmark while guards.samples is not available: CT-like instances with made-up PHI.

Each instance carries made-up identifiers (never real people) in the places de-identifiers miss: the Patient
module, free text (descriptions, comments), nested sequences (Request Attributes, Referenced Patient, Other
Patient IDs), a private block, and a person name two sequences deep. ``generate`` returns, per relative path, the
PHI strings written into that file, like ``SampleCorpus.phi_tokens``. Seeded: the same seed gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

FAMILY = ("Okonkwo", "Lindqvist", "Haraldsen", "Marchetti", "Villanueva", "Brennagh", "Kowalczyk", "Thibodeaux")
GIVEN = ("Adaeze", "Birgitta", "Cosimo", "Dolores", "Eamon", "Florentyna", "Gwendolyn", "Hamish")
STREETS = ("Juniper Lane", "Quarry Road", "Wexford Close", "Sorrel Street")
HOSPITALS = ("Saint Aldhelm Infirmary", "Northmere General", "Kestrel Valley Clinic")
PHYSICIANS = ("Drummond^Ottoline", "Fairweather^Ignatius", "Pemberton^Clementine")


def _uid(rng: np.random.Generator) -> str:
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


def generate(out: Path, *, instances: int, seed: int, per_study: int = 8) -> dict[str, list[str]]:
    """Write ``instances`` CT instances under ``out``; return relative path -> PHI strings in that file."""
    rng = np.random.default_rng(seed)
    phi: dict[str, list[str]] = {}
    study: dict[str, str] = {}
    for i in range(instances):
        if i % per_study == 0:
            p = i // (per_study * 2)  # two studies per patient
            family, given = FAMILY[p % len(FAMILY)] + f"{p:04d}", GIVEN[(p // 3) % len(GIVEN)]
            study = {
                "family": family, "given": given, "mrn": f"MRN{700000 + p:06d}",
                "birth": f"19{40 + p % 50:02d}{1 + p % 12:02d}{1 + p % 27:02d}",
                "address": f"{10 + p % 80} {STREETS[p % len(STREETS)]}",
                "accession": f"ACC{900000 + i:07d}", "hospital": HOSPITALS[p % len(HOSPITALS)],
                "physician": PHYSICIANS[p % len(PHYSICIANS)], "study_uid": _uid(rng), "series_uid": _uid(rng),
                "phone": f"+44 20 7946 {p % 10000:04d}",
            }
        s = study
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(rng)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = s["study_uid"], s["series_uid"]
        ds.FrameOfReferenceUID = s["study_uid"] + ".1"
        ds.Modality, ds.Manufacturer, ds.BodyPartExamined = "CT", "ACME", "CHEST"
        ds.PatientName = f"{s['family']}^{s['given']}"
        ds.PatientID, ds.PatientBirthDate, ds.PatientSex = s["mrn"], s["birth"], "F" if i % 2 else "M"
        ds.PatientAge = "045Y"
        ds.PatientAddress = s["address"]
        ds.PatientTelephoneNumbers = s["phone"]
        ds.AccessionNumber, ds.InstitutionName = s["accession"], s["hospital"]
        ds.ReferringPhysicianName = s["physician"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
        ds.StudyTime = "101500"
        ds.StudyDescription = f"CT chest for {s['family']}"
        ds.ImageComments = f"pt {s['mrn']} seen at {s['hospital']}"
        request = Dataset()
        request.RequestedProcedureID = s["accession"]
        request.ScheduledProcedureStepDescription = f"follow-up {s['family']} {s['given']}"
        ds.RequestAttributesSequence = Sequence([request])
        other = Dataset()
        other.PatientID = s["mrn"] + "-B"
        ds.OtherPatientIDsSequence = Sequence([other])
        deep = Dataset()
        deep.PersonName = s["physician"]
        content = Dataset()
        content.ContentSequence = Sequence([deep])
        ds.ContentSequence = Sequence([content])
        block = ds.private_block(0x0011, "ACME HOSPITAL PACS", create=True)
        block.add_new(0x01, "LO", f"{s['family']} {s['mrn']}")
        ds.Rows = ds.Columns = 64
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4096, size=(64, 64), dtype=np.uint16).tobytes()
        rel = f"study{i // per_study:05d}/im{i % per_study:03d}.dcm"
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        phi[rel] = [s["family"], s["given"], s["mrn"], s["birth"], s["address"], s["accession"], s["hospital"],
                    s["physician"].split("^")[0], s["phone"]]
    return phi
