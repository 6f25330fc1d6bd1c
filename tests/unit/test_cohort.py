"""guards.cohort: one row per study, pseudonymous ids, age bands with 90+ top-coded, released quasi-identifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from guards.cohort import COHORT_SCHEMA, age_band, age_years, band_labels, build_cohort, patients_view
from guards.deid.pseudonyms import pseudo_patient_id, pseudo_uid
from guards.errors import InputError
from guards.keys import PseudonymKey
from guards.manifest import empty_row, to_table
from guards.policy import ReleasePolicy

BANDS = (0, 18, 40, 65, 90)


def _inst(path: str, study: str, patient: str, **headers: Any) -> dict[str, Any]:
    row = empty_row(path)
    row.update(status="indexed", reason="", StudyInstanceUID=study, PatientID=patient, SOPInstanceUID=path + ".1",
               Modality="CT", **headers)
    return row


@pytest.fixture()
def index() -> pa.Table:
    return to_table(
        [
            _inst("a/1.dcm", "1.2.3.1", "P1", PatientSex="F", PatientAge="034Y", EthnicGroup="A",
                  StudyDate="20240102", Manufacturer="ACME", InstitutionName="General"),
            _inst("a/2.dcm", "1.2.3.1", "P1", PatientSex="F", PatientAge="034Y", EthnicGroup="A",
                  StudyDate="20240102", Manufacturer="ACME", InstitutionName="General"),
            _inst("b/1.dcm", "1.2.3.2", "P2", PatientSex="M", PatientAge="", PatientBirthDate="19300601",
                  StudyDate="20240102", EthnicGroup=""),
            _inst("c/1.dcm", "1.2.3.3", "P3", PatientSex="male", PatientAge="006M", StudyDate="20230501"),
            {**empty_row("README.txt"), "status": "excluded", "reason": "sidecar table, not an instance"},
        ]
    )


@pytest.fixture()
def deid_manifest() -> pa.Table:
    def out(src: str, status: str, reason: str = "", **headers: Any) -> dict[str, Any]:
        row = empty_row("x" + src)
        row.update(source_path=src, status=status, reason=reason, **headers)
        return row

    return to_table(
        [
            # released headers: age kept, institution removed, date shifted
            out("a/1.dcm", "published", PatientSex="F", PatientAge="034Y", StudyDate="20230915", Manufacturer="ACME"),
            out("a/2.dcm", "quarantined", "burned-in text"),
            out("b/1.dcm", "published", PatientSex="M"),
            out("c/1.dcm", "quarantined", "burned-in text"),
        ]
    )


def test_one_row_per_study_with_pseudonyms_and_subgroups(
    index: pa.Table, deid_manifest: pa.Table, key: PseudonymKey
) -> None:
    cohort = build_cohort(index, deid_manifest=deid_manifest, labels={"1.2.3.1": 1}, policy=ReleasePolicy(), key=key,
                          demographics=pa.table({"PatientID": ["P2"], "EthnicGroup": ["B"]}))
    assert cohort.schema == COHORT_SCHEMA
    assert cohort.num_rows == 3  # the sidecar is not a study
    rows = {r["StudyInstanceUID"]: r for r in cohort.to_pylist()}
    s1 = rows[pseudo_uid(key, "1.2.3.1")]
    assert s1["PatientID"] == pseudo_patient_id(key, "P1")
    assert (s1["label"], s1["sex"], s1["age_band"], s1["ethnic_group"], s1["n_instances"]) == (1, "F", "18-39", "A", 2)
    assert (s1["site"], s1["study_year"], s1["included"], s1["exclusion_reason"]) == ("General", "2024", True, "")
    # released quasi-identifiers come from the de-identified headers, not the originals
    assert (s1["PatientAge"], s1["InstitutionName"], s1["StudyYear"]) == ("034Y", "unknown", "2023")
    s2 = rows[pseudo_uid(key, "1.2.3.2")]
    assert (s2["label"], s2["age_band"], s2["ethnic_group"]) == (-1, "90+", "B")  # age from birth date, top-coded
    assert s2["EthnicGroup"] == "unknown"  # the demographics table stays private
    s3 = rows[pseudo_uid(key, "1.2.3.3")]
    assert (s3["sex"], s3["age_band"], s3["included"], s3["exclusion_reason"]) == ("M", "0-17", False, "burned-in text")
    assert not any("P1" in str(v) or "1.2.3.1" == v for r in rows.values() for v in r.values())


def test_without_manifest_every_indexed_study_is_included(index: pa.Table, key: PseudonymKey) -> None:
    cohort = build_cohort(index, deid_manifest=None, labels={}, policy=ReleasePolicy(), key=key)
    assert cohort.column("included").to_pylist() == [True, True, True]
    assert set(cohort.column("InstitutionName").to_pylist()) == {"General", "unknown"}
    assert None not in cohort.column("ethnic_group").to_pylist()


def test_patients_view(index: pa.Table, deid_manifest: pa.Table, key: PseudonymKey) -> None:
    cohort = build_cohort(index, deid_manifest=deid_manifest, labels={"1.2.3.1": 1}, policy=ReleasePolicy(), key=key)
    view = patients_view(cohort)
    assert view.num_rows == 3
    by = {r["PatientID"]: r for r in view.to_pylist()}
    p1 = by[pseudo_patient_id(key, "P1")]
    assert (p1["n_studies"], p1["n_included"], p1["label"], p1["sex"]) == (1, 1, 1, "F")


@pytest.mark.parametrize(
    ("age", "birth", "study", "years"),
    [
        ("045Y", "unknown", "unknown", 45),  # years
        ("018M", "unknown", "unknown", 1),  # months
        ("010W", "unknown", "unknown", 0),  # weeks
        ("unknown", "20000301", "20240229", 23),  # birthday not reached yet
        ("unknown", "20000301", "20240301", 24),  # birthday
        ("garbage", "unknown", "unknown", None),  # unusable
    ],
)
def test_age_years(age: str, birth: str, study: str, years: int | None) -> None:
    assert age_years(age, birth_date=birth, study_date=study) == years


def test_age_bands_top_coded() -> None:
    assert band_labels(BANDS) == ["0-17", "18-39", "40-64", "65-89", "90+"]
    assert [age_band(a, BANDS) for a in (0, 17, 18, 89, 90, 104, None)] == [
        "0-17", "0-17", "18-39", "65-89", "90+", "90+", "unknown"]
    with pytest.raises(InputError, match="increasing"):
        band_labels((18, 0))


def test_index_without_columns_is_refused(key: PseudonymKey) -> None:
    with pytest.raises(InputError, match="StudyInstanceUID"):
        build_cohort(pa.table({"path": ["a"], "status": ["indexed"]}), deid_manifest=None, labels={},
                     policy=ReleasePolicy(), key=key)


def test_joins_the_real_deid_manifest(tmp_path: Path, key: PseudonymKey) -> None:
    """Built from guards.deid's own outputs: study UIDs are the release's, quasi-identifiers the released ones."""
    import shutil

    from guards.deid import deidentify_tree
    from guards.manifest import read_table
    from guards.testdata import pydicom_test_dir

    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom_test_dir() / name, src / name)
    policy = ReleasePolicy()
    deidentify_tree(src, tmp_path / "deid", policy=policy, key=key)
    index = read_table(tmp_path / "deid.private" / "ingest" / "index.parquet")  # private: original values
    manifest = read_table(tmp_path / "deid.private" / "manifest.parquet")  # the full one, with source paths
    cohort = build_cohort(index, deid_manifest=manifest, labels={}, policy=policy, key=key)
    assert cohort.num_rows == 2 and all(cohort.column("included").to_pylist())
    released_studies = {r["StudyInstanceUID"] for r in manifest.to_pylist() if r["status"] == "published"}
    assert set(cohort.column("StudyInstanceUID").to_pylist()) == released_studies
    assert set(index.column("PatientSex").to_pylist()) - {None, ""}  # the originals carry a sex ...
    assert cohort.column("PatientSex").to_pylist() == ["unknown", "unknown"]  # ... the release does not


def test_key_never_in_the_cohort_files(index: pa.Table, deid_manifest: pa.Table, key: PseudonymKey, key_hex: str,
                                        tmp_path: Path) -> None:
    from guards.manifest import write_table

    cohort = build_cohort(index, deid_manifest=deid_manifest, labels={}, policy=ReleasePolicy(), key=key)
    write_table(cohort, tmp_path / "cohort.parquet")
    write_table(patients_view(cohort), tmp_path / "patients.parquet")
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert key_hex.encode() not in data and bytes.fromhex(key_hex) not in data


DEVICE_QIS = ("StationName", "DeviceSerialNumber")


def _device_policy(retain: bool = True) -> ReleasePolicy:
    return ReleasePolicy().with_overrides({
        "deid.retain_device_identity": retain,
        "reid.quasi_identifiers": [*ReleasePolicy().reid.quasi_identifiers, *DEVICE_QIS],
    })


def _with_columns(table: pa.Table, values: dict[str, list[str | None]]) -> pa.Table:
    """``table`` with these string columns, as the ingest index / manifest has them once they are indexed."""
    for name, column in values.items():
        array = pa.array(column, type=pa.string())
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table


def _without_columns(table: pa.Table, names: tuple[str, ...]) -> pa.Table:
    return table.drop_columns([n for n in names if n in table.column_names])


def test_every_configured_quasi_identifier_is_a_column(
    index: pa.Table, deid_manifest: pa.Table, key: PseudonymKey
) -> None:
    """Issue 14: quasi-identifiers added in [reid] are cohort columns with their released values."""
    from guards.cohort import missing_quasi_identifiers

    policy = _device_policy()
    index = _with_columns(index, {"StationName": ["ST1", "ST1", "ST2", "ST3", None],
                                  "DeviceSerialNumber": ["SN1", "SN1", "SN2", "SN3", None]})
    # released headers (Retain Device Identity): a/1 keeps both, b/1 only the station
    released = _with_columns(deid_manifest, {"StationName": ["ST1", None, "ST2", None],
                                             "DeviceSerialNumber": ["SN1", None, None, None]})
    cohort = build_cohort(index, deid_manifest=released, labels={}, policy=policy, key=key)
    assert cohort.schema.names[-len(policy.reid.quasi_identifiers):] == list(policy.reid.quasi_identifiers)
    assert missing_quasi_identifiers(cohort) == ()
    rows = {r["StudyInstanceUID"]: r for r in cohort.to_pylist()}
    s1, s2 = rows[pseudo_uid(key, "1.2.3.1")], rows[pseudo_uid(key, "1.2.3.2")]
    assert (s1["StationName"], s1["DeviceSerialNumber"]) == ("ST1", "SN1")
    assert (s2["StationName"], s2["DeviceSerialNumber"]) == ("ST2", "unknown")  # what the release carries
    # without a manifest the values come from the index (original headers), like the other quasi-identifiers
    plain = build_cohort(index, deid_manifest=None, labels={}, policy=policy, key=key)
    assert set(plain.column("DeviceSerialNumber").to_pylist()) == {"SN1", "SN2", "SN3"}


def test_quasi_identifier_without_a_column_is_recorded_missing(
    index: pa.Table, deid_manifest: pa.Table, key: PseudonymKey
) -> None:
    """An attribute the inputs have no column for is "unknown" and recorded as missing, for the reid check."""
    from guards.checks import reid
    from guards.cohort import missing_quasi_identifiers

    policy = _device_policy()
    index, deid_manifest = _without_columns(index, DEVICE_QIS), _without_columns(deid_manifest, DEVICE_QIS)
    cohort = build_cohort(index, deid_manifest=deid_manifest, labels={}, policy=policy, key=key)
    assert set(cohort.column("StationName").to_pylist()) == {"unknown"}
    assert missing_quasi_identifiers(cohort) == DEVICE_QIS
    result = reid.run(cohort, policy=policy)
    assert result.details["missing_quasi_identifiers"] == list(DEVICE_QIS)
    assert any(f.metric == "quasi_identifiers_missing" and f.status == "fail" for f in result.findings)


def test_missing_record_survives_parquet(index: pa.Table, deid_manifest: pa.Table, key: PseudonymKey,
                                         tmp_path: Path) -> None:
    """The pipeline writes the cohort to Parquet and the check reads it back: the record goes with it."""
    from guards.cohort import missing_quasi_identifiers
    from guards.manifest import read_table, write_table

    index, deid_manifest = _without_columns(index, DEVICE_QIS), _without_columns(deid_manifest, DEVICE_QIS)
    cohort = build_cohort(index, deid_manifest=deid_manifest, labels={}, policy=_device_policy(), key=key)
    write_table(cohort, tmp_path / "cohort.parquet")
    assert missing_quasi_identifiers(read_table(tmp_path / "cohort.parquet")) == DEVICE_QIS


@pytest.mark.parametrize("retain", [False, True])
def test_device_identity_from_the_real_deid_manifest(tmp_path: Path, key: PseudonymKey, retain: bool) -> None:
    """StationName / DeviceSerialNumber are released only under deid.retain_device_identity (PS3.15 E.3.8);
    the cohort carries what the release has. Needs them indexed (guards.manifest.HEADER_KEYWORDS)."""
    import shutil

    from guards.deid import deidentify_tree
    from guards.manifest import HEADER_KEYWORDS, read_table
    from guards.testdata import pydicom_test_dir

    if not set(DEVICE_QIS) <= set(HEADER_KEYWORDS):
        pytest.skip("StationName / DeviceSerialNumber are not indexed yet (guards.manifest.HEADER_KEYWORDS)")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(pydicom_test_dir() / "MR_small.dcm", src / "MR_small.dcm")  # StationName 000000000, serial -0000200
    policy = _device_policy(retain)
    deidentify_tree(src, tmp_path / "deid", policy=policy, key=key)
    index = read_table(tmp_path / "deid.private" / "ingest" / "index.parquet")  # private: original values
    manifest = read_table(tmp_path / "deid.private" / "manifest.parquet")  # the full one, with source paths
    cohort = build_cohort(index, deid_manifest=manifest, labels={}, policy=policy, key=key)
    row = cohort.to_pylist()[0]
    assert (row["StationName"], row["DeviceSerialNumber"]) == (
        ("000000000", "-0000200") if retain else ("unknown", "unknown"))
