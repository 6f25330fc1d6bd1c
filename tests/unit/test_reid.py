"""guards.checks.reid and guards.remediate: k-anonymity and prosecutor risk per subgroup, remediation and its cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from guards.checks import reid
from guards.cohort import COHORT_SCHEMA, UNKNOWN, cohort_schema
from guards.errors import GuardError
from guards.policy import ReleasePolicy
from guards.remediate import ValueTransform, remediate


def make_cohort(rows: list[dict[str, Any]], schema: pa.Schema = COHORT_SCHEMA) -> pa.Table:
    """A cohort table (COHORT_SCHEMA) from partial rows; absent columns are "unknown" / defaults."""
    full = []
    for i, r in enumerate(rows):
        base: dict[str, Any] = {f.name: UNKNOWN for f in schema if pa.types.is_string(f.type)}
        base.update(StudyInstanceUID=f"2.25.{i}", PatientID=f"RG{i:06d}", label=-1, n_instances=1, included=True,
                    exclusion_reason="")
        base.update(r)
        full.append(base)
    return pa.Table.from_pylist(full, schema=schema)


def minority_cohort(*, seed: int = 7, majority: int = 400, minority: int = 6) -> pa.Table:
    """Majority groups A and B with common ages and weights; group C has a few patients, each unique."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(majority):  # 16 classes of 25 patients: sex x group x age x weight
        sex, group = "FM"[i % 2], "AB"[(i // 2) % 2]
        age, weight = (35, 55)[(i // 4) % 2], (60, 80)[(i // 8) % 2]
        rows.append({"sex": sex, "ethnic_group": group, "PatientSex": sex, "PatientAge": f"{age:03d}Y",
                     "EthnicGroup": group, "PatientWeight": str(weight), "age_band": "18-39" if age < 40 else "40-64"})
    rng.shuffle(rows)
    for j in range(minority):
        age = 20 + 11 * j
        rows.append({"sex": "F", "ethnic_group": "C", "PatientSex": "F", "PatientAge": f"{age:03d}Y",
                     "EthnicGroup": "C",
                      "PatientWeight": str(51 + 7 * j), "age_band": "18-39" if age < 40 else "40-64"})
    return make_cohort(rows)


def spread_cohort(seed: int = 3) -> pa.Table:
    """600 patients with spread ages and weights: most records unique until generalised."""
    rng = np.random.default_rng(seed)
    rows = [{"PatientSex": "F" if i % 2 else "M", "PatientAge": f"{int(rng.integers(20, 95)):03d}Y",
             "PatientWeight": f"{rng.uniform(50, 100):.1f}", "sex": "F" if i % 2 else "M"} for i in range(600)]
    return make_cohort(rows)


@pytest.fixture(scope="module")
def policy() -> ReleasePolicy:
    return ReleasePolicy()


def test_minority_unique_fails_naming_subgroup_and_figures(policy: ReleasePolicy) -> None:
    result = reid.run(minority_cohort(), policy=policy)
    assert result.status == "fail"
    assert result.examined["records"] == 406 and result.examined["quasi_identifiers"] == 4
    assert result.details["quasi_identifiers"] == ["PatientSex", "PatientAge", "EthnicGroup", "PatientWeight"]
    assert result.details["missing_quasi_identifiers"] == []
    assert "PatientSize" in result.details["unreleased_quasi_identifiers"]  # a column, but no released value
    c = {f.metric: f for f in result.findings if f.subgroup == "ethnic_group=C"}
    assert c["k_anonymity"].value == 1 and c["k_anonymity"].status == "fail"
    assert c["prosecutor_risk_max"].value == 1.0 and c["prosecutor_risk_max"].status == "fail"
    assert c["records_above_threshold_share"].value == 1.0
    assert "ethnic_group=C: 6 records of 6 patients" in c["k_anonymity"].evidence
    assert "ethnic_group=C" in result.summary and "k=1" in result.summary


def test_average_hides_the_minority(policy: ReleasePolicy) -> None:
    """Overall average risk is low while the minority's records are all unique (Knolle et al., 2026)."""
    a = reid.assess(reid.included_frame(minority_cohort()), policy=policy)
    c = next(f for f in a.subgroups if f.subgroup == "ethnic_group=C")
    assert a.overall.prosecutor_avg < 0.09 < c.prosecutor_avg
    assert a.overall.records_above == c.records_above == 6


def test_remediation_passes_and_shows_cost(policy: ReleasePolicy) -> None:
    """Default: no subgroup may lose more than 25% of its records, so the minority is kept and its
    ethnic group is generalised away instead; the cost is reported per column and per subgroup."""
    cohort = minority_cohort()
    fixed = remediate(cohort, policy=policy)
    assert fixed.passed and fixed.within_suppression_limit
    after = reid.run(fixed.table, policy=policy)
    assert after.status == "pass", after.summary
    assert fixed.steps[0].startswith("PatientAge: age bands")  # ages go to bands first
    assert fixed.generalisations["EthnicGroup"] == "suppressed"
    assert fixed.generalisations["PatientAge"] == "age bands ['0-17', '18-39', '40-64', '65-89', '90+']"  # undone
    assert fixed.losses["columns"]["EthnicGroup"] == {"applied": "suppressed", "distinct_before": 3,
                                                      "distinct_after": 1, "records_changed": 406}
    assert fixed.losses["suppressed_records"] == len(fixed.suppressed_studies) == 1
    c = next(s for s in fixed.subgroup_losses if s["subgroup"] == "ethnic_group=C")
    assert (c["records"], c["suppressed"], c["changed_share"]) == (6, 1, 1.0)
    assert fixed.paid_most() == "ethnic_group=C"
    assert set(fixed.transforms) == {"PatientAge", "EthnicGroup", "PatientWeight"}
    # the check does not run remediation (the pipeline's remediate step does, before the checks)
    assert "remediation" not in reid.run(cohort, policy=policy).details


def test_remediation_without_subgroup_bound_suppresses_the_minority(policy: ReleasePolicy) -> None:
    """Without the per-subgroup bound the cheapest fix removes the minority: the cost shows who paid."""
    fixed = remediate(minority_cohort(), policy=policy.with_overrides({"reid.max_subgroup_suppression": 1.0}))
    assert fixed.passed and reid.run(fixed.table, policy=policy).status == "pass"
    assert fixed.losses["suppressed_records"] == len(fixed.suppressed_studies) == 6
    assert fixed.generalisations["EthnicGroup"] == "released values"
    assert fixed.paid_most() == "ethnic_group=C"
    c = next(s for s in fixed.subgroup_losses if s["subgroup"] == "ethnic_group=C")
    a = next(s for s in fixed.subgroup_losses if s["subgroup"] == "ethnic_group=A")
    assert (c["suppressed_share"], a["suppressed"]) == (1.0, 0)
    out = fixed.table.to_pylist()
    assert sum(not r["included"] for r in out) == 6
    assert {r["exclusion_reason"] for r in out if not r["included"]} == {
        "re-identification risk: suppressed by remediation"}
    with pytest.raises(GuardError, match="max_subgroup_suppression"):
        remediate(minority_cohort(), policy=policy, max_subgroup_suppression=2.0)


def test_remediation_generalises_before_suppressing(policy: ReleasePolicy) -> None:
    """When many records are at risk, generalisation is applied rather than suppressing over the limit."""
    fixed = remediate(spread_cohort(), policy=policy)
    assert fixed.passed and fixed.within_suppression_limit
    assert fixed.losses["suppressed_share"] <= 0.05
    assert fixed.generalisations["PatientWeight"] != "released values"
    assert set(fixed.transforms) >= {"PatientAge", "PatientWeight"}
    assert reid.run(fixed.table, policy=policy).status == "pass"


def test_clean_cohort_passes_and_counts_what_it_examined(policy: ReleasePolicy) -> None:
    rows = [{"PatientSex": "F" if i % 2 else "M", "sex": "F" if i % 2 else "M"} for i in range(60)]
    result = reid.run(make_cohort(rows), policy=policy)
    assert result.status == "pass"
    assert result.examined == {"records": 60, "patients": 60, "classes": 2, "quasi_identifiers": 1, "subgroups": 4}


def test_class_size_counts_patients_not_studies(policy: ReleasePolicy) -> None:
    rows = [{"PatientID": "RG1", "PatientSex": "F"} for _ in range(20)] + [
        {"PatientSex": "M"} for _ in range(20)]
    a = reid.assess(reid.included_frame(make_cohort(rows)), policy=policy)
    assert a.overall.k == 1 and a.overall.records_above == 20


def test_excluded_studies_are_not_records(policy: ReleasePolicy) -> None:
    rows = [{"PatientSex": "M"} for _ in range(20)] + [{"PatientSex": "F", "included": False}]
    result = reid.run(make_cohort(rows), policy=policy)
    assert result.status == "pass" and result.examined["records"] == 20


def test_empty_cohort_fails(policy: ReleasePolicy) -> None:
    result = reid.run(make_cohort([{"included": False}]), policy=policy)
    assert result.status == "fail"
    assert any(f.metric == "records" for f in result.findings)


def test_journalist_risk_from_population(policy: ReleasePolicy, tmp_path: Path) -> None:
    rows = [{"PatientSex": "M"} for _ in range(20)] + [{"PatientSex": "F"} for _ in range(20)]
    pop = tmp_path / "population.csv"
    pd.DataFrame({"PatientSex": ["M", "F"], "count": [1000, 10]}).to_csv(pop, index=False)
    result = reid.run(make_cohort(rows), policy=policy.with_overrides({"reid.population": str(pop)}))
    j = {f.metric: f.value for f in result.findings if f.subgroup == "all"}
    assert j["journalist_risk_max"] == pytest.approx(1 / 20)  # sample class of 20 > population 10
    assert j["journalist_risk_avg"] == pytest.approx((20 / 1000 + 20 / 20) / 40)


@pytest.mark.parametrize(
    ("transform", "value", "cohort_value", "header_value"),
    [
        (ValueTransform("PatientAge", "age_band", "", bands=(0, 18, 40, 65, 90)), "093Y", "90+", "090Y"),  # top-coded
        (ValueTransform("PatientAge", "age_band", "", bands=(0, 18, 40, 65, 90)), "041Y", "40-64", "040Y"),
        (ValueTransform("PatientWeight", "bin", "", width=10.0), "72.5", "70-80", "75"),  # midpoint in DS
        (ValueTransform("StudyYear", "year_bin", "", width=5), "20230915", "2020-2024", "20200101"),  # DA
        (ValueTransform("EthnicGroup", "merge_rare", "", keep=frozenset({"A"})), "C", "other", "OTHER"),
        (ValueTransform("InstitutionName", "suppress", ""), "General", "*", ""),  # Type 2: empty
        (ValueTransform("PatientWeight", "bin", "", width=10.0), UNKNOWN, UNKNOWN, ""),  # unknown stays
    ],
)
def test_value_transforms(transform: ValueTransform, value: str, cohort_value: str, header_value: str) -> None:
    assert transform.cohort_value(value) == cohort_value
    assert transform(value) == header_value


def test_quasi_identifiers_present_skip_unknown_columns(policy: ReleasePolicy) -> None:
    df = reid.included_frame(make_cohort([{"PatientSex": "M"}, {"PatientSex": "F"}]))
    assert reid.quasi_identifiers_present(df, policy) == ("PatientSex",)
    assert set(policy.reid.quasi_identifiers) <= set(COHORT_SCHEMA.names)


def test_header_transforms_rewrite_a_dataset_read_back(policy: ReleasePolicy, tmp_path: Path) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    from guards.remediate import rewrite_dataset

    fixed = remediate(spread_cohort(), policy=policy)
    ds = pydicom.Dataset()
    ds.PatientAge, ds.PatientWeight, ds.PatientSex, ds.SOPInstanceUID = "093Y", "72.5", "F", "2.25.1"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    changed = rewrite_dataset(ds, fixed.transforms)
    assert changed["PatientAge"] == ("093Y", "090Y")  # top-coded 90+
    assert "PatientSex" not in changed
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.PatientAge == "090Y" and back.PatientSex == "F"
    assert str(back.PatientWeight or "") == fixed.transforms["PatientWeight"]("72.5")  # empty when suppressed


def test_header_values_keep_the_remediated_classes(policy: ReleasePolicy) -> None:
    """Header values are one-to-one with the cohort's generalised values: the released files have the same
    equivalence classes as the remediated cohort the check passed."""
    cohort = spread_cohort()
    fixed = remediate(cohort, policy=policy)
    assert set(fixed.transforms) >= {"PatientAge", "PatientWeight"}
    original = cohort.to_pandas()
    remediated = fixed.table.to_pandas()
    for column, t in fixed.transforms.items():
        pairs = set(zip(original[column].map(t.header_value), remediated[column], strict=True))
        assert len({h for h, _ in pairs}) == len(pairs) == len({c for _, c in pairs}), column


def test_check_result_round_trips_with_quasi_identifier_details(policy: ReleasePolicy, tmp_path: Path) -> None:
    from guards.checks.base import CheckResult

    result = reid.run(minority_cohort(), policy=policy)
    result.write(tmp_path / "reid.json")
    back = CheckResult.read(tmp_path / "reid.json")
    assert back.status == "fail" and back.findings == result.findings
    assert back.details["quasi_identifiers"] == result.details["quasi_identifiers"]
    assert back.details["configured_quasi_identifiers"] == list(policy.reid.quasi_identifiers)


DEVICE_QIS = ("StationName", "DeviceSerialNumber")


def device_policy() -> ReleasePolicy:
    """StationName and DeviceSerialNumber added to the quasi-identifiers, released (Retain Device Identity)."""
    return ReleasePolicy().with_overrides({
        "deid.retain_device_identity": True,
        "reid.quasi_identifiers": [*ReleasePolicy().reid.quasi_identifiers, *DEVICE_QIS],
    })


def test_configured_device_quasi_identifiers_are_examined() -> None:
    """Issue 14: quasi-identifiers added in [reid] are carried by the cohort and examined, not dropped."""
    policy = device_policy()
    schema = cohort_schema(policy.reid.quasi_identifiers)
    assert {"StationName", "DeviceSerialNumber"} <= set(schema.names)
    # 4 stations x 2 serials each (serial n at station n % 4); sex F/M: 16 classes of 20 patients
    rows = [{"PatientSex": "FM"[i % 2], "sex": "FM"[i % 2], "StationName": f"ST{(i // 2) % 4}",
             "DeviceSerialNumber": f"SN{(i // 2) % 8}"} for i in range(320)]
    result = reid.run(make_cohort(rows, schema), policy=policy)
    assert result.details["quasi_identifiers"] == ["PatientSex", "StationName", "DeviceSerialNumber"]
    assert result.examined["quasi_identifiers"] == 3
    assert result.details["missing_quasi_identifiers"] == []
    assert result.status == "pass", result.summary
    assert result.examined["classes"] == 16
    assert "StationName" in result.summary and "DeviceSerialNumber" in result.summary
    # one serial number seen on a single patient singles that patient out: the new columns count
    rows[0] = {**rows[0], "DeviceSerialNumber": "SN-UNIQUE"}
    unique = reid.run(make_cohort(rows, schema), policy=policy)
    assert unique.status == "fail"
    assert next(f for f in unique.findings if f.metric == "k_anonymity" and f.subgroup == "all").value == 1
    # without them in the policy the same records pass: the device columns are what singles the patient out
    default = reid.run(make_cohort(rows, schema), policy=ReleasePolicy())
    assert default.details["quasi_identifiers"] == ["PatientSex"] and default.status == "pass"


def test_configured_quasi_identifier_not_in_the_data_is_named_and_fails() -> None:
    """A configured quasi-identifier with no column in the data is reported (details, a failing finding, the
    summary and advice), never silently dropped."""
    policy = device_policy()
    rows = [{"PatientSex": "FM"[i % 2], "sex": "FM"[i % 2]} for i in range(60)]
    result = reid.run(make_cohort(rows), policy=policy)  # the default schema: no device columns
    assert result.details["missing_quasi_identifiers"] == ["StationName", "DeviceSerialNumber"]
    assert result.details["quasi_identifiers"] == ["PatientSex"]
    missing = next(f for f in result.findings if f.metric == "quasi_identifiers_missing")
    assert (missing.value, missing.status) == (2, "fail")
    assert "StationName, DeviceSerialNumber" in missing.evidence
    assert result.status == "fail"
    assert "not in the data" in result.summary and "HEADER_KEYWORDS" in result.advice


def test_missing_recorded_by_the_cohort_is_named(policy: ReleasePolicy) -> None:
    """build_cohort records in the schema metadata the quasi-identifiers its inputs had no column for; the
    column is then all "unknown", and the check names it as missing rather than as not released."""
    device = device_policy()
    schema = cohort_schema(device.reid.quasi_identifiers, missing=["DeviceSerialNumber"])
    rows = [{"PatientSex": "FM"[i % 2], "sex": "FM"[i % 2], "StationName": "ST1"} for i in range(60)]
    result = reid.run(make_cohort(rows, schema), policy=device)
    assert result.details["missing_quasi_identifiers"] == ["DeviceSerialNumber"]
    assert result.details["quasi_identifiers"] == ["PatientSex", "StationName"]
    assert "DeviceSerialNumber" not in result.details["unreleased_quasi_identifiers"]


def test_reid_check_does_not_import_remediation() -> None:
    """The check and remediation no longer import each other: only guards.remediate uses guards.checks.reid."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(reid))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "guards.remediate" not in imported
