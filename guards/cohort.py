"""The cohort: one row per study with its subgroup columns, label and released quasi-identifiers.

Every check reads this table (docs/CONTRACTS.md, "Pseudonyms, manifests and the cohort"). It is built on the
private side from the ingest index (original headers) and the de-identification manifest (what was released):

- ``StudyInstanceUID`` and ``PatientID`` are the pseudonyms the release carries
  (:func:`guards.deid.pseudonyms.pseudo_uid` / :func:`~guards.deid.pseudonyms.pseudo_patient_id`), so the
  labels (keyed by original UIDs) and a private demographics table can be joined without publishing originals;
- subgroup columns (``sex``, ``age_band``, ``ethnic_group``, ``modality``, ``manufacturer``, ``model``,
  ``body_part``, ``site``, ``study_year``) come from the original headers, the ethnic group from a private
  demographics table when one is given (EthnicGroup (0010,2160) otherwise);
- the raw quasi-identifier columns, one per entry of ``policy.reid.quasi_identifiers`` (DICOM keywords, plus
  ``StudyYear``), hold the values the release actually contains, read from the de-identification manifest: an
  attribute the profile removed is "unknown" there (StationName and DeviceSerialNumber unless
  ``deid.retain_device_identity``, as for every other option of PS3.15 Table E.1-1), and
  :mod:`guards.checks.reid` does not count it as released. An attribute the manifest has no column for is
  recorded as missing in the table's schema metadata, and the reid check names it.

Age bands follow ``policy.cohort.age_bands`` with the last band top-coded ("90+"), as HIPAA Safe Harbor
(45 CFR 164.514(b)(2)(i)(C)) aggregates ages over 89. Missing values are the string "unknown", never null.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from guards.deid.pseudonyms import pseudo_patient_id, pseudo_uid
from guards.errors import InputError
from guards.keys import PseudonymKey
from guards.policy import ReidSection, ReleasePolicy

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"

SUBGROUP_COLUMNS: tuple[str, ...] = (
    "sex", "age_band", "ethnic_group", "modality", "manufacturer", "model", "body_part", "site", "study_year",
)
_FIXED_FIELDS: tuple[pa.Field, ...] = (
    pa.field("StudyInstanceUID", pa.string(), nullable=False),
    pa.field("PatientID", pa.string(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    *[pa.field(c, pa.string(), nullable=False) for c in SUBGROUP_COLUMNS],
    pa.field("n_instances", pa.int64(), nullable=False),
    pa.field("included", pa.bool_(), nullable=False),
    pa.field("exclusion_reason", pa.string(), nullable=False),
)
# Schema metadata key: the configured quasi-identifiers the ingest index / de-identification manifest has no
# column for (JSON list). Their cohort columns are all "unknown"; guards.checks.reid names them in its result.
MISSING_QI_KEY = b"guards.missing_quasi_identifiers"
# Cohort columns derived from a header attribute of another name (StudyYear is the year of StudyDate).
DERIVED_FROM: dict[str, str] = {"StudyYear": "StudyDate"}


def cohort_schema(quasi_identifiers: Sequence[str], *, missing: Sequence[str] = ()) -> pa.Schema:
    """The cohort's schema: the fixed columns, then one string column per quasi-identifier (DICOM keywords,
    plus ``StudyYear``), in the policy's order; ``missing`` is recorded in the schema metadata."""
    fixed = {f.name for f in _FIXED_FIELDS}
    clash = sorted(set(quasi_identifiers) & fixed)
    if clash:
        raise InputError(f"reid.quasi_identifiers {clash} clash with the cohort's own columns; use DICOM keywords")
    qis = list(dict.fromkeys(quasi_identifiers))
    return pa.schema(
        [*_FIXED_FIELDS, *[pa.field(c, pa.string(), nullable=False) for c in qis]],
        metadata={MISSING_QI_KEY: json.dumps(list(missing))},
    )


# The schema under the default policy (reid.quasi_identifiers of ReidSection()).
COHORT_SCHEMA = cohort_schema(ReidSection().quasi_identifiers)


def missing_quasi_identifiers(cohort: pa.Table) -> tuple[str, ...]:
    """The quasi-identifiers :func:`build_cohort` found no column for in its inputs (schema metadata)."""
    raw = (cohort.schema.metadata or {}).get(MISSING_QI_KEY)
    return tuple(json.loads(raw)) if raw else ()


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


def _text(value: Any) -> str:
    """A header value as clean text; empty, null and padding-only values become "unknown"."""
    if value is None:
        return UNKNOWN
    text = str(value).strip(" \x00")
    return text if text else UNKNOWN


def age_years(patient_age: str, *, birth_date: str = UNKNOWN, study_date: str = UNKNOWN) -> int | None:
    """Age in whole years from PatientAge (AS, PS3.5 Table 6.2-1: ``nnnD|W|M|Y``) or, failing that, from
    PatientBirthDate and StudyDate (DA, YYYYMMDD). None when neither gives an age."""
    m = _AGE.match(patient_age) if patient_age != UNKNOWN else None
    if m:
        n, unit = int(m.group(1)), (m.group(2) or "Y").upper()
        return {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit]
    if len(birth_date) >= 8 and len(study_date) >= 8 and birth_date[:8].isdigit() and study_date[:8].isdigit():
        b, s = birth_date[:8], study_date[:8]
        years = int(s[:4]) - int(b[:4]) - (1 if s[4:8] < b[4:8] else 0)
        return years if years >= 0 else None
    return None


def band_labels(bands: Sequence[int]) -> list[str]:
    """Labels of the age bands: ``(0, 18, 40, 65, 90)`` gives 0-17, 18-39, 40-64, 65-89, 90+ (top-coded)."""
    edges = list(bands)
    if not edges or edges != sorted(set(edges)) or edges[0] < 0:
        raise InputError(
            f"cohort.age_bands {edges} must be increasing, non-negative lower bounds, e.g. [0, 18, 40, 65, 90]"
        )
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]


def age_band(years: int | None, bands: Sequence[int]) -> str:
    """The band label of an age in years; the last band is open (top-coded); "unknown" below the first edge."""
    if years is None or years < bands[0]:
        return UNKNOWN
    labels = band_labels(bands)
    for i in range(len(bands) - 1, -1, -1):
        if years >= bands[i]:
            return labels[i]
    return UNKNOWN  # pragma: no cover - unreachable, years >= bands[0]


def _first(values: list[str]) -> str:
    """The most common known value (ties: first seen), else "unknown"."""
    counts: dict[str, int] = {}
    for v in values:
        if v != UNKNOWN:
            counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: counts[v]) if counts else UNKNOWN


def _sex(value: str) -> str:
    return _SEX.get(value.upper(), UNKNOWN) if value != UNKNOWN else UNKNOWN


def _demographics_map(demographics: pa.Table | None) -> dict[str, str]:
    if demographics is None:
        return {}
    cols = set(demographics.column_names)
    if not {"PatientID", "EthnicGroup"} <= cols:
        raise InputError(
            f"demographics table has columns {sorted(cols)}; it needs PatientID (original) and EthnicGroup"
        )
    ids = demographics.column("PatientID").to_pylist()
    groups = demographics.column("EthnicGroup").to_pylist()
    return {_text(i): _text(g) for i, g in zip(ids, groups, strict=True) if _text(i) != UNKNOWN}


def _released_qis(row: dict[str, Any], qis: Sequence[str]) -> dict[str, str]:
    """The quasi-identifier values of one released (de-identified) manifest row."""
    out = {c: _text(row.get(c)) for c in qis if c not in DERIVED_FROM}
    if "StudyYear" in qis:
        date = _text(row.get("StudyDate"))
        out["StudyYear"] = date[:4] if len(date) >= 4 and date[:4].isdigit() else UNKNOWN
    return out


def _absent(qis: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The quasi-identifiers whose header attribute is not a column of the table their values are read from."""
    have = set(columns)
    return [q for q in qis if DERIVED_FROM.get(q, q) not in have]


def build_cohort(
    index: pa.Table,
    *,
    deid_manifest: pa.Table | None,
    labels: dict[str, int],
    policy: ReleasePolicy,
    key: PseudonymKey,
    demographics: pa.Table | None = None,
) -> pa.Table:
    """One row per study from the ingest ``index`` (original headers) and the ``deid_manifest``.

    The table has the fixed columns and one column per quasi-identifier of ``policy.reid.quasi_identifiers``
    (:func:`cohort_schema`; :data:`COHORT_SCHEMA` under the default policy), holding the released values: those
    of the de-identification manifest (the original headers of the index when no manifest is given). A
    quasi-identifier whose attribute is not a column of that table is "unknown" throughout and listed in the
    schema metadata (:func:`missing_quasi_identifiers`), so the reid check can name it instead of ignoring it.

    ``labels`` are keyed by the ORIGINAL StudyInstanceUID; ``demographics`` (private) has PatientID (original)
    and EthnicGroup. A study is ``included`` when at least one of its instances is published in the
    de-identification manifest (all indexed studies are, when no manifest is given); otherwise
    ``exclusion_reason`` gives the first reason recorded for its instances.
    """
    missing = {"path", "status", "StudyInstanceUID", "PatientID"} - set(index.column_names)
    if missing:
        raise InputError(f"ingest index lacks column(s) {sorted(missing)}; pass ingest/index.parquet")
    ethnic_private = _demographics_map(demographics)
    qi_names = tuple(dict.fromkeys(policy.reid.quasi_identifiers))
    values_from = deid_manifest if deid_manifest is not None else index
    missing_qis = _absent(qi_names, values_from.column_names)
    if missing_qis:
        logger.warning(
            "cohort: quasi-identifier(s) %s of reid.quasi_identifiers are not columns of the %s; they are"
            " 'unknown' in the cohort and the reid check reports them as missing", missing_qis,
            "de-identification manifest" if deid_manifest is not None else "ingest index")
    schema = cohort_schema(qi_names, missing=missing_qis)
    released: dict[str, dict[str, Any]] = {}
    if deid_manifest is not None:
        for r in deid_manifest.to_pylist():
            released[str(r.get("source_path") or r["path"])] = r

    studies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    skipped = 0
    for r in index.to_pylist():
        uid = _text(r.get("StudyInstanceUID"))
        if uid == UNKNOWN:
            skipped += 1
            continue
        studies[uid].append(r)
    if skipped:
        logger.info("cohort: %d index rows without a StudyInstanceUID (unreadable or sidecar) are not studies", skipped)

    bands = policy.cohort.age_bands
    band_labels(bands)  # validate once, before any row
    root = policy.deid.uid_root
    rows: list[dict[str, Any]] = []
    for uid, inst in studies.items():
        def col(name: str, inst: list[dict[str, Any]] = inst) -> str:
            return _first([_text(i.get(name)) for i in inst])

        pid = col("PatientID")
        study_date = col("StudyDate")
        years = age_years(col("PatientAge"), birth_date=col("PatientBirthDate"), study_date=study_date)
        outcomes = [released.get(str(i["path"])) for i in inst]
        if deid_manifest is None:
            published = [i for i in inst if i["status"] == "indexed"]
            reasons = [_text(i.get("reason")) for i in inst if i["status"] != "indexed"]
            qi_rows = published
        else:
            published = [o for o in outcomes if o is not None and o["status"] == "published"]
            reasons = [_text(o.get("reason")) if o is not None else "not in the de-identification manifest"
                       for o in outcomes if o is None or o["status"] != "published"]
            reasons += [_text(i.get("reason")) for i in inst if i["status"] not in ("indexed", "published")]
            qi_rows = published
        released_qis = [_released_qis(q, qi_names) for q in qi_rows]
        qis = {c: _first([v[c] for v in released_qis]) for c in qi_names}
        included = bool(published)
        reason = "" if included else next((x for x in reasons if x != UNKNOWN), "no instance published")
        keep_uids = policy.deid.retain_uids
        rows.append(
            {
                "StudyInstanceUID": uid if keep_uids else pseudo_uid(key, uid, root=root),
                "PatientID": pseudo_patient_id(key, pid) if pid != UNKNOWN else pseudo_patient_id(key, "study:" + uid),
                "label": int(labels.get(uid, -1)),
                "sex": _sex(col("PatientSex")),
                "age_band": age_band(years, bands),
                "ethnic_group": ethnic_private.get(pid, col("EthnicGroup")),
                "modality": col("Modality"),
                "manufacturer": col("Manufacturer"),
                "model": col("ManufacturerModelName"),
                "body_part": col("BodyPartExamined"),
                "site": col("InstitutionName"),
                "study_year": study_date[:4] if study_date[:4].isdigit() else UNKNOWN,
                "n_instances": len(inst),
                "included": included,
                "exclusion_reason": reason,
                **qis,
            }
        )
    rows.sort(key=lambda r: r["StudyInstanceUID"])
    logger.info("cohort: %d studies (%d included)", len(rows), sum(r["included"] for r in rows))
    return pa.Table.from_pylist(rows, schema=schema)


def patients_view(cohort: pa.Table) -> pa.Table:
    """One row per patient: pseudonymous PatientID, study counts, and the patient's subgroup values.

    A subgroup column that differs between a patient's studies (e.g. the age band over years) takes the most
    common value; ``label`` is the maximum over the patient's studies (-1 when none is known).
    """
    cols = [c for c in SUBGROUP_COLUMNS if c in cohort.column_names and c != "study_year"]
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in cohort.to_pylist():
        per[str(r["PatientID"])].append(r)
    rows = []
    for pid in sorted(per):
        studies = per[pid]
        rows.append(
            {
                "PatientID": pid,
                "n_studies": len(studies),
                "n_included": sum(bool(s.get("included", True)) for s in studies),
                "label": max(int(s["label"]) for s in studies),
                **{c: _first([str(s[c]) for s in studies]) for c in cols},
            }
        )
    schema = pa.schema(
        [pa.field("PatientID", pa.string()), pa.field("n_studies", pa.int64()), pa.field("n_included", pa.int64()),
         pa.field("label", pa.int64()), *[pa.field(c, pa.string()) for c in cols]]
    )
    return pa.Table.from_pylist(rows, schema=schema)
