"""Remediation of re-identification risk: generalise, coarsen or suppress quasi-identifiers until k and the
maximum prosecutor risk hold, and report what it cost, overall and per subgroup.

Method: full-domain generalisation over per-attribute hierarchies with a record-suppression limit, as in
Samarati & Sweeney (1998) and the greedy search of El Emam et al., "A globally optimal k-anonymity method for
the de-identification of health data" (JAMIA 2009), simplified to a greedy walk:

1. ages are generalised to the policy's bands with 90+ top-coded (HIPAA Safe Harbor aggregates ages over 89);
2. while more records are at risk than ``max_suppression`` allows (overall, or ``max_subgroup_suppression``
   within any subgroup of ``policy.cohort.subgroups``, so that suppression does not fall on a minority: Knolle
   et al., Nature 2026), the single one-level step (over all
   quasi-identifiers) that leaves the fewest records at risk is applied; ties prefer attributes earlier in
   ``STEP_ORDER`` (sizes, weights and years before sex and ethnic group, the subgroup columns themselves);
3. steps the end state does not need are undone, latest first (a minimal generalisation, as in Samarati's);
4. the records still at risk are suppressed (``included`` set to False with a reason).

The quasi-identifiers are the cohort columns of ``policy.reid.quasi_identifiers`` that carry a released value
(:func:`guards.checks.reid.quasi_identifiers_present`); this module depends on the reid check's class sizes, the
check does not depend on it (the pipeline's remediate step runs before the checks).

The result also gives, per DICOM attribute, the transform of released header values that the pipeline
applies to the released files (:class:`ValueTransform`), and the list of suppressed studies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from pydicom.dataset import Dataset

from guards.checks.reid import class_sizes, quasi_identifiers_present
from guards.cohort import UNKNOWN, age_band, age_years, band_labels
from guards.errors import GuardError
from guards.policy import ReleasePolicy

logger = logging.getLogger(__name__)

SUPPRESSED = "*"
OTHER = "other"
SUPPRESSION_REASON = "re-identification risk: suppressed by remediation"
# configured quasi-identifiers not listed here (any DICOM keyword of reid.quasi_identifiers) come after these
STEP_ORDER: tuple[str, ...] = (
    "PatientSize", "PatientWeight", "StudyYear", "PatientAge", "DeviceSerialNumber", "StationName",
    "ManufacturerModelName", "InstitutionName", "BodyPartExamined", "Manufacturer", "EthnicGroup", "PatientSex",
)
Kind = Literal["keep", "age_band", "bin", "year_bin", "merge_rare", "suppress"]
# the header attributes a cohort column stands for (StudyYear is the year of these dates)
HEADER_KEYWORDS: dict[str, tuple[str, ...]] = {
    "StudyYear": ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"),
}
_BIN_WIDTHS: dict[str, tuple[float, ...]] = {"PatientSize": (0.05, 0.1, 0.2), "PatientWeight": (5.0, 10.0, 20.0)}
_YEAR_WIDTHS: tuple[int, ...] = (2, 5, 10)


@dataclass(frozen=True)
class ValueTransform:
    """One generalisation level of one quasi-identifier; callable on cohort values and on header values."""

    column: str
    kind: Kind
    description: str
    width: float = 0.0  # bin / year width
    bands: tuple[int, ...] = ()  # age band lower bounds, last one top-coded
    keep: frozenset[str] = frozenset()  # merge_rare: values kept, the others become "other"

    def cohort_value(self, value: str) -> str:
        """The generalised cohort value (labels such as "40-64", "90+", "70-80", "other", "*")."""
        if value == UNKNOWN or self.kind == "keep":
            return value
        if self.kind == "suppress":
            return SUPPRESSED
        if self.kind == "merge_rare":
            return value if value in self.keep else OTHER
        if self.kind == "age_band":
            return age_band(age_years(value), self.bands)
        lo = self._lower(value)
        if lo is None:
            return UNKNOWN
        if self.kind == "year_bin":
            return f"{int(lo)}-{int(lo + self.width - 1)}"
        return f"{lo:g}-{lo + self.width:g}"

    def _lower(self, value: str) -> float | None:
        try:
            x = float(value[:4]) if self.kind == "year_bin" else float(value)
        except ValueError:
            return None
        return float(int(x // self.width) * self.width) if self.kind == "year_bin" else round(
            (x // self.width) * self.width, 6)

    def header_value(self, value: str) -> str:
        """The generalised value to write into a released header (valid for the attribute's VR).

        PatientAge (AS) becomes the band's lower bound ("040Y", "090Y" for 90+); PatientSize/PatientWeight (DS)
        the bin's midpoint; dates (DA) the first day of the year bin; "other" becomes "OTHER"; suppression an
        empty value (the attributes are Type 2 or 3, so empty is allowed).
        """
        value = value.strip(" \x00")
        if not value or self.kind == "keep":
            return value
        if self.kind == "suppress":
            return ""
        if self.kind == "merge_rare":
            return value if value in self.keep else "OTHER"
        if self.kind == "age_band":
            years = age_years(value)
            if years is None:
                return ""
            lower = max((b for b in self.bands if b <= years), default=self.bands[0])
            return f"{lower:03d}Y"
        lo = self._lower(value)
        if lo is None:
            return ""
        if self.kind == "year_bin":
            return f"{int(lo):04d}0101"
        return f"{lo + self.width / 2:g}"

    def __call__(self, value: str) -> str:
        return self.header_value(value)


@dataclass(frozen=True)
class RemediationResult:
    """The remediated cohort, what was applied, and what it cost (overall and per subgroup)."""

    table: pa.Table
    generalisations: dict[str, str]  # column -> description of the level applied
    transforms: dict[str, ValueTransform]  # DICOM keyword -> transform of released header values
    suppressed_studies: tuple[str, ...]  # pseudonymous StudyInstanceUIDs no longer released
    losses: dict[str, Any]  # overall: records, suppressed, distinct values lost per column
    subgroup_losses: list[dict[str, Any]]  # per "column=value": records, suppressed, share changed
    passed: bool  # k and maximum risk hold on the remediated records
    within_suppression_limit: bool
    steps: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """A JSON-able view for reports (no table)."""
        return {"generalisations": self.generalisations, "suppressed_studies": len(self.suppressed_studies),
                "losses": self.losses, "subgroup_losses": self.subgroup_losses, "passed": self.passed,
                "within_suppression_limit": self.within_suppression_limit, "steps": list(self.steps)}

    def paid_most(self) -> str:
        """The subgroup that lost the largest share of its records (ties: most values changed)."""
        if not self.subgroup_losses:
            return "all"
        worst = max(self.subgroup_losses, key=lambda s: (s["suppressed_share"], s["changed_share"]))
        return str(worst["subgroup"])


def _levels(column: str, df: pd.DataFrame, policy: ReleasePolicy) -> list[ValueTransform]:
    """The hierarchy of one column, from the released value (level 0) to suppression."""
    levels = [ValueTransform(column, "keep", "released values")]
    if column == "PatientAge":
        bands = policy.cohort.age_bands
        wide = tuple(sorted({bands[0], *bands[::2], bands[-1]}))
        levels += [ValueTransform(column, "age_band", f"age bands {band_labels(bands)}", bands=bands)]
        if wide != bands:
            levels.append(ValueTransform(column, "age_band", f"age bands {band_labels(wide)}", bands=wide))
    elif column in _BIN_WIDTHS:
        levels += [ValueTransform(column, "bin", f"bins of {w:g}", width=w) for w in _BIN_WIDTHS[column]]
    elif column == "StudyYear":
        levels += [ValueTransform(column, "year_bin", f"{w}-year periods", width=w) for w in _YEAR_WIDTHS]
    else:
        patients = df.groupby(df[column].astype(str))["PatientID"].nunique()
        keep = frozenset(str(v) for v, n in patients.items() if n >= policy.reid.k)
        if keep != frozenset(patients.index.astype(str)):
            levels.append(ValueTransform(column, "merge_rare", f"values of fewer than {policy.reid.k} patients"
                                                                 " merged into 'other'", keep=keep))
    levels.append(ValueTransform(column, "suppress", "suppressed"))
    return levels


def _apply(series: pd.Series, t: ValueTransform) -> pd.Series:
    mapping = {v: t.cohort_value(v) for v in series.unique()}
    return series.map(mapping)


def _at_risk(df: pd.DataFrame, qis: tuple[str, ...], k: int, max_risk: float) -> pd.Series:
    sizes = class_sizes(df, qis)
    return (sizes < k) | (1.0 / sizes > max_risk)


def remediate(cohort: pa.Table, *, policy: ReleasePolicy, max_suppression: float | None = None,
              max_subgroup_suppression: float | None = None) -> RemediationResult:
    """Generalise and suppress quasi-identifiers of ``cohort`` until k and the maximum risk hold.

    ``max_suppression`` is the largest share of included records that may be suppressed instead of
    generalising further; when every hierarchy is exhausted the remaining records at risk are suppressed anyway
    and ``within_suppression_limit`` is False. ``max_subgroup_suppression`` bounds the share of any one
    subgroup's records that may be suppressed (1.0 switches the per-subgroup bound off). Both default to
    ``policy.reid.max_suppression`` and ``policy.reid.max_subgroup_suppression``.
    """
    if max_suppression is None:
        max_suppression = policy.reid.max_suppression
    if max_subgroup_suppression is None:
        max_subgroup_suppression = policy.reid.max_subgroup_suppression
    for name, value in (("max_suppression", max_suppression), ("max_subgroup_suppression", max_subgroup_suppression)):
        if not 0.0 <= value <= 1.0:
            raise GuardError(f"{name} {value!r} is out of range; use a share from 0.0 to 1.0")
    sec = policy.reid
    full = cohort.to_pandas()
    inc_mask = full["included"].astype(bool) if "included" in full.columns else pd.Series(True, index=full.index)
    df = full[inc_mask].reset_index(drop=True)
    qis = quasi_identifiers_present(df, policy)
    original = df[list(qis)].astype(str).copy()
    hierarchies = {q: _levels(q, df, policy) for q in qis}
    level = dict.fromkeys(qis, 0)
    work = original.copy()
    work["PatientID"] = df["PatientID"].to_numpy()
    steps: list[str] = []

    def step(q: str, lvl: int) -> None:
        level[q] = lvl
        work[q] = _apply(original[q], hierarchies[q][lvl])
        steps.append(f"{q}: {hierarchies[q][lvl].description}")

    if "PatientAge" in qis:
        step("PatientAge", 1)
    n = len(work)
    limit = int(max_suppression * n)
    risky = _at_risk(work, qis, sec.k, sec.max_risk) if n else pd.Series(dtype=bool)
    groups = [df[c].astype(str).to_numpy() for c in policy.cohort.subgroups if c in df.columns]

    def too_many(risky: pd.Series) -> bool:
        if int(risky.sum()) > limit:
            return True
        flags = risky.to_numpy()
        for values in groups:
            shares = pd.Series(flags).groupby(values).mean()
            if float(shares.max()) > max_subgroup_suppression:
                return True
        return False

    while n and too_many(risky):
        best: tuple[int, int, str] | None = None
        for order, q in enumerate(sorted(qis, key=lambda c: STEP_ORDER.index(c) if c in STEP_ORDER else 99)):
            if level[q] + 1 >= len(hierarchies[q]):
                continue
            trial = work.copy()
            trial[q] = _apply(original[q], hierarchies[q][level[q] + 1])
            count = int(_at_risk(trial, qis, sec.k, sec.max_risk).sum())
            if best is None or (count, order) < best[:2]:
                best = (count, order, q)
        if best is None:
            break
        step(best[2], level[best[2]] + 1)
        risky = _at_risk(work, qis, sec.k, sec.max_risk)
    # minimal generalisation: undo steps (latest first) that the final state does not need
    floor = {q: (1 if q == "PatientAge" else 0) for q in qis}
    for q in reversed(list(dict.fromkeys(s.split(":")[0] for s in steps))):
        while n and level[q] > floor[q]:
            trial = work.copy()
            trial[q] = _apply(original[q], hierarchies[q][level[q] - 1])
            trial_risky = _at_risk(trial, qis, sec.k, sec.max_risk)
            if too_many(trial_risky):
                break
            work, risky = trial, trial_risky
            level[q] -= 1
            steps.append(f"{q}: back to {hierarchies[q][level[q]].description}")
    within = not too_many(risky) if n else True
    suppressed_mask = risky.to_numpy() if n else []

    # the remediated cohort: generalised values on every row, suppressed records no longer included
    out = full.copy()
    for q in qis:
        out[q] = _apply(out[q].astype(str), hierarchies[q][level[q]])
    inc_index = full.index[inc_mask]
    sup_index = inc_index[suppressed_mask] if n else inc_index[:0]
    if "included" in out.columns:
        out.loc[sup_index, "included"] = False
        if "exclusion_reason" in out.columns:
            out.loc[sup_index, "exclusion_reason"] = SUPPRESSION_REASON
    table = pa.Table.from_pandas(out, schema=cohort.schema, preserve_index=False)
    suppressed = tuple(str(u) for u in full.loc[sup_index, "StudyInstanceUID"]) if "StudyInstanceUID" in full else ()

    kept = ~pd.Series(suppressed_mask, dtype=bool) if n else pd.Series(dtype=bool)
    final = work[kept.to_numpy()] if n else work
    passed = bool(n) and not bool(_at_risk(final, qis, sec.k, sec.max_risk).any())
    changed = pd.DataFrame({q: (work[q] != original[q]) & (original[q] != UNKNOWN) for q in qis}) if n else None
    losses: dict[str, Any] = {
        "records": n,
        "suppressed_records": int(len(sup_index)),
        "suppressed_share": round(len(sup_index) / n, 6) if n else 0.0,
        "columns": {
            q: {"applied": hierarchies[q][level[q]].description,
                "distinct_before": int(original[q].nunique()),
                "distinct_after": int(final[q].nunique()) if len(final) else 0,
                "records_changed": int(changed[q].sum()) if changed is not None else 0}
            for q in qis
        },
    }
    subgroup_losses: list[dict[str, Any]] = []
    for col in policy.cohort.subgroups:
        if col not in df.columns or not n:
            continue
        values = df[col].astype(str)
        any_changed = changed.any(axis=1) if changed is not None and len(qis) else pd.Series(False, index=df.index)
        for value in sorted(values.unique()):
            m = (values == value).to_numpy()
            size = int(m.sum())
            sup = int(suppressed_mask[m].sum())
            subgroup_losses.append({
                "subgroup": f"{col}={value}", "records": size, "suppressed": sup,
                "suppressed_share": round(sup / size, 6), "changed_share": round(float(any_changed[m].mean()), 6),
            })
    transforms: dict[str, ValueTransform] = {}
    for q in qis:
        t = hierarchies[q][level[q]]
        if t.kind != "keep":
            for keyword in HEADER_KEYWORDS.get(q, (q,)):
                transforms[keyword] = t
    result = RemediationResult(
        table=table, generalisations={q: hierarchies[q][level[q]].description for q in qis}, transforms=transforms,
        suppressed_studies=suppressed, losses=losses, subgroup_losses=subgroup_losses, passed=passed,
        within_suppression_limit=within, steps=tuple(steps),
    )
    logger.info("remediation: %d steps, %d of %d records suppressed, paid most: %s", len(steps),
                len(sup_index), n, result.paid_most())
    return result


HeaderTransform = Callable[[str], str]


def rewrite_dataset(ds: Dataset, transforms: Mapping[str, HeaderTransform]) -> dict[str, tuple[str, str]]:
    """Apply ``transforms`` (DICOM keyword -> transform, e.g. :attr:`RemediationResult.transforms`) to the
    top-level elements of a released dataset in place; returns keyword -> (old, new) for the values changed.

    Elements absent from ``ds`` are left absent; a transform that gives an empty value keeps the element with an
    empty value (PatientAge, PatientSize, PatientWeight and the dates are Type 2 or 3 in the IODs that carry them).
    """
    changed: dict[str, tuple[str, str]] = {}
    for keyword, transform in transforms.items():
        if keyword not in ds:
            continue
        old = str(ds[keyword].value if ds[keyword].value is not None else "")
        new = transform(old)
        if new != old.strip(" \x00"):
            ds[keyword].value = new
            changed[keyword] = (old, new)
    return changed
