"""The release pipeline, step by step, in-process (used by the CLI, the DAG and the tests).

ingest -> deid -> protect -> cohort -> remediate -> checks -> gate + report -> publish (ARCHITECTURE.md).
:func:`start_run` creates the persisted :class:`~guards.run.Run` (or a new attempt of it); every step takes
that Run, so the CLI, a DAG task and a remote worker run the same step on the same frozen policy and the same
source snapshot. Each step is a transaction (:func:`guards.run.step`): it replaces its own outputs, records
what it did, and is skipped when an earlier attempt did it on the same inputs. Outcomes are small typed dicts
that fit in XCom.
"""

from __future__ import annotations

import csv
import dataclasses
import getpass
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import pyarrow as pa

from guards import approval as approvals
from guards import run as runs
from guards.atomic import PRIVATE_FILE_MODE, exclusive, save_dataset, write_text
from guards.checks import registry
from guards.errors import GuardError, InputError, PolicyError
from guards.keys import PseudonymKey
from guards.manifest import CROSSWALK_SCHEMA, cause_counts, read_table, status_counts, to_table, write_table
from guards.policy import ReleasePolicy, load_policy
from guards.run import Device, Run, RunPaths, safe_run_id

__all__ = ["Run", "RunPaths", "safe_run_id", "start_run", "run_pipeline"]

logger = logging.getLogger(__name__)


class IngestOutcome(TypedDict):
    counts: dict[str, int]
    index: str
    fingerprint: str


class DeidOutcome(TypedDict):
    counts: dict[str, int]
    manifest: str


class ShardOutcome(TypedDict):
    shard: int
    counts: dict[str, int]


class ShardPlan(TypedDict):
    shards: list[int]


class ProtectOutcome(TypedDict):
    skipped: bool
    counts: dict[str, int]


class CohortOutcome(TypedDict):
    studies: int


class RemediateOutcome(TypedDict):
    skipped: bool
    rewritten: int
    suppressed: int


class CheckRan(TypedDict):
    id: str
    status: str
    carried_from: int | None


class GateOutcome(TypedDict):
    passed: bool
    report: str
    reasons: list[str]


class PublishOutcome(TypedDict):
    published: bool
    release: str | None
    already: bool
    report: str
    version: str | None  # the release's version folder (v0001 ...), None when nothing was published
    approval: str | None  # the sign-off as one sentence (guards.approval.Approval.sentence)


def new_run_id() -> str:
    """``run-20261204T010203.123456Z-1a2b3c``: UTC to the microsecond, then 24 random bits.

    Ids sort by start time (fixed width) and cannot collide: two runs started in the same second shared one
    folder with the one-second ids of before. Valid under guards.run's run id rule (letters, digits, ``.-_``).
    """
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(3)}"


STALE_TMP_S = 6 * 3600  # a temporary file is renamed within seconds of being written: this old, it is a crash's


def clean_stale_runs(out: Path, *, keep: str | None = None) -> list[str]:
    """Remove what killed runs left under ``out``: their ``staging/`` and old temporary files; what was removed.

    Called by :func:`run_pipeline` once it holds OUT's lock. A run's ``staging/`` is removed only under that
    run's own lock (taken by :func:`step_publish` around staging and publishing, so a run publishing now is
    skipped), never for ``keep``; a published release is never touched (``releases/`` is not looked at, and
    publishing renames staging away). Temporary files (``.name.tmp``, guards.atomic) older than
    :data:`STALE_TMP_S` are removed under ``runs/`` and ``private/runs/``.
    """
    import time

    removed: list[str] = []
    runs_root = out / "runs"
    for run_dir in sorted(p for p in runs_root.glob("*") if p.is_dir() and p.name != keep):
        staging = run_dir / "staging"
        if not staging.is_dir():
            continue
        try:
            with exclusive(run_dir, what=f"clean-up of the stale run {run_dir.name}"):
                shutil.rmtree(staging)
        except InputError:
            logger.info("run %s is publishing now: its staging is left alone", run_dir.name)
            continue
        removed.append(str(staging.relative_to(out)))
    cutoff = time.time() - STALE_TMP_S
    for root in (runs_root, out / "private" / "runs"):
        for tmp in root.glob("*/**/.*.tmp") if root.is_dir() else ():
            if tmp.parts[len(root.parts)] == keep or not tmp.is_file():
                continue
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed.append(str(tmp.relative_to(out)))
            except FileNotFoundError:  # renamed meanwhile: it was not stale
                continue
    if removed:
        logger.info("removed what %d stale run item(s) left behind: %s", len(removed), ", ".join(removed[:10]))
    return removed


def policy_for_run(policy_file: str | Path | None, params: dict[str, Any]) -> ReleasePolicy:
    """The policy of one run: the file (or defaults), then the steward's form overrides and waivers."""
    overrides: dict[str, Any] = {}
    for param, dotted in (("epsilon", "protect.epsilon"), ("reid_max_risk", "reid.max_risk"), ("reid_k", "reid.k")):
        if params.get(param) is not None:
            overrides[dotted] = params[param]
    labels = str(params.get("labels") or "").strip()
    if labels:  # a table outside the source (a PACS has no folder to hold one): an existing absolute local path
        if not Path(labels).is_absolute() or not Path(labels).is_file():
            raise InputError(f"labels table {labels!r}: give the absolute path of an existing local file")
        overrides["ingest.labels"] = labels
    policy = load_policy(policy_file)
    waivers = [dict(w) for w in params.get("waivers") or []]
    if waivers:
        overrides["gate.waivers"] = list(policy.to_dict()["gate"]["waivers"]) + waivers
    return policy.with_overrides(overrides) if overrides else policy


def enabled_checks(policy: ReleasePolicy) -> tuple[str, ...]:
    """Every registered check the policy does not turn off (``gate.off``), in registry order.

    A registered check the policy does not classify runs as blocking (fail safe).
    """
    return tuple(c.id for c in registry.registered() if c.id not in policy.gate.off)


def validate_checks(policy: ReleasePolicy) -> None:
    """Every check id the policy names (blocking, advisory, off, waivers) must be registered."""
    known = {c.id for c in registry.registered()}
    named = {*policy.gate.blocking, *policy.gate.advisory, *policy.gate.off, *(w.check for w in policy.gate.waivers)}
    unknown = sorted(named - known)
    if unknown:
        raise PolicyError(f"gate: unknown check(s) {unknown}; registered checks are {sorted(known)}")


def start_run(
    out: Path,
    run_id: str | None = None,
    *,
    source: str | Path,
    policy: ReleasePolicy,
    key: PseudonymKey,
    device: Device = "cpu",
    under_test: Path | None = None,
) -> Run:
    """Create run ``run_id`` (or a new attempt of it) with its frozen policy; the first thing every run does."""
    validate_checks(policy)
    return Run.start(Path(out), run_id or new_run_id(), source=source, policy=policy,
                     key_fingerprint=key.fingerprint(), device=device, under_test=under_test)


def _same_key(run: Run, key: PseudonymKey) -> None:
    if key.fingerprint() != run.key_fingerprint:
        raise InputError(f"run {run.run_id!r} was started with another pseudonym key (fingerprint "
                         f"{run.key_fingerprint}); configure the same key on every worker")


def read_labels(path: Path) -> dict[str, int]:
    """``StudyInstanceUID,label`` rows (original UIDs, private side). A missing file means no labels.

    The table is UTF-8 (RFC 4180 CSV), a byte order mark allowed; other bytes (Latin-1, say) are refused with
    their line rather than guessed at. Each row needs both fields; a label is an integer >= 0 (the cohort reads
    -1 as "unknown", so a negative label would silently unlabel a study; the policy names no label classes).
    A study listed twice with one label is read once; with two labels it is refused, naming both lines.
    """
    if not path.is_file():
        logger.warning("no labels table at %s: protection will use pseudo-labels", path)
        return {}
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"labels table {path} line {line}: bytes that are not UTF-8 ({e.reason} at byte"
                         f" {e.start}); save the table as UTF-8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    columns = [c.strip() for c in header] if header else None
    if columns is None or not {"StudyInstanceUID", "label"} <= set(columns):
        raise InputError(f"labels table {path} needs the columns StudyInstanceUID,label; got {columns}")
    at_uid, at_label = columns.index("StudyInstanceUID"), columns.index("label")
    labels: dict[str, int] = {}
    line_of: dict[str, int] = {}
    for row in reader:
        n = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue  # a blank line
        if len(row) != len(columns):
            raise InputError(f"labels table {path} line {n}: {len(row)} field(s), the header has {len(columns)}"
                             f" ({','.join(columns)})")
        uid, raw = row[at_uid].strip(), row[at_label].strip()
        if not uid:
            raise InputError(f"labels table {path} line {n}: empty StudyInstanceUID")
        try:
            label = int(raw)
        except ValueError:
            raise InputError(f"labels table {path} line {n}: label {raw!r} is not an integer") from None
        if label < 0:
            raise InputError(f"labels table {path} line {n}: label {label} is out of range (labels are integers"
                             " >= 0; -1 means unknown in the cohort: leave the study out instead)")
        if uid in labels and labels[uid] != label:
            raise InputError(f"labels table {path} lines {line_of[uid]} and {n}: the same StudyInstanceUID with"
                             f" two labels ({labels[uid]} and {label})")
        if uid not in labels:
            labels[uid], line_of[uid] = label, n
    return labels


def _shard_of(patient_id: str, shards: int) -> int:
    """A patient's shard: stable across runs and machines, so a patient's studies stay together."""
    return int.from_bytes(hashlib.sha256(patient_id.encode("utf-8")).digest()[:8], "big") % shards


def pseudonymous_labels(labels: dict[str, int], key: PseudonymKey, policy: ReleasePolicy) -> dict[str, int]:
    """Labels re-keyed by the pseudonymous StudyInstanceUID that the de-identified files carry."""
    from guards.deid.pseudonyms import pseudo_uid

    if policy.deid.retain_uids:
        return dict(labels)
    return {pseudo_uid(key, uid, root=policy.deid.uid_root): label for uid, label in labels.items()}


def _noise_lines(paths: RunPaths, policy: ReleasePolicy) -> list[str]:
    """What the protect step did, from ``protect.json``: files noised now and carried from earlier runs."""
    summary = paths.run / "protect.json"
    if not policy.protect.enabled or not summary.is_file():
        return []
    s = json.loads(summary.read_text(encoding="utf-8"))
    counts = s["counts"]
    fresh = counts["protected"] - counts["reused"]
    return [f"- Noised in this run: {fresh} files ({s['rounds']} rounds, surrogate accuracy on the noised data"
            f" {s['surrogate_accuracy']}); carried with the noise of an earlier run: {counts['reused']}"
            f" (same de-identified bytes, settings and seed)"]


def _options(policy: ReleasePolicy) -> str:
    d = policy.deid
    on = [name for name in ("retain_safe_private", "retain_uids", "retain_device_identity",
                            "retain_institution_identity", "retain_patient_characteristics",
                            "clean_descriptors", "clean_structured_content", "clean_graphics", "clean_pixel_data")
          if getattr(d, name)]
    if d.retain_longitudinal != "off":
        on.append(f"retain_longitudinal={d.retain_longitudinal}")
    return ", ".join(on) or "none"



def step_ingest(run: Run, source: str | Path) -> IngestOutcome:
    """Resolve the source once into the run's snapshot (index, quarantine, labels, demographics).

    Ingest runs in every attempt (it is how a resumed run learns whether its input changed); the steps after
    it compare their records with the new snapshot's fingerprint.
    """
    from guards.sources import resolve

    snapshot = resolve(source, out_dir=run.paths.ingest, policy=run.policy)
    run = run.with_snapshot(snapshot)
    outcome = IngestOutcome(counts=dict(snapshot.counts), index=str(snapshot.index),
                            fingerprint=snapshot.fingerprint)
    runs.record(run, "ingest", outcome)
    return outcome


def begin(
    source: str | Path,
    out: Path,
    run_id: str | None = None,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    device: Device = "cpu",
    under_test: Path | None = None,
) -> Run:
    """:func:`start_run` and :func:`step_ingest`: the Run of ``run_id`` (its next attempt) with its snapshot."""
    run = start_run(out, run_id, source=source, policy=policy, key=key, device=device, under_test=under_test)
    step_ingest(run, source)
    return Run.load(run.out, run.run_id)


def plan_shards(run: Run, *, shards: int) -> list[int]:
    """Split the indexed instances into at most ``shards`` groups of patients; returns the non-empty shard ids.

    Rows ingest did not index (quarantined, excluded) are not de-identified: :func:`merge_deid` carries them.
    """
    if shards < 1:
        raise InputError(f"shards must be at least 1, got {shards}")
    paths = run.paths
    shard_dir = paths.ingest / "shards"

    def work() -> ShardPlan:
        index = read_table(run.require_snapshot().index)
        rows = [r for r in index.to_pylist() if r["status"] == "indexed"]
        groups: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(_shard_of(r.get("PatientID") or "", shards), []).append(r)
        for stale in (shard_dir, paths.deid):  # a fresh plan starts de-identification afresh
            if stale.exists():
                shutil.rmtree(stale)
        for shard, members in groups.items():
            write_table(to_table(members), shard_dir / f"{shard:04d}.parquet")
        logger.info("planned %d shard(s) over %d instances", len(groups), len(rows))
        return ShardPlan(shards=sorted(groups))

    def intact(record: runs.StepRecord) -> bool:
        return all((shard_dir / f"{s:04d}.parquet").is_file() for s in record.outcome["shards"])

    return list(runs.step(run, "plan_shards", work, carry=intact)["shards"])


def step_deid_shard(run: Run, shard: int, *, key: PseudonymKey) -> ShardOutcome:
    """De-identify one shard into ``run/deid`` (PS3.15 Annex E); its manifest and crosswalk are its own."""
    from guards.deid.tree import deidentify_index

    _same_key(run, key)
    paths, policy = run.paths, run.policy
    manifest = paths.deid / ".shards" / f"{shard:04d}.parquet"

    def work() -> ShardOutcome:
        rows = read_table(paths.ingest / "shards" / f"{shard:04d}.parquet").to_pylist()
        result = deidentify_index(
            run.require_snapshot().root, rows, paths.deid, policy=policy, key=key,
            crosswalk=paths.private / paths.run_id / f"crosswalk-{shard:04d}.parquet",
            manifest_path=manifest,
            ocr_cache=paths.private / "ocr-cache" if policy.pixels.reuse else None,
        )
        return ShardOutcome(shard=shard, counts=dict(result.counts))

    return runs.step(run, f"deid:{shard:04d}", work, carry=lambda _: manifest.is_file())


def merge_deid(run: Run) -> DeidOutcome:
    """One ``deid/manifest.parquet`` from the shards plus the files ingest did not index, one row per input file.

    A SOP Instance found in two shards (the same instance filed under two patients) is published once; the
    other copy is excluded with a reason. Temporary files of crashed attempts are removed.
    """
    from guards.deid.tree import remove_partial

    paths = run.paths

    def work() -> DeidOutcome:
        remove_partial(paths.deid)
        index = read_table(run.require_snapshot().index).to_pylist()
        rows = [{**r, "path": r.get("source_path") or r["path"]} for r in index if r["status"] != "indexed"]
        seen: dict[str, str] = {}
        for part in sorted((paths.deid / ".shards").glob("*.parquet")):
            for r in read_table(part).to_pylist():
                if r["status"] == "published":
                    if r["path"] in seen:
                        r = {**r, "status": "excluded",
                             "reason": f"duplicate SOPInstanceUID: the same instance as {seen[r['path']]!r}"}
                    else:
                        seen[r["path"]] = r["source_path"]
                rows.append(r)
        expected = len(index)
        if len(rows) != expected:
            raise InputError(f"deid accounted for {len(rows)} of {expected} input files: a shard is missing; "
                             "re-run it")
        table = to_table(rows)
        write_table(table, paths.deid / "manifest.parquet")
        crosswalks = sorted((paths.private / paths.run_id).glob("crosswalk-*.parquet"))
        if crosswalks:
            merged = pa.concat_tables([read_table(c) for c in crosswalks]).to_pylist()
            unique = sorted({(r["kind"], r["original"], r["pseudonym"]) for r in merged})
            write_table(to_table([{"kind": k, "original": o, "pseudonym": p} for k, o, p in unique],
                                 CROSSWALK_SCHEMA), paths.private / f"crosswalk-{paths.run_id}.parquet",
                        mode=PRIVATE_FILE_MODE)
            shutil.rmtree(paths.private / paths.run_id)
        counts = status_counts(table)
        counts["seen"] = table.num_rows
        return DeidOutcome(counts=counts, manifest=str(paths.deid / "manifest.parquet"))

    return runs.step(run, "merge_deid", work, carry=lambda _: (paths.deid / "manifest.parquet").is_file())


def step_deid(run: Run, *, key: PseudonymKey, shards: int = 1) -> DeidOutcome:
    """plan shards -> de-identify each shard -> merge, in-process (the DAG runs the shards in parallel)."""
    for shard in plan_shards(run, shards=shards):
        step_deid_shard(run, shard, key=key)
    return merge_deid(run)


def run_labels(run: Run) -> dict[str, int]:
    """The snapshot's labels (original StudyInstanceUIDs, private side); none when the source has no table."""
    path = run.require_snapshot().labels
    if path is None:
        logger.warning("the source has no labels table (%s): protection uses pseudo-labels", run.policy.ingest.labels)
        return {}
    return read_labels(path)


def step_protect(run: Run, *, key: PseudonymKey) -> ProtectOutcome:
    """Add SALM noise to the de-identified pixels (skipped, loudly, when the policy turns protection off)."""
    paths, policy = run.paths, run.policy

    def work() -> ProtectOutcome:
        if not policy.protect.enabled:
            logger.warning("protection is OFF by policy: the release carries no unlearnable noise")
            return ProtectOutcome(skipped=True, counts={})
        from guards.protect import protect_tree

        _same_key(run, key)
        if paths.protect.exists():
            shutil.rmtree(paths.protect)
        labels = pseudonymous_labels(run_labels(run), key, policy)
        cache = paths.private / "protect-cache" if policy.protect.reuse else None
        result = protect_tree(paths.deid, paths.protect, policy=policy, labels=labels or None, device=run.device,
                              reuse=cache)
        summary = {"counts": dict(result.counts), "rounds": result.rounds,
                   "surrogate_accuracy": round(result.surrogate_accuracy, 4),
                   "seconds": {k: round(v, 1) for k, v in result.timings.items()}}
        write_text(paths.run / "protect.json", json.dumps(summary, indent=2))  # for the datasheet
        return ProtectOutcome(skipped=False, counts=dict(result.counts))

    return runs.step(run, "protect", work,
                     carry=lambda r: r.outcome["skipped"] or (paths.protect / "manifest.parquet").is_file())


def step_cohort(run: Run, *, key: PseudonymKey) -> CohortOutcome:
    """Build the study table every check reads (one row per study, subgroup columns, label)."""
    from guards.cohort import build_cohort, patients_view

    _same_key(run, key)
    paths, policy, snap = run.paths, run.policy, run.require_snapshot()

    def work() -> CohortOutcome:
        demographics = None
        if snap.demographics is not None:
            import pyarrow.csv as pacsv

            demographics = pacsv.read_csv(snap.demographics)
        cohort = build_cohort(read_table(snap.index), deid_manifest=read_table(paths.deid / "manifest.parquet"),
                              labels=run_labels(run), policy=policy, key=key, demographics=demographics)
        write_table(cohort, paths.cohort / "cohort.parquet")
        write_table(patients_view(cohort), paths.cohort / "patients.parquet")
        return CohortOutcome(studies=cohort.num_rows)

    return runs.step(run, "cohort", work, carry=lambda _: (paths.cohort / "cohort.parquet").is_file())


def step_remediate(run: Run) -> RemediateOutcome:
    """Re-identification remediation (policy ``reid.remediate``): generalise or suppress quasi-identifiers.

    The released headers are rewritten with the same transforms as the cohort (guards.remediate), suppressed
    studies become ``excluded`` with a reason in the release manifest, and the cost (overall and per subgroup)
    is written to ``cohort/remediation.json`` for the report and the datasheet.
    """
    paths, policy = run.paths, run.policy

    def work() -> RemediateOutcome:
        if not policy.reid.remediate:
            return RemediateOutcome(skipped=True, rewritten=0, suppressed=0)
        from pydicom import dcmread

        from guards.remediate import SUPPRESSION_REASON, remediate, rewrite_dataset

        cohort = read_table(paths.cohort / "cohort.parquet")
        before = sum(1 for inc in cohort.column("included").to_pylist() if inc)
        result = remediate(cohort, policy=policy)
        tree = run.release_tree
        manifest = read_table(tree / "manifest.parquet").to_pylist()
        suppressed = set(result.suppressed_studies)
        rewritten = 0
        for row in manifest:
            if row["status"] != "published":
                continue
            if row["StudyInstanceUID"] in suppressed:
                row.update(status="excluded", reason=SUPPRESSION_REASON)
                continue
            path = tree / row["path"]
            ds = dcmread(path)
            if rewrite_dataset(ds, result.transforms):
                data = save_dataset(ds, path)
                row.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
                rewritten += 1
        write_table(to_table(manifest), tree / "manifest.parquet")
        write_table(result.table, paths.cohort / "cohort.parquet")
        summary = {
            "generalisations": result.generalisations,
            "suppressed_studies": len(suppressed),
            "studies_before": before,
            "rewritten_files": rewritten,
            "losses": result.losses,
            "subgroup_losses": result.subgroup_losses,
            "passed": result.passed,
        }
        write_text(paths.cohort / "remediation.json", json.dumps(summary, indent=2, default=str))
        logger.info("remediation: %d files rewritten, %d studies suppressed", rewritten, len(suppressed))
        return RemediateOutcome(skipped=False, rewritten=rewritten, suppressed=len(suppressed))

    return runs.step(run, "remediate", work)


def run_check(run: Run, check_id: str) -> CheckRan:
    """Run one registered check and write its result stamped with this attempt (``checks/<id>.json``).

    The previous result and error files are removed first, so a crash leaves no result: the gate then reads
    the check as "not run" (with the crash's type and message), never an earlier attempt's file. A check done
    in an earlier attempt on the same inputs is carried (re-stamped with ``carried_from``), not run again.
    """
    check = registry.get(check_id)
    name, path = f"check:{check_id}", runs.result_path(run, check_id)

    def intact(_: runs.StepRecord) -> bool:
        """Carry only a result file stamped with these inputs (not one removed or edited since)."""
        stamp = runs.read_stamped(path)[1] if path.is_file() else None
        return stamp is not None and stamp.fingerprint == run.input_fingerprint()

    def work() -> CheckRan:
        path.unlink(missing_ok=True)
        runs.error_path(run, check_id).unlink(missing_ok=True)
        try:
            result = check.execute(run)
        except Exception as e:
            runs.write_error(run, check_id, e)
            raise
        runs.write_result(run, result)
        return CheckRan(id=check_id, status=result.status, carried_from=None)

    ran = runs.step(run, name, work, carry=intact)
    done = runs.read_record(run, name)
    if done is None or done.carried_from is None:
        return ran
    result = runs.read_stamped(path)[0]  # carried: the result is re-stamped with this attempt
    runs.write_result(run, result, carried_from=done.carried_from)
    runs.error_path(run, check_id).unlink(missing_ok=True)
    logger.info("check %s: measured in attempt %d on the same inputs; carried", check_id, done.carried_from)
    return CheckRan(id=check_id, status=result.status, carried_from=done.carried_from)


def step_gate(run: Run) -> GateOutcome:
    """Judge this attempt's check results (a missing, stale or crashed one is "not run") and write the report."""
    from guards.gate import decide
    from guards.report import write_report

    paths, policy = run.paths, run.policy
    results, not_run = runs.current_results(run, enabled_checks(policy))
    decision = decide(results, policy=policy, not_run=not_run)
    counts, causes = input_counts(run), input_causes(run)
    context: dict[str, Any] = {"run_id": run.run_id, "attempt": run.attempt, "counts": counts,
                               "causes": causes, "off": list(policy.gate.off)}
    remediation = paths.cohort / "remediation.json"
    if remediation.is_file():
        context["remediation"] = json.loads(remediation.read_text(encoding="utf-8"))
    first = [f"Step '{e['step']}' failed in this attempt ({e['error']}), so the steps after it did not run. Fix the"
             " cause and resume the run; the steps done before it are carried." for e in runs.step_errors(run)]
    first += upstream_causes(counts, causes, context.get("remediation"), policy)
    if first and not decision.passed:  # what emptied the release comes before what the checks then could not do
        decision = dataclasses.replace(decision, reasons=(*first, *decision.reasons))
    write_report(decision, results, paths.report, policy=policy, context=context)
    outcome = GateOutcome(passed=decision.passed, report=str(paths.report / "index.html"),
                          reasons=list(decision.reasons))
    runs.record(run, "gate", outcome)
    return outcome


def _last_manifest(run: Run) -> Path:
    """The latest manifest of the run: protect's, else deid's, else (deid failed) the source snapshot's index."""
    for manifest in (run.release_tree / "manifest.parquet", run.paths.deid / "manifest.parquet"):
        if manifest.is_file():
            return manifest
    return run.require_snapshot().index


def upstream_causes(counts: dict[str, int], causes: list[tuple[str, str, int]], remediation: dict[str, Any] | None,
                    policy: ReleasePolicy) -> list[str]:
    """Sentences naming an earlier step that left the checks nothing to examine (the first cause of a failure)."""
    out: list[str] = []
    if remediation and remediation.get("studies_before") and (
            remediation.get("suppressed_studies", 0) >= remediation["studies_before"]):
        out.append(f"Re-identification remediation suppressed {remediation['suppressed_studies']} of"
                   f" {remediation['studies_before']} studies (reid.k = {policy.reid.k}), so nothing is left to"
                   " release and the checks had no data. Lower reid.k, generalise fewer quasi-identifiers"
                   " (reid.quasi_identifiers), or release more studies per equivalence class.")
    elif counts.get("seen", 0) and not counts.get("published", 0):
        top = "; ".join(f"{n} {status}: {cause}" for status, cause, n in causes[:3]) or "no cause recorded"
        out.append(f"None of the {counts['seen']} input files was published ({top}), so the checks had no data."
                   " Each file's reason is in the run's manifest.")
    return out


def input_counts(run: Run) -> dict[str, int]:
    """Every input file's fate, from the last manifest of the run: seen = published + quarantined + excluded.

    ``indexed`` (read but not yet de-identified) is listed only when a file was left there, which is a bug."""
    counts = status_counts(read_table(_last_manifest(run)))
    counts["seen"] = sum(counts[s] for s in ("indexed", "published", "quarantined", "excluded"))
    if not counts["indexed"]:
        del counts["indexed"]
    return counts


def input_causes(run: Run) -> list[tuple[str, str, int]]:
    """``(status, cause, files)`` of every quarantined or excluded file of the run, one row per cause."""
    return cause_counts(read_table(_last_manifest(run)))


def datasheet(run: Run, *, key: PseudonymKey) -> str:
    """The release's datasheet (Markdown): verdict, counts, waivers, seed, policy."""
    paths, policy = run.paths, run.policy
    gate = json.loads((paths.report / "gate.json").read_text(encoding="utf-8"))
    counts = input_counts(run)
    p = policy.protect
    noise = f"SALM, epsilon {p.epsilon:.5f}, rho {p.rho:.3f}, seed {policy.release.seed}" if p.enabled else "OFF"
    lines = [
        f"# Datasheet: {policy.release.name}",
        "",
        f"- Verdict: {'PASSED' if gate['passed'] else 'FAILED'}",
        f"- Run: {run.run_id} (attempt {run.attempt})",
        f"- Seed: {policy.release.seed}",
        f"- Pseudonym key fingerprint (not the key): {key.fingerprint()}",
        f"- De-identification: DICOM PS3.15 Annex E Basic Profile; options: {_options(policy)}",
        f"- Unlearnable noise: {noise}",
        *_noise_lines(paths, policy),
        f"- Checks turned off by policy: {', '.join(policy.gate.off) or 'none'}",
        "",
        "## Input files",
        "",
        "| seen | published | quarantined | excluded |",
        "|---|---|---|---|",
        f"| {counts['seen']} | {counts['published']} | {counts['quarantined']} | {counts['excluded']} |",
        "",
        *_cause_lines(run),
        "## Files",
        "",
        "- `data/`: the protected, de-identified DICOM files; `manifest.parquet`: one row per published instance",
        f"- `labels.csv`: `StudyInstanceUID,label` for every released study ({_labelled(run)}), keyed by the"
        " pseudonymous StudyInstanceUID of the files and the manifest; the label values are the source's",
        "- `gate.json`, `report/`: the gate's decision and its report; `provenance.json`: the run and attempt",
        "",
        "## Waivers",
        "",
    ]
    outcomes = {o["id"]: o.get("was") or o["outcome"] for o in gate.get("outcomes", [])}
    lines += [f"- `{w['check']}` (was {outcomes.get(w['check'], 'failed')}): {w['reason']}"
              for w in gate.get("waivers", [])] or ["None."]
    remediation = paths.cohort / "remediation.json"
    if remediation.is_file():
        r = json.loads(remediation.read_text(encoding="utf-8"))
        lines += ["", "## Re-identification remediation", "",
                  f"- Studies suppressed: {r['suppressed_studies']}; files rewritten: {r['rewritten_files']}"]
        lines += [f"- `{column}`: {level}" for column, level in r["generalisations"].items()]
    lines += ["", *approvals.datasheet_lines(gate.get("approval"))]
    lines += ["## Policy", "", "```json", json.dumps(policy.to_dict(), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _cause_lines(run: Run) -> list[str]:
    """One row per cause of quarantine or exclusion (a sidecar is not a suppressed study)."""
    causes = input_causes(run)
    if not causes:
        return ["No file was quarantined or excluded.", ""]
    return ["| status | cause | files |", "|---|---|---|",
            *(f"| {status} | {cause} | {n} |" for status, cause, n in causes), "",
            "Each file's own reason is in `manifest.parquet` (excluded and quarantined rows keep their reason).", ""]


def _labelled(run: Run) -> str:
    cohort = run.cohort()
    included = [lab for lab, inc in zip(cohort.column("label").to_pylist(), cohort.column("included").to_pylist(),
                                        strict=True) if inc]
    return f"{sum(1 for lab in included if lab >= 0)} of {len(included)} labelled; empty when unknown"


PROVENANCE = "provenance.json"


def published_version(run: Run) -> Path | None:
    """The release version this run already published, if any (its ``provenance.json`` names the run)."""
    root = run.paths.releases / run.policy.release.name
    for version in sorted(root.glob("v*")) if root.is_dir() else []:
        marker = version / PROVENANCE
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("run_id") == run.run_id:
            return version
    return None


def step_publish(run: Run, *, key: PseudonymKey) -> PublishOutcome:
    """Stage the release and publish it atomically, only when this attempt's gate passed; once per run.

    A run that is already published is not published again (the step says so and returns that version).
    """
    from guards.publish import publish, stage_release

    paths, policy = run.paths, run.policy
    report = str(paths.report / "index.html")
    done = published_version(run)
    if done is not None:
        logger.warning("run %s is already published as %s/%s; nothing is published again (start a new run to "
                       "publish changed inputs)", run.run_id, policy.release.name, done.name)
        return PublishOutcome(published=False, release=str(done), already=True, report=report, version=done.name,
                              approval=None)
    gate_record = runs.read_record(run, "gate")
    if gate_record is None or gate_record.attempt != run.attempt or gate_record.fingerprint != run.input_fingerprint():
        raise InputError(f"run {run.run_id!r}: the gate has not judged attempt {run.attempt}; run the gate step first")
    gate = json.loads((paths.report / "gate.json").read_text(encoding="utf-8"))
    if not gate["passed"] or not gate_record.outcome["passed"]:
        logger.error("gate failed: nothing is published; report: %s", report)
        return PublishOutcome(published=False, release=None, already=False, report=report, version=None,
                              approval=None)
    signed = approvals.current(run)
    if signed is None:
        raise InputError(f"run {run.run_id!r} attempt {run.attempt}: the gate passed but nobody signed off; approve "
                         "it in Airflow's Required actions (task 'approve'), or publish with guard run")
    if not signed.publishes:
        logger.error("release %s: %s; nothing is published", policy.release.name, signed.sentence())
        return PublishOutcome(published=False, release=None, already=False, report=report, version=None,
                              approval=signed.sentence())
    _same_key(run, key)
    tree = run.release_tree
    cohort = run.cohort()
    labels = dict(zip(cohort.column("StudyInstanceUID").to_pylist(), cohort.column("label").to_pylist(),
                      strict=True))
    with exclusive(paths.run, what=f"publish of run {run.run_id}"):  # clean_stale_runs leaves this staging alone
        stage_release(tree=tree, manifest=tree / "manifest.parquet", report_dir=paths.report, staging=paths.staging,
                      datasheet=datasheet(run, key=key), labels=labels)
        write_text(paths.staging / PROVENANCE, json.dumps({"run_id": run.run_id, "attempt": run.attempt,
                                                           "inputs": run.input_fingerprint()}, indent=2))
        target = publish(paths.staging, paths.releases, name=policy.release.name)
    return PublishOutcome(published=True, release=str(target), already=False, report=report, version=target.name,
                          approval=signed.sentence())


@dataclass(frozen=True)
class PipelineResult:
    passed: bool
    run: Run
    release: Path | None
    counts: dict[str, int]
    already_published: bool = False

    @property
    def paths(self) -> RunPaths:
        return self.run.paths

    @property
    def report(self) -> Path:
        return self.run.paths.report / "index.html"


def run_pipeline(
    source: str | Path,
    out: Path,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    device: Device = "cpu",
    run_id: str | None = None,
    shards: int = 1,
) -> PipelineResult:
    """All steps in order, in-process. Publishes under ``out/releases`` only when the gate passes, once per run.

    With the ``run_id`` of an existing run this is its next attempt: steps done before on unchanged inputs are
    skipped, and a run that is already published is not published again. One run at a time per OUT: a second
    ``guard run`` on the same OUT is refused while the first holds its lock (guards.atomic.exclusive).
    """
    run_id = run_id or new_run_id()
    with exclusive(Path(out), what=f"guard run {run_id}"):
        clean_stale_runs(Path(out), keep=run_id)
        return _run_pipeline(source, Path(out), policy=policy, key=key, device=device, run_id=run_id, shards=shards)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return f"uid {os.getuid()}"


def _run_pipeline(source: str | Path, out: Path, *, policy: ReleasePolicy, key: PseudonymKey, device: Device,
                  run_id: str | None, shards: int) -> PipelineResult:
    checks = enabled_checks(policy)
    total = 7 + len(checks)

    def say(n: int, name: str, outcome: object) -> None:
        logger.info("step %d/%d %s: %s", n, total, name, json.dumps(outcome, default=str))

    run = begin(source, Path(out), run_id, policy=policy, key=key, device=device)
    say(1, "ingest", {"attempt": run.attempt, **run.require_snapshot().counts})
    say(2, "deid", step_deid(run, key=key, shards=shards))
    say(3, "protect", step_protect(run, key=key))
    say(4, "cohort", step_cohort(run, key=key))
    say(5, "remediate", step_remediate(run))
    for n, check_id in enumerate(checks, start=6):
        try:
            say(n, f"check {check_id}", run_check(run, check_id))
        except GuardError:
            raise
        except Exception as e:  # a crashed check is "not run" for the gate; the others still run
            logger.error("check %s crashed (%s: %s); the gate reads it as not run", check_id, type(e).__name__, e)
    gate = step_gate(run)
    say(total - 1, "gate", gate)
    if gate["passed"]:  # on the command line, the user who runs guard run is the one who signs off
        approvals.record(run, approvals.Approval(decision="approved", by=_os_user(), at=approvals.now(),
                                                 comment="", via="guard run on the command line"))
    published = step_publish(run, key=key)
    say(total, "publish", published)
    release = Path(published["release"]) if published["release"] else None
    return PipelineResult(passed=gate["passed"], run=run, release=release, counts=input_counts(run),
                          already_published=published["already"])


