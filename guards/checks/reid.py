"""Re-identification risk over the quasi-identifiers the release contains, overall and per subgroup.

Records are the included studies of the cohort; an equivalence class is the set of records sharing the same
values of every quasi-identifier present (k-anonymity, Sweeney 2002). A class's size counts distinct patients,
not studies: three studies of one patient in a class still single that patient out. Figures (El Emam & Dankar,
"Protecting privacy using k-anonymity", JAMIA 2008; EMA Policy 0070 external guidance, 2018):

- k: the smallest class size; prosecutor risk of a record: 1 / its class size; maximum and record-weighted
  average over the records; share of records whose risk is above ``policy.reid.max_risk``;
- journalist risk when a population table (the quasi-identifier columns plus ``count``) is given:
  1 / max(population count, sample count) of the record's class.

The quasi-identifiers are those of ``policy.reid.quasi_identifiers``: the result lists the ones examined (the
release carries a value of them), the ones the release does not carry (a profile option removed them), and the
ones the data has no column for (``missing_quasi_identifiers``: the risk over them is not measured, which fails
the check with a finding naming them, never a silent omission).

Defaults: k >= 11 and maximum risk <= 0.09 (EMA Policy 0070). Every figure is given overall ("all") and per
subgroup ("column=value" over ``policy.cohort.subgroups``), because an average that passes can hide a minority
group whose records are unique (Knolle et al., Nature 2026).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from guards.checks.base import CheckResult, Finding, Status
from guards.cohort import UNKNOWN, missing_quasi_identifiers
from guards.errors import InputError
from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)

CHECK_ID = "reid"


@dataclass(frozen=True)
class RiskFigures:
    """Risk figures of one set of records (the whole release or one subgroup)."""

    subgroup: str
    records: int
    patients: int
    classes: int
    k: int  # smallest equivalence-class size (distinct patients) among these records
    prosecutor_max: float
    prosecutor_avg: float
    share_above: float  # share of records with prosecutor risk above the threshold
    records_above: int
    journalist_max: float | None = None
    journalist_avg: float | None = None


@dataclass(frozen=True)
class RiskAssessment:
    """Figures overall and per subgroup, for the quasi-identifiers used."""

    quasi_identifiers: tuple[str, ...]
    overall: RiskFigures
    subgroups: tuple[RiskFigures, ...]
    k_min: int
    max_risk: float

    def failing(self) -> list[RiskFigures]:
        """Overall and subgroup figures that break k or the maximum risk."""
        return [f for f in (self.overall, *self.subgroups) if f.records and not _meets(f, self.k_min, self.max_risk)]


def _meets(f: RiskFigures, k: int, max_risk: float) -> bool:
    return f.k >= k and f.prosecutor_max <= max_risk


def included_frame(cohort: pa.Table) -> pd.DataFrame:
    """The cohort's included studies as a DataFrame (every study when the table has no ``included`` column)."""
    if "PatientID" not in cohort.column_names:
        raise InputError("cohort has no PatientID column; build it with guards.cohort.build_cohort")
    df = cohort.to_pandas()
    if "included" in df.columns:
        df = df[df["included"].astype(bool)]
    return df.reset_index(drop=True)


def quasi_identifiers_present(df: pd.DataFrame, policy: ReleasePolicy) -> tuple[str, ...]:
    """``policy.reid.quasi_identifiers`` that are columns with at least one value other than "unknown"."""
    out = []
    for q in policy.reid.quasi_identifiers:
        if q in df.columns and bool((df[q].astype(str) != UNKNOWN).any()):
            out.append(q)
    return tuple(out)


def class_sizes(df: pd.DataFrame, qis: tuple[str, ...]) -> pd.Series:
    """Per record, the number of distinct patients in its equivalence class over ``qis``."""
    if not qis:
        return pd.Series(df["PatientID"].nunique(), index=df.index, dtype="int64")
    keys = df[list(qis)].astype(str)
    grouped = df.groupby([keys[q] for q in qis], sort=False, observed=True)["PatientID"]
    return grouped.transform("nunique").astype("int64")


def _population_sizes(df: pd.DataFrame, qis: tuple[str, ...], population: pd.DataFrame) -> pd.Series:
    missing = [q for q in qis if q not in population.columns] + ([] if "count" in population.columns else ["count"])
    if missing:
        raise InputError(f"population table lacks column(s) {missing}; it needs the quasi-identifiers and count")
    pop = population.astype({q: str for q in qis}).groupby(list(qis), observed=True)["count"].sum()
    keys = pd.MultiIndex.from_frame(df[list(qis)].astype(str)) if len(qis) > 1 else df[qis[0]].astype(str)
    return pd.Series(pop.reindex(keys).fillna(0).to_numpy(), index=df.index, dtype="float64")


def _figures(name: str, sizes: pd.Series, groups: pd.Series, patients: pd.Series, max_risk: float,
             pop_sizes: pd.Series | None) -> RiskFigures:
    n = len(sizes)
    if n == 0:
        return RiskFigures(name, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0)
    risk = 1.0 / sizes
    above = int((risk > max_risk).sum())
    jmax = javg = None
    if pop_sizes is not None:
        jr = 1.0 / pd.concat([pop_sizes, sizes.astype("float64")], axis=1).max(axis=1)
        jmax, javg = round(float(jr.max()), 6), round(float(jr.mean()), 6)
    return RiskFigures(
        subgroup=name, records=n, patients=int(patients.nunique()), classes=int(groups.nunique()),
        k=int(sizes.min()), prosecutor_max=round(float(risk.max()), 6), prosecutor_avg=round(float(risk.mean()), 6),
        share_above=round(above / n, 6), records_above=above, journalist_max=jmax, journalist_avg=javg,
    )


def assess(df: pd.DataFrame, *, policy: ReleasePolicy, qis: tuple[str, ...] | None = None,
           population: pd.DataFrame | None = None) -> RiskAssessment:
    """Risk figures of the records in ``df`` (included studies), overall and per subgroup."""
    sec = policy.reid
    qis = quasi_identifiers_present(df, policy) if qis is None else qis
    sizes = class_sizes(df, qis)
    group_ids = (df.groupby([df[q].astype(str) for q in qis], sort=False, observed=True).ngroup()
                 if qis and len(df) else pd.Series(0, index=df.index))
    pop_sizes = _population_sizes(df, qis, population) if population is not None and qis else None
    overall = _figures("all", sizes, group_ids, df["PatientID"], sec.max_risk, pop_sizes)
    subs: list[RiskFigures] = []
    for col in policy.cohort.subgroups:
        if col not in df.columns:
            continue
        values = df[col].astype(str)
        for value in sorted(values.unique()):
            m = (values == value).to_numpy()
            subs.append(_figures(f"{col}={value}", sizes[m], group_ids[m], df["PatientID"][m], sec.max_risk,
                                 None if pop_sizes is None else pop_sizes[m]))
    return RiskAssessment(tuple(qis), overall, tuple(subs), sec.k, sec.max_risk)


def _findings(a: RiskAssessment) -> list[Finding]:
    out: list[Finding] = []
    qi_text = ", ".join(a.quasi_identifiers) or "none"
    for f in (a.overall, *a.subgroups):
        if not f.records:
            continue
        where = (f"{f.subgroup}: {f.records} records of {f.patients} patients in {f.classes} equivalence classes over"
                 f" [{qi_text}]; smallest class {f.k} patient(s), max prosecutor risk {f.prosecutor_max:.3f},"
                 f" average {f.prosecutor_avg:.3f}, {f.records_above} records ({f.share_above:.1%}) above"
                 f" {a.max_risk}")
        k_ok, r_ok = f.k >= a.k_min, f.prosecutor_max <= a.max_risk
        st: Status = "pass" if k_ok and r_ok else "fail"
        out += [
            Finding("k_anonymity", f.k, a.k_min, "pass" if k_ok else "fail", f.subgroup, where),
            Finding("prosecutor_risk_max", f.prosecutor_max, a.max_risk, "pass" if r_ok else "fail", f.subgroup, where),
            Finding("prosecutor_risk_avg", f.prosecutor_avg, a.max_risk,
                    "pass" if f.prosecutor_avg <= a.max_risk else "fail", f.subgroup, where),
            Finding("records_above_threshold_share", f.share_above, 0.0, st, f.subgroup, where),
        ]
        if f.journalist_max is not None:
            out.append(Finding("journalist_risk_max", f.journalist_max, a.max_risk,
                               "pass" if f.journalist_max <= a.max_risk else "fail", f.subgroup, where))
            out.append(Finding("journalist_risk_avg", f.journalist_avg, a.max_risk,
                               "pass" if (f.journalist_avg or 0.0) <= a.max_risk else "fail", f.subgroup, where))
    return out


def load_population(policy: ReleasePolicy) -> pd.DataFrame | None:
    """The population table named by ``policy.reid.population`` (CSV or Parquet), or None."""
    if not policy.reid.population:
        return None
    p = Path(policy.reid.population)
    if not p.is_file():
        raise InputError(f"reid.population {str(p)!r} does not exist; give a CSV/Parquet path or leave it empty")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p, dtype=str).astype({"count": "float64"})


def configured_not_in_data(cohort: pa.Table, policy: ReleasePolicy) -> tuple[str, ...]:
    """Configured quasi-identifiers the data has no column for: recorded as missing by
    :func:`guards.cohort.build_cohort`, or not a column of ``cohort`` at all."""
    recorded = set(missing_quasi_identifiers(cohort))
    return tuple(q for q in dict.fromkeys(policy.reid.quasi_identifiers)
                 if q in recorded or q not in cohort.column_names)


def _missing_finding(missing: tuple[str, ...]) -> Finding:
    return Finding(
        "quasi_identifiers_missing", len(missing), 0, "fail", "all",
        f"reid.quasi_identifiers configures {', '.join(missing)}, but the data has no column for"
        f" {'it' if len(missing) == 1 else 'them'} (ingest index / de-identification manifest), so the risk over"
        " them is not measured",
    )


def run(cohort: pa.Table, *, policy: ReleasePolicy) -> CheckResult:
    """The re-identification check: fails when k or the maximum prosecutor risk breaks the policy, overall or in
    any subgroup, or when a configured quasi-identifier is missing from the data. Remediation is a pipeline
    step of its own (guards.remediate, ``policy.reid.remediate``), run before the checks."""
    df = included_frame(cohort)
    population = load_population(policy)
    journalist_note = ""
    try:
        a = assess(df, policy=policy, population=population)
    except InputError as e:
        journalist_note = f"journalist risk not computed: {e}"
        logger.warning(journalist_note)
        a = assess(df, policy=policy)
    configured = tuple(dict.fromkeys(policy.reid.quasi_identifiers))
    missing = configured_not_in_data(cohort, policy)
    unreleased = tuple(q for q in configured if q not in missing and q not in a.quasi_identifiers)
    findings = _findings(a)
    if missing:
        findings.append(_missing_finding(missing))
        logger.warning("reid: quasi-identifier(s) %s configured but not in the data", list(missing))
    if not df.shape[0]:
        findings.append(Finding("records", 0, 1, "fail", "all", "the cohort has no included study: nothing to assess"))
    failing = a.failing()
    examined = {"records": a.overall.records, "patients": a.overall.patients, "classes": a.overall.classes,
                "quasi_identifiers": len(a.quasi_identifiers), "subgroups": len(a.subgroups)}
    if failing:
        worst = max(failing, key=lambda f: f.prosecutor_max)
        summary = (f"Re-identification risk too high in {', '.join(f.subgroup for f in failing)}; worst"
                   f" {worst.subgroup}: k={worst.k}, max risk {worst.prosecutor_max:.3f} (limits k>={a.k_min},"
                   f" risk<={a.max_risk})")
    else:
        summary = (f"k={a.overall.k} and max prosecutor risk {a.overall.prosecutor_max:.3f} within limits overall"
                   f" and in all {len(a.subgroups)} subgroups")
    summary += f", over {len(a.quasi_identifiers)} quasi-identifier(s): {', '.join(a.quasi_identifiers) or 'none'}"
    if missing:
        summary += f"; configured but not in the data, so not assessed: {', '.join(missing)}"
    advice = []
    if failing:
        advice.append("Switch on reid.remediate (ages to bands with 90+ top-coded, coarsen or suppress"
                      " quasi-identifiers), or remove quasi-identifiers from the release (guard.toml [deid] options)")
    if missing:
        advice.append(f"Index {', '.join(missing)} (guards.manifest.HEADER_KEYWORDS, read by guards.ingest and"
                      " guards.deid) or remove them from reid.quasi_identifiers")
    details: dict[str, Any] = {"quasi_identifiers": list(a.quasi_identifiers),
                               "configured_quasi_identifiers": list(configured),
                               "missing_quasi_identifiers": list(missing),
                               "unreleased_quasi_identifiers": list(unreleased),
                               "overall": asdict(a.overall), "subgroups": [asdict(f) for f in a.subgroups]}
    if journalist_note:
        details["journalist_note"] = journalist_note
    return CheckResult(
        id=CHECK_ID, findings=tuple(findings), examined=examined, summary=summary, advice="; ".join(advice),
        details=details,
    )


if TYPE_CHECKING:
    from guards.run import Run


def check(current: Run) -> CheckResult:
    """The registry's entry (guards.checks.registry): re-identification risk of the run's cohort."""
    return run(current.cohort(), policy=current.policy)
