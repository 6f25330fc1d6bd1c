"""guards.samples: valid, deterministic studies that really carry the PHI and labels they claim."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from guards.errors import GuardError
from guards.samples import Population, SampleCorpus, generate_corpus

# Type 1 / Type 2 attributes of the modules the samples use (PS3.3 C.7.1.1, C.7.2.1, C.7.3.1, C.7.5.1,
# C.7.6.1, C.7.6.3, C.12.1), checked on every file.
REQUIRED = ["SOPClassUID", "SOPInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
            "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
            "Modality", "SeriesInstanceUID", "SeriesNumber", "Manufacturer", "InstanceNumber", "SamplesPerPixel",
            "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
            "PixelRepresentation", "PixelData"]
# Type 1 / Type 2 attributes of the modality-specific modules (PS3.3 C.8.1.1 CR Series, C.8.11 DX Series / Image /
# Anatomy Imaged / Detector, C.8.2.1 CT Image, C.7.6.2 Image Plane, C.7.4.1 Frame of Reference).
REQUIRED_BY_MODALITY = {
    "CR": ["BodyPartExamined", "ViewPosition"],
    "DX": ["PresentationIntentType", "PixelIntensityRelationship", "PixelIntensityRelationshipSign",
           "RescaleIntercept", "RescaleSlope", "RescaleType", "PresentationLUTShape", "LossyImageCompression",
           "BurnedInAnnotation", "ImageType", "ImageLaterality", "AnatomicRegionSequence", "DetectorType",
           "ImagerPixelSpacing"],
    "CT": ["ImageType", "RescaleIntercept", "RescaleSlope", "KVP", "AcquisitionNumber", "PixelSpacing",
           "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness", "FrameOfReferenceUID",
           "PositionReferenceIndicator", "PatientPosition"],
}
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1", "CT": "1.2.840.10008.5.1.4.1.1.2"}


def test_every_file_reads_back_with_required_attributes_and_pixels(sample_corpus: SampleCorpus) -> None:
    assert sample_corpus.files
    for path in sample_corpus.files:
        ds = dcmread(path)
        assert ds.preamble is not None and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        for keyword in REQUIRED + REQUIRED_BY_MODALITY[ds.Modality]:
            assert keyword in ds, (path.name, keyword)
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == SOP_CLASS[ds.Modality]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        pixels = ds.pixel_array
        assert pixels.shape == (ds.Rows, ds.Columns) and pixels.max() > 0


def test_labels_csv_lists_every_study(sample_corpus: SampleCorpus) -> None:
    lines = sample_corpus.labels_csv.read_text().splitlines()
    assert lines[0] == "StudyInstanceUID,label"
    studies = {dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in sample_corpus.files}
    assert {line.split(",")[0] for line in lines[1:]} == studies == set(sample_corpus.labels)
    assert {int(line.split(",")[1]) for line in lines[1:]} <= {0, 1}


def _digest(corpus: SampleCorpus) -> dict[str, bytes]:
    return {p.relative_to(corpus.root).as_posix(): p.read_bytes() for p in [*corpus.files, corpus.labels_csv]}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _digest(generate_corpus(tmp_path / "a", studies=6, seed=3, image_size=64))
    b = _digest(generate_corpus(tmp_path / "b", studies=6, seed=3, image_size=64))
    c = _digest(generate_corpus(tmp_path / "c", studies=6, seed=4, image_size=64))
    assert a == b
    assert a != c


def _all_strings(ds: object) -> str:
    from pydicom.dataset import Dataset

    assert isinstance(ds, Dataset)
    parts = []
    for elem in ds.iterall():
        if elem.VR in ("SQ", "OB", "OW"):
            continue
        parts.append(str(elem.value))
    return "\n".join(parts)


def test_phi_of_every_kind_is_really_present(sample_corpus: SampleCorpus) -> None:
    for path in sample_corpus.files:
        rel = path.relative_to(sample_corpus.root).as_posix()
        ds = dcmread(path, stop_before_pixels=True)
        text = _all_strings(ds)
        for token in sample_corpus.phi_tokens[rel]:
            assert token in text, (rel, token)
        # nested sequences carry identifiers
        assert ds.OtherPatientIDsSequence[0].PatientID in sample_corpus.phi_tokens[rel]
        assert ds.RequestAttributesSequence[0].AccessionNumber == ds.AccessionNumber
        assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID.startswith("2.25.")
        # private elements under a private creator hold the name and the MRN
        block = ds.private_block(0x0029, "ACME MEDICAL 1.0")
        assert block[0x11].value == ds.PatientID
        assert str(ds.PatientName.family_name) in block[0x10].value
        # free text names the patient; the folder name carries the MRN, as real exports do
        assert str(ds.PatientName.family_name).upper() in ds.StudyDescription
        assert str(ds.PatientName.family_name) in ds.ImageComments
        assert rel.startswith(ds.PatientID + "/")
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime",
                        "StudyTime", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName",
                        "InstitutionAddress", "StationName", "DeviceSerialNumber", "PerformingPhysicianName",
                        "OperatorsName"):
            assert str(ds.get(keyword, "")), keyword


def test_non_ascii_names_declare_their_character_set(tmp_path: Path) -> None:
    corpus = generate_corpus(tmp_path, studies=40, seed=5, image_size=64,
                             population=Population(non_ascii_share=1.0))
    charsets = set()
    for path in corpus.files:
        ds = dcmread(path, stop_before_pixels=True)
        name = str(ds.PatientName)
        assert not name.isascii()
        charsets.add(ds.SpecificCharacterSet)
        assert dcmread(path, stop_before_pixels=True).PatientName == ds.PatientName  # round trip
    assert charsets == {"ISO_IR 100", "ISO_IR 192"}


def test_subgroup_shares_follow_the_population(tmp_path: Path) -> None:
    pop = Population(ethnic_groups=(("GROUP A", 0.6), ("GROUP B", 0.34), ("GROUP C", 0.06)),
                     prevalence=(("GROUP A", 0.5), ("GROUP B", 0.3), ("GROUP C", 0.1)), ct_share=0.0)
    corpus = generate_corpus(tmp_path, studies=400, seed=9, image_size=64, population=pop)
    groups = [d["EthnicGroup"] for d in corpus.demographics]
    sexes = [d["PatientSex"] for d in corpus.demographics]
    n = len(groups)
    for group, share in pop.ethnic_groups:
        observed = groups.count(group) / n
        sd = (share * (1 - share) / n) ** 0.5
        assert abs(observed - share) < 4 * sd + 0.01, (group, observed, share)
    assert abs(sexes.count("F") / n - 0.5) < 0.1
    ages = np.array([d["PatientAge"] for d in corpus.demographics], dtype=float)
    assert abs(ages.mean() - pop.age_mean) < 4 * pop.age_sd / n**0.5 + 1.0, ages.mean()
    assert 18 <= ages.min() and ages.max() <= 97
    # label prevalence per group, read from the headers the files really carry
    by_group: dict[str, list[int]] = {}
    studies_per_patient: dict[str, set[str]] = {}
    for path in corpus.files:
        ds = dcmread(path, stop_before_pixels=True)
        born, seen = ds.PatientBirthDate, ds.StudyDate  # PatientAge agrees with birth date and study date
        assert ds.PatientAge == f"{int(seen[:4]) - int(born[:4]) - int(seen[4:] < born[4:]):03d}Y"
        by_group.setdefault(str(ds.EthnicGroup), []).append(corpus.labels[ds.StudyInstanceUID])
        studies_per_patient.setdefault(str(ds.PatientID), set()).add(str(ds.StudyInstanceUID))
    for group, prevalence in pop.prevalence:
        observed_labels = by_group[group]
        sd = (prevalence * (1 - prevalence) / len(observed_labels)) ** 0.5
        assert abs(float(np.mean(observed_labels)) - prevalence) < 4 * sd + 0.02, (group, prevalence)
    repeat = sum(len(s) > 1 for s in studies_per_patient.values()) / len(studies_per_patient)
    assert abs(repeat - pop.repeat_study_share) < 0.1
    burned = len(corpus.burned_in) / len(corpus.files)
    assert 0.14 < burned < 0.26


def test_burned_in_annotation_is_set_inconsistently(tmp_path: Path) -> None:
    corpus = generate_corpus(tmp_path, studies=80, seed=2, image_size=64, population=Population(ct_share=0.0))
    values = set()
    for rel in corpus.burned_in:
        ds = dcmread(corpus.root / rel, stop_before_pixels=True)
        values.add(ds.get("BurnedInAnnotation"))
    assert {"YES", "NO", None} <= values  # as in real archives: sometimes right, sometimes wrong, often absent
    photometric = {dcmread(p, stop_before_pixels=True).PhotometricInterpretation for p in corpus.files}
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


@pytest.mark.skipif(subprocess.run(["which", "tesseract"], capture_output=True).returncode != 0,
                    reason="tesseract-ocr not installed (make test installs it)")
def test_burned_in_text_is_readable_by_ocr(sample_corpus: SampleCorpus, tmp_path: Path) -> None:
    from PIL import Image

    checked = 0
    for rel, tokens in list(sample_corpus.burned_in.items())[:3]:
        ds = dcmread(sample_corpus.root / rel)
        a = ds.pixel_array.astype(np.float32)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            a = 4095 - a
        png = tmp_path / "frame.png"
        Image.fromarray((a / 16).astype(np.uint8)).save(png)
        text = subprocess.run(["tesseract", str(png), "-", "--psm", "11"], capture_output=True, text=True).stdout
        compact = "".join(text.split())  # tesseract may split "MRN71 28847" around a narrow "1"
        for token in tokens:
            if token.isascii():  # the English model cannot spell non-ASCII names; the ID and date still must read
                assert token in compact, (rel, token, text)
                checked += 1
    assert checked > 0


def test_label_is_learnable_by_a_small_model(tmp_path: Path) -> None:
    """Logistic regression on 16x16 downsampled radiographs beats chance on held-out studies."""
    corpus = generate_corpus(tmp_path, studies=160, seed=21, image_size=64,
                             population=Population(ct_share=0.0, burned_in_share=0.0))
    xs, ys = [], []
    for path in corpus.files:
        ds = dcmread(path)
        a = ds.pixel_array.astype(np.float32) / 4095
        if ds.PhotometricInterpretation == "MONOCHROME1":
            a = 1 - a
        xs.append(a.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel())
        ys.append(corpus.labels[ds.StudyInstanceUID])
    x, y = np.array(xs), np.array(ys, dtype=np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train, test = slice(0, 110), slice(110, None)
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(800):  # plain gradient descent with L2, deterministic
        p = 1 / (1 + np.exp(-(x[train] @ w + b)))
        w -= 0.1 * (x[train].T @ (p - y[train]) / len(p) + 0.01 * w)
        b -= 0.1 * float(np.mean(p - y[train]))
    pred = (x[test] @ w + b) > 0
    tpr = float(np.mean(pred[y[test] == 1]))
    tnr = float(np.mean(~pred[y[test] == 0]))
    assert (tpr + tnr) / 2 > 0.7  # balanced accuracy well above chance (0.5)


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="studies must be at least 1"):
        generate_corpus(tmp_path, studies=0, seed=1)
    with pytest.raises(ValueError, match="burned_in_share"):
        Population(burned_in_share=1.5)
    with pytest.raises(GuardError, match="prevalence lacks the groups"):
        Population(ethnic_groups=(("GROUP Z", 1.0),))
