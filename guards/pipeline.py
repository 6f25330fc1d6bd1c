"""The release pipeline, step by step, in-process (used by the CLI, the DAG and the tests).

ingest -> deid -> protect -> cohort -> checks -> gate + report -> stage -> publish (ARCHITECTURE.md, Data flow).
Every step reads and writes under one run folder (:class:`RunPaths`); each is idempotent: re-running it replaces
its own outputs and gives the same result for the same input, key and seed. The Airflow DAG calls the same
step functions, one task each; ``run_pipeline`` calls them in order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from guards.atomic import save_dataset
from guards.checks.base import CheckResult
from guards.errors import InputError
from guards.keys import PseudonymKey
from guards.manifest import CROSSWALK_SCHEMA, read_table, status_counts, to_table, write_table
from guards.policy import ReleasePolicy, load_policy

logger = logging.getLogger(__name__)

CHECK_IDS: tuple[str, ...] = ("representation", "reid", "phi", "membership", "unlearnability", "attribute")


@dataclass(frozen=True)
class RunPaths:
    """The folders of one run under ``OUT/runs/<run_id>/``, the private side and the releases root."""

    out: Path
    run_id: str
    under_test: Path | None = None  # `guard check`: an existing release tree checked in place of the run's own

    @property
    def run(self) -> Path:
        return self.out / "runs" / self.run_id

    @property
    def ingest(self) -> Path:
        return self.run / "ingest"

    @property
    def deid(self) -> Path:
        return self.run / "deid"

    @property
    def protect(self) -> Path:
        return self.run / "protect"

    @property
    def cohort(self) -> Path:
        return self.run / "cohort"

    @property
    def checks(self) -> Path:
        return self.run / "checks"

    @property
    def report(self) -> Path:
        return self.run / "report"

    @property
    def staging(self) -> Path:
        return self.run / "staging"

    @property
    def private(self) -> Path:
        return self.out / "private"

    @property
    def releases(self) -> Path:
        return self.out / "releases"

    def release_tree(self, policy: ReleasePolicy) -> Path:
        """The tree that is released (and checked): the release under test when one was given, else the protected
        tree, or the de-identified one when protection is off. The de-identified tree stays the clean reference."""
        if self.under_test is not None:
            return self.under_test
        return self.protect if policy.protect.enabled else self.deid


def safe_run_id(run_id: str) -> str:
    """A folder name from an Airflow run id (``scheduled__2026-11-23T02:00:00+00:00`` -> safe characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_") or "run"


def policy_for_run(policy_file: str | Path | None, params: dict[str, Any]) -> ReleasePolicy:
    """The policy of one run: the file (or defaults), then the steward's form overrides and waivers."""
    overrides: dict[str, Any] = {}
    for param, dotted in (("epsilon", "protect.epsilon"), ("reid_max_risk", "reid.max_risk"), ("reid_k", "reid.k")):
        if params.get(param) is not None:
            overrides[dotted] = params[param]
    policy = load_policy(policy_file)
    waivers = [dict(w) for w in params.get("waivers") or []]
    if waivers:
        overrides["gate.waivers"] = list(policy.to_dict()["gate"]["waivers"]) + waivers
    return policy.with_overrides(overrides) if overrides else policy


def new_run_id() -> str:
    return "run-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def read_labels(path: Path) -> dict[str, int]:
    """``StudyInstanceUID,label`` rows (original UIDs, private side). A missing file means no labels."""
    if not path.is_file():
        logger.warning("no labels table at %s: protection will use pseudo-labels", path)
        return {}
    labels: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"StudyInstanceUID", "label"} <= set(reader.fieldnames):
            raise InputError(f"labels table {path} needs the columns StudyInstanceUID,label; got {reader.fieldnames}")
        for n, row in enumerate(reader, start=2):
            try:
                labels[row["StudyInstanceUID"].strip()] = int(row["label"])
            except ValueError as e:
                raise InputError(f"labels table {path} line {n}: label {row['label']!r} is not an integer") from e
    return labels


def step_ingest(source: str | Path, paths: RunPaths, *, policy: ReleasePolicy) -> dict[str, Any]:
    """Index every source file into ``run/ingest/index.parquet`` (quarantine with reasons; nothing dropped)."""
    from guards.ingest import ingest

    result = ingest(source, out_dir=paths.ingest, policy=policy.ingest)
    (paths.ingest / "source_root.txt").write_text(str(result.root), encoding="utf-8")
    return {"counts": dict(result.counts), "index": str(result.index_path)}


def _shard_of(patient_id: str, shards: int) -> int:
    """A patient's shard: stable across runs and machines, so a patient's studies stay together."""
    return int.from_bytes(hashlib.sha256(patient_id.encode("utf-8")).digest()[:8], "big") % shards


def plan_shards(paths: RunPaths, *, shards: int) -> list[int]:
    """Split the indexed instances into at most ``shards`` groups of patients; returns the non-empty shard ids.

    Rows ingest did not index (quarantined, excluded) are not de-identified: :func:`merge_deid` carries them.
    """
    if shards < 1:
        raise InputError(f"shards must be at least 1, got {shards}")
    index = read_table(paths.ingest / "index.parquet")
    rows = [r for r in index.to_pylist() if r["status"] == "indexed"]
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_shard_of(r.get("PatientID") or "", shards), []).append(r)
    shard_dir = paths.ingest / "shards"
    for stale in (shard_dir, paths.deid):  # a fresh plan starts de-identification afresh
        if stale.exists():
            shutil.rmtree(stale)
    for shard, members in groups.items():
        write_table(to_table(members), shard_dir / f"{shard:04d}.parquet")
    logger.info("planned %d shard(s) over %d instances", len(groups), len(rows))
    return sorted(groups)


def step_deid_shard(
    source: str | Path, paths: RunPaths, shard: int, *, policy: ReleasePolicy, key: PseudonymKey
) -> dict[str, Any]:
    """De-identify one shard into ``run/deid`` (PS3.15 Annex E); its manifest and crosswalk are its own."""
    from guards.deid.tree import deidentify_index

    root = Path((paths.ingest / "source_root.txt").read_text(encoding="utf-8"))
    rows = read_table(paths.ingest / "shards" / f"{shard:04d}.parquet").to_pylist()
    result = deidentify_index(
        root, rows, paths.deid, policy=policy, key=key,
        crosswalk=paths.private / paths.run_id / f"crosswalk-{shard:04d}.parquet",
        manifest_path=paths.deid / ".shards" / f"{shard:04d}.parquet",
        ocr_cache=paths.private / "ocr-cache" if policy.pixels.reuse else None,
    )
    return {"shard": shard, "counts": dict(result.counts)}


def merge_deid(paths: RunPaths) -> dict[str, Any]:
    """One ``deid/manifest.parquet`` from the shards plus the files ingest did not index, one row per input file.

    A SOP Instance found in two shards (the same instance filed under two patients) is published once; the
    other copy is excluded with a reason. Temporary files of crashed attempts are removed.
    """
    from guards.deid.tree import remove_partial

    remove_partial(paths.deid)
    index = read_table(paths.ingest / "index.parquet").to_pylist()
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
    expected = sum(1 for r in index)
    if len(rows) != expected:
        raise InputError(f"deid accounted for {len(rows)} of {expected} input files: a shard is missing; re-run it")
    table = to_table(rows)
    write_table(table, paths.deid / "manifest.parquet")
    crosswalks = sorted((paths.private / paths.run_id).glob("crosswalk-*.parquet"))
    if crosswalks:
        merged = pa.concat_tables([read_table(c) for c in crosswalks]).to_pylist()
        unique = sorted({(r["kind"], r["original"], r["pseudonym"]) for r in merged})
        write_table(to_table([{"kind": k, "original": o, "pseudonym": p} for k, o, p in unique], CROSSWALK_SCHEMA),
                    paths.private / f"crosswalk-{paths.run_id}.parquet")
        shutil.rmtree(paths.private / paths.run_id)
    counts = status_counts(table)
    counts["seen"] = table.num_rows
    return {"counts": counts, "manifest": str(paths.deid / "manifest.parquet")}


def step_deid(
    source: str | Path, paths: RunPaths, *, policy: ReleasePolicy, key: PseudonymKey, shards: int = 1
) -> dict[str, Any]:
    """ingest -> plan shards -> de-identify each shard -> merge, in-process (the DAG runs shards in parallel)."""
    step_ingest(source, paths, policy=policy)
    for shard in plan_shards(paths, shards=shards):
        step_deid_shard(source, paths, shard, policy=policy, key=key)
    return merge_deid(paths)


def pseudonymous_labels(labels: dict[str, int], key: PseudonymKey, policy: ReleasePolicy) -> dict[str, int]:
    """Labels re-keyed by the pseudonymous StudyInstanceUID that the de-identified files carry."""
    from guards.deid.pseudonyms import pseudo_uid

    if policy.deid.retain_uids:
        return dict(labels)
    return {pseudo_uid(key, uid, root=policy.deid.uid_root): label for uid, label in labels.items()}


def step_protect(
    source: str | Path, paths: RunPaths, *, policy: ReleasePolicy, key: PseudonymKey, device: str = "cpu"
) -> dict[str, Any]:
    """Add SALM noise to the de-identified pixels (skipped, loudly, when the policy turns protection off)."""
    if not policy.protect.enabled:
        logger.warning("protection is OFF by policy: the release carries no unlearnable noise")
        return {"skipped": True}
    from guards.protect import protect_tree

    if paths.protect.exists():
        shutil.rmtree(paths.protect)
    labels = pseudonymous_labels(read_labels(_source_root(source) / policy.ingest.labels), key, policy)
    cache = paths.private / "protect-cache" if policy.protect.reuse else None
    result = protect_tree(paths.deid, paths.protect, policy=policy, labels=labels or None, device=device,
                          reuse=cache)
    summary = {"counts": dict(result.counts), "rounds": result.rounds,
               "surrogate_accuracy": round(result.surrogate_accuracy, 4),
               "seconds": {k: round(v, 1) for k, v in result.timings.items()}}
    (paths.run / "protect.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")  # for the datasheet
    return {"counts": dict(result.counts), "manifest": str(result.manifest_path)}


def _source_root(source: str | Path) -> Path:
    root = Path(str(source).removeprefix("file://"))
    if not root.exists():
        raise InputError(f"source {str(source)!r} does not exist")
    return root


def step_cohort(source: str | Path, paths: RunPaths, *, policy: ReleasePolicy, key: PseudonymKey) -> dict[str, Any]:
    """Build the study table every check reads (one row per study, subgroup columns, label)."""
    from guards.cohort import build_cohort, patients_view

    index = read_table(paths.ingest / "index.parquet")
    deid_manifest = read_table(paths.deid / "manifest.parquet")
    root = _source_root(source)
    labels = read_labels(root / policy.ingest.labels)
    demographics = None
    if policy.cohort.demographics:
        import pyarrow.csv as pacsv

        demographics = pacsv.read_csv(root / policy.cohort.demographics)
    cohort = build_cohort(
        index, deid_manifest=deid_manifest, labels=labels, policy=policy, key=key, demographics=demographics
    )
    write_table(cohort, paths.cohort / "cohort.parquet")
    write_table(patients_view(cohort), paths.cohort / "patients.parquet")
    return {"studies": cohort.num_rows}


def step_remediate(paths: RunPaths, *, policy: ReleasePolicy) -> dict[str, Any]:
    """Re-identification remediation (policy ``reid.remediate``): generalise or suppress quasi-identifiers.

    The released headers are rewritten with the same transforms as the cohort (guards.remediate), suppressed
    studies become ``excluded`` with a reason in the release manifest, and the cost (overall and per subgroup)
    is written to ``cohort/remediation.json`` for the report and the datasheet.
    """
    if not policy.reid.remediate:
        return {"skipped": True}
    from pydicom import dcmread

    from guards.remediate import SUPPRESSION_REASON, remediate, rewrite_dataset

    cohort = read_table(paths.cohort / "cohort.parquet")
    result = remediate(cohort, policy=policy)
    tree = paths.release_tree(policy)
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
        "rewritten_files": rewritten,
        "losses": result.losses,
        "subgroup_losses": result.subgroup_losses,
        "passed": result.passed,
    }
    (paths.cohort / "remediation.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    logger.info("remediation: %d files rewritten, %d studies suppressed", rewritten, len(suppressed))
    return {"rewritten": rewritten, "suppressed": len(suppressed), "passed": result.passed}


def run_check(
    check_id: str, source: str | Path, paths: RunPaths, *, policy: ReleasePolicy, device: str = "cpu"
) -> dict[str, Any]:
    """Run one check and write ``checks/<id>.json``; checks are independent of each other."""
    cohort = read_table(paths.cohort / "cohort.parquet")
    tree = paths.release_tree(policy)
    result: CheckResult
    if check_id == "representation":
        from guards.checks import representation

        index = read_table(paths.ingest / "index.parquet")
        result = representation.run(cohort, source_index=index, policy=policy, report_dir=paths.report)
    elif check_id == "reid":
        from guards.checks import reid

        result = reid.run(cohort, policy=policy)
    elif check_id == "phi":
        from guards.checks import phi

        result = phi.run(tree, source_dir=_source_root(source), policy=policy)
    elif check_id == "membership":
        from guards.checks import membership

        result = membership.run(tree, source_dir=paths.deid, cohort=cohort, policy=policy, device=device)
    elif check_id == "unlearnability":
        from guards.checks import unlearnability

        result = unlearnability.run(tree, source_dir=paths.deid, cohort=cohort, policy=policy, device=device)
    elif check_id == "attribute":
        from guards.checks import attribute

        result = attribute.run(tree, cohort=cohort, policy=policy)
    else:
        raise InputError(f"unknown check {check_id!r}; known checks: {list(CHECK_IDS)}")
    result.write(paths.checks / f"{check_id}.json")
    return {"id": check_id, "status": result.status}


def enabled_checks(policy: ReleasePolicy) -> tuple[str, ...]:
    """Checks the policy asks for (blocking or advisory), in a stable order."""
    wanted = set(policy.gate.blocking) | set(policy.gate.advisory)
    return tuple(c for c in CHECK_IDS if c in wanted)


def step_gate(paths: RunPaths, *, policy: ReleasePolicy) -> dict[str, Any]:
    """Turn the check results into a GateDecision and write the report (index.html, gate.json)."""
    from guards.gate import decide
    from guards.report import write_report

    results = [CheckResult.read(p) for p in sorted(paths.checks.glob("*.json"))]
    decision = decide(results, policy=policy)
    context: dict[str, Any] = {"run_id": paths.run_id, "counts": input_counts(paths, policy)}
    remediation = paths.cohort / "remediation.json"
    if remediation.is_file():
        context["remediation"] = json.loads(remediation.read_text(encoding="utf-8"))
    write_report(decision, results, paths.report, policy=policy, context=context)
    return {"passed": decision.passed, "report": str(paths.report / "index.html"), "reasons": list(decision.reasons)}


def input_counts(paths: RunPaths, policy: ReleasePolicy) -> dict[str, int]:
    """Every input file's fate, from the last manifest of the run: seen = published + quarantined + excluded."""
    manifest = paths.release_tree(policy) / "manifest.parquet"
    if not manifest.is_file():
        manifest = paths.deid / "manifest.parquet"
    counts = status_counts(read_table(manifest))
    counts["seen"] = sum(counts[s] for s in ("indexed", "published", "quarantined", "excluded"))
    return counts


def datasheet(paths: RunPaths, *, policy: ReleasePolicy, key: PseudonymKey) -> str:
    """The release's datasheet (Markdown): verdict, counts, waivers, seed, policy."""
    gate = json.loads((paths.report / "gate.json").read_text(encoding="utf-8"))
    counts = input_counts(paths, policy)
    p = policy.protect
    noise = f"SALM, epsilon {p.epsilon:.5f}, rho {p.rho:.3f}, seed {policy.release.seed}" if p.enabled else "OFF"
    lines = [
        f"# Datasheet: {policy.release.name}",
        "",
        f"- Verdict: {'PASSED' if gate['passed'] else 'FAILED'}",
        f"- Run: {paths.run_id}",
        f"- Seed: {policy.release.seed}",
        f"- Pseudonym key fingerprint (not the key): {key.fingerprint()}",
        f"- De-identification: DICOM PS3.15 Annex E Basic Profile; options: {_options(policy)}",
        f"- Unlearnable noise: {noise}",
        *_noise_lines(paths, policy),
        "",
        "## Input files",
        "",
        "| seen | published | quarantined | excluded |",
        "|---|---|---|---|",
        f"| {counts['seen']} | {counts['published']} | {counts['quarantined']} | {counts['excluded']} |",
        "",
        "## Waivers",
        "",
    ]
    waivers = gate.get("waivers", [])
    lines += [f"- `{w['check']}`: {w['reason']}" for w in waivers] or ["None."]
    remediation = paths.cohort / "remediation.json"
    if remediation.is_file():
        r = json.loads(remediation.read_text(encoding="utf-8"))
        lines += ["", "## Re-identification remediation", "",
                  f"- Studies suppressed: {r['suppressed_studies']}; files rewritten: {r['rewritten_files']}"]
        lines += [f"- `{column}`: {level}" for column, level in r["generalisations"].items()]
    lines += ["", "## Policy", "", "```json", json.dumps(policy.to_dict(), indent=2, default=str), "```", ""]
    return "\n".join(lines)


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


def step_publish(paths: RunPaths, *, policy: ReleasePolicy, key: PseudonymKey) -> dict[str, Any]:
    """Stage the release and publish it atomically, only when gate.json says the gate passed."""
    from guards.publish import publish, stage_release

    gate = json.loads((paths.report / "gate.json").read_text(encoding="utf-8"))
    if not gate["passed"]:
        logger.error("gate failed: nothing is published; report: %s", paths.report / "index.html")
        return {"published": False, "report": str(paths.report / "index.html")}
    tree = paths.release_tree(policy)
    stage_release(
        tree=tree,
        manifest=tree / "manifest.parquet",
        report_dir=paths.report,
        staging=paths.staging,
        datasheet=datasheet(paths, policy=policy, key=key),
    )
    target = publish(paths.staging, paths.releases, name=policy.release.name)
    return {"published": True, "release": str(target)}


@dataclass(frozen=True)
class PipelineResult:
    passed: bool
    paths: RunPaths
    release: Path | None
    counts: dict[str, int]

    @property
    def report(self) -> Path:
        return self.paths.report / "index.html"


Step = Callable[[], dict[str, Any]]


def _check_step(check_id: str, source: str | Path, paths: RunPaths, *, policy: ReleasePolicy, device: str) -> Step:
    return lambda: run_check(check_id, source, paths, policy=policy, device=device)


def run_pipeline(
    source: str | Path,
    out: Path,
    *,
    policy: ReleasePolicy,
    key: PseudonymKey,
    device: str = "cpu",
    run_id: str | None = None,
) -> PipelineResult:
    """All steps in order, in-process. Publishes under ``out/releases`` only when the gate passes."""
    paths = RunPaths(out=Path(out), run_id=run_id or new_run_id())
    paths.run.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, Step]] = [
        ("deid", lambda: step_deid(source, paths, policy=policy, key=key)),
        ("protect", lambda: step_protect(source, paths, policy=policy, key=key, device=device)),
        ("cohort", lambda: step_cohort(source, paths, policy=policy, key=key)),
        ("remediate", lambda: step_remediate(paths, policy=policy)),
    ]
    for check_id in enabled_checks(policy):
        steps.append((f"check:{check_id}", _check_step(check_id, source, paths, policy=policy, device=device)))
    steps.append(("gate", lambda: step_gate(paths, policy=policy)))
    outcome: dict[str, Any] = {}
    for n, (name, step) in enumerate(steps, start=1):
        logger.info("step %d/%d: %s", n, len(steps), name)
        outcome = step()
        logger.info("step %s: %s", name, json.dumps(outcome, default=str))
    published = step_publish(paths, policy=policy, key=key)
    release = Path(published["release"]) if published.get("published") else None
    return PipelineResult(
        passed=bool(outcome.get("passed")), paths=paths, release=release, counts=input_counts(paths, policy)
    )
