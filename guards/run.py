"""One persisted Run that every step loads (ARCHITECTURE.md, The Run).

A run is created once, by its first step, and written atomically to ``OUT/runs/<run_id>/run.json``: its id, the
attempt, the frozen effective policy (the file plus the steward's form overrides and waivers), the devices, the
source as named and, once ingest has resolved it, the source :class:`~guards.sources.Snapshot`. Every later
step, in the CLI, a DAG task or a remote worker, calls :meth:`Run.load` instead of reading the policy file or
the source again, so an edit of guard.toml in the middle of a run changes nothing in it.

Attempts. Starting a run id that exists (``guard run --run-id ID`` again, or clearing the whole DAG run, which
re-runs ingest) makes a new attempt of it. Every step writes a record of what it did (``steps/<name>.json``:
attempt, input fingerprint, outcome) and every check result is stamped with the attempt and the fingerprint
(:func:`write_result`). The gate reads only results stamped with the current attempt; anything else is "not
run". A step already done in an earlier attempt with the same inputs is skipped, and says so in its record
(``carried_from``); a step that runs again clears the records of the steps after it ("a task is a transaction").
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import pyarrow as pa

from guards.atomic import private_folder, write_text
from guards.checks.base import CheckResult
from guards.errors import InputError
from guards.manifest import read_table
from guards.policy import ReleasePolicy, policy_from_dict
from guards.sources import Snapshot

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
RUN_FORMAT = 1
Device = Literal["cpu", "cuda"]
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


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
        """``OUT/private/runs/<run_id>/ingest/``: the source snapshot (raw copies of a PACS's studies, the index of
        original headers, quarantine copies, label tables) holds original values, so it lives on the private side
        with the crosswalk and the PACS ledger, never beside the de-identified work of ``runs/<run_id>/``."""
        return self.private / "runs" / self.run_id / "ingest"

    @property
    def deid(self) -> Path:
        return self.run / "deid"

    @property
    def protect(self) -> Path:
        return self.run / "protect"

    @property
    def cohort(self) -> Path:
        """``OUT/private/runs/<run_id>/cohort/``: the study table holds original subgroup values (InstitutionName as
        site, an ethnic group from a private demographics table), so it is private like the ingest snapshot."""
        return self.private / "runs" / self.run_id / "cohort"

    @property
    def checks(self) -> Path:
        return self.run / "checks"

    @property
    def steps(self) -> Path:
        return self.run / "steps"

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
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_")[:200] or "run"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _policy_fingerprint(policy: ReleasePolicy) -> str:
    """The policy's inputs to the work: everything but the waivers, which only the gate reads."""
    data = policy.to_dict()
    data["gate"] = {k: v for k, v in data["gate"].items() if k != "waivers"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Run:
    """One release run: id, attempt, frozen policy, devices and the source snapshot; persisted in run.json."""

    out: Path
    run_id: str
    attempt: int
    policy: ReleasePolicy
    source: str  # as the steward named it, credentials removed
    key_fingerprint: str  # PseudonymKey.fingerprint(): not the key; part of the input fingerprint
    device: Device = "cpu"  # for the steps and checks that need a GPU (protect, membership, unlearnability)
    snapshot: Snapshot | None = None
    under_test: Path | None = None
    started_at: str = field(default_factory=_now)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(out=self.out, run_id=self.run_id, under_test=self.under_test)

    @property
    def release_tree(self) -> Path:
        return self.paths.release_tree(self.policy)

    def require_snapshot(self) -> Snapshot:
        if self.snapshot is None:
            raise InputError(f"run {self.run_id!r} has no source snapshot yet: run its ingest step first")
        return self.snapshot

    def cohort(self) -> pa.Table:
        """The study table every check reads (``cohort/cohort.parquet``)."""
        return read_table(self.paths.cohort / "cohort.parquet")

    def index(self) -> pa.Table:
        """The snapshot's index: one row per source file, original headers (private)."""
        return read_table(self.require_snapshot().index)

    def input_fingerprint(self) -> str:
        """What a step's result depends on: policy (waivers aside), source snapshot, key, release under test."""
        snap = self.require_snapshot()
        parts = [_policy_fingerprint(self.policy), snap.fingerprint, self.key_fingerprint, str(self.under_test or "")]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    # -- persistence -------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        out: Path,
        run_id: str,
        *,
        source: str | Path,
        policy: ReleasePolicy,
        key_fingerprint: str,
        device: Device = "cpu",
        under_test: Path | None = None,
    ) -> Run:
        """Create run ``run_id``, or a new attempt of it when it exists; written before any step runs."""
        if not _RUN_ID.match(run_id):
            raise InputError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (at most 200)")
        if device not in ("cpu", "cuda"):
            raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
        out = Path(out)
        for private in ("runs", "private"):  # the PHI side of OUT: owner only (releases/ is for publication)
            private_folder(out / private)
        attempt = 1
        if (out / "runs" / run_id / RUN_FILE).is_file():
            attempt = cls.load(out, run_id).attempt + 1
        run = cls(out=out, run_id=run_id, attempt=attempt, policy=policy, source=redact_source(str(source)),
                  key_fingerprint=key_fingerprint, device=device, under_test=under_test)
        run.save()
        logger.info("run %s: attempt %d", run_id, attempt)
        return run

    @classmethod
    def load(cls, out: Path, run_id: str) -> Run:
        path = Path(out) / "runs" / run_id / RUN_FILE
        if not path.is_file():
            raise InputError(f"run {run_id!r} does not exist under {out}: start it with its ingest step first")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RUN_FORMAT:
            raise InputError(f"{path} has format {data.get('format')!r}; this Release Guard reads {RUN_FORMAT}")
        return cls(
            out=Path(out),
            run_id=data["run_id"],
            attempt=int(data["attempt"]),
            policy=policy_from_dict(data["policy"], source=str(path)),
            source=data["source"],
            key_fingerprint=data["key_fingerprint"],
            device=data["device"],
            snapshot=Snapshot.from_json(data["snapshot"]) if data.get("snapshot") else None,
            under_test=Path(data["under_test"]) if data.get("under_test") else None,
            started_at=data["started_at"],
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "run_id": self.run_id,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "source": self.source,
            "device": self.device,
            "key_fingerprint": self.key_fingerprint,
            "under_test": str(self.under_test) if self.under_test else None,
            "snapshot": self.snapshot.to_json() if self.snapshot else None,
            "policy": self.policy.to_dict(),
        }

    def save(self) -> None:
        write_text(self.paths.run / RUN_FILE, json.dumps(self.to_json(), indent=2, default=str))

    def with_snapshot(self, snapshot: Snapshot) -> Run:
        run = replace(self, snapshot=snapshot)
        run.save()
        return run


def redact_source(source: str) -> str:
    """A source as recorded: ``scheme://user:password@host`` loses its credentials. In ``dimse://AET@host`` the
    user part is the called AE title, no secret: it stays (unless a password follows it)."""
    if source[:8].lower() == "dimse://":
        return re.sub(r"(://)[^/@]*:[^/@]*@", r"\1***@", source)
    return re.sub(r"(://)[^/@]*@", r"\1***@", source)


# -- step records: what each step did, in which attempt, on which inputs ------------------------------------------

# Steps in order; a step that runs clears the records of the levels after its own (checks share one level).
LEVELS: tuple[str, ...] = ("ingest", "plan_shards", "deid", "merge_deid", "protect", "cohort", "remediate",
                           "check", "gate", "publish")


def _level(step: str) -> int:
    return LEVELS.index(step.split(":", 1)[0])


@dataclass(frozen=True)
class StepRecord:
    step: str
    attempt: int
    fingerprint: str
    outcome: dict[str, Any]
    finished_at: str
    carried_from: int | None = None


def read_record(run: Run, step: str) -> StepRecord | None:
    path = run.paths.steps / f"{step.replace(':', '-')}.json"
    if not path.is_file():
        return None
    try:
        return StepRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        logger.warning("step record %s is unreadable: the step runs again", path.name)
        return None


def _write_record(run: Run, record: StepRecord) -> None:
    path = run.paths.steps / f"{record.step.replace(':', '-')}.json"
    write_text(path, json.dumps(record.__dict__, indent=2, default=str))


def record(run: Run, name: str, outcome: Mapping[str, Any]) -> None:
    """Record that step ``name`` ran in this attempt on the run's current inputs (for steps that always run)."""
    _write_record(run, StepRecord(step=name, attempt=run.attempt, fingerprint=run.input_fingerprint(),
                                  outcome=dict(outcome), finished_at=_now()))


def _clear_after(run: Run, step: str) -> None:
    level = _level(step)
    if not run.paths.steps.is_dir():
        return
    for path in run.paths.steps.glob("*.json"):
        prefix = path.stem.split("-", 1)[0]  # "deid-0003", "check-phi", "merge_deid"
        if prefix in LEVELS and LEVELS.index(prefix) > level:
            path.unlink(missing_ok=True)


def carried(run: Run, step: str) -> StepRecord | None:
    """The record of ``step`` from an earlier attempt with the same inputs, if the step can be skipped."""
    record = read_record(run, step)
    if record is None or record.attempt >= run.attempt or record.fingerprint != run.input_fingerprint():
        return None
    return record


OutcomeT = TypeVar("OutcomeT", bound=Mapping[str, Any])


def step(
    run: Run, name: str, work: Callable[[], OutcomeT], *, carry: Callable[[StepRecord], bool] | None = None
) -> OutcomeT:
    """Run one step of ``run`` as a transaction: skip it when an earlier attempt did it on the same inputs
    (and ``carry`` agrees its outputs are intact), else clear the later steps' records, do it, record it."""
    previous = carried(run, name)
    if previous is not None and (carry is None or carry(previous)):
        logger.info("step %s: done in attempt %d with unchanged inputs; skipped", name,
                    previous.carried_from or previous.attempt)
        _write_record(run, replace(previous, attempt=run.attempt,
                                   carried_from=previous.carried_from or previous.attempt))
        return previous.outcome  # type: ignore[return-value]
    (run.paths.steps / f"{name.replace(':', '-')}.json").unlink(missing_ok=True)
    _clear_after(run, name)
    failure = _step_error_path(run, name)
    failure.unlink(missing_ok=True)
    try:
        outcome = work()
    except Exception as e:
        if not name.startswith("check:"):  # a crashed check has its own error file (write_error)
            write_text(failure, json.dumps({"step": name, "attempt": run.attempt,
                                            "error": f"{type(e).__name__}: {e}"[:500]}))
        raise
    record(run, name, outcome)
    return outcome


def _step_error_path(run: Run, name: str) -> Path:
    return run.paths.run / "step-errors" / f"{name.replace(':', '-')}.json"


def step_errors(run: Run) -> list[dict[str, Any]]:
    """The steps that failed in this attempt, in pipeline order: ``step``, ``attempt``, ``error`` (type: message).

    So that a failure of an earlier step (a bad label, a refused parameter) reaches the gate report, not only a
    task log."""
    folder = run.paths.run / "step-errors"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    found = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    mine = [e for e in found if e.get("attempt") == run.attempt]
    return sorted(mine, key=lambda e: _level(str(e["step"])) if str(e["step"]).split(":")[0] in LEVELS else 99)


# -- check results stamped with the attempt ------------------------------------------------------------------------

@dataclass(frozen=True)
class Stamp:
    """Which run, attempt and inputs a check result belongs to."""

    run_id: str
    attempt: int
    fingerprint: str
    carried_from: int | None = None


def result_path(run: Run, check_id: str) -> Path:
    return run.paths.checks / f"{check_id}.json"


def error_path(run: Run, check_id: str) -> Path:
    return run.paths.checks / f"{check_id}.error.json"


def write_result(run: Run, result: CheckResult, *, carried_from: int | None = None) -> None:
    stamp = Stamp(run_id=run.run_id, attempt=run.attempt, fingerprint=run.input_fingerprint(),
                  carried_from=carried_from)
    write_text(result_path(run, result.id), json.dumps({**result.to_dict(), "stamp": stamp.__dict__}, indent=2,
                                                       default=str))


def write_error(run: Run, check_id: str, error: BaseException) -> None:
    """A crashed check: the exception's type and message (never a traceback of values) for the report."""
    text = f"{type(error).__name__}: {error}"[:500]
    write_text(error_path(run, check_id), json.dumps({"check": check_id, "attempt": run.attempt, "error": text}))


def read_stamped(path: Path) -> tuple[CheckResult, Stamp | None]:
    data = json.loads(path.read_text(encoding="utf-8"))
    stamp = data.get("stamp")
    return CheckResult.from_dict(data), Stamp(**stamp) if stamp else None


def current_results(run: Run, check_ids: tuple[str, ...]) -> tuple[list[CheckResult], dict[str, str]]:
    """The results of this attempt, and for every other check why it has none ("not run" for the gate)."""
    results: list[CheckResult] = []
    not_run: dict[str, str] = {}
    fingerprint = run.input_fingerprint()
    for check_id in check_ids:
        path, err = result_path(run, check_id), error_path(run, check_id)
        if err.is_file():
            e = json.loads(err.read_text(encoding="utf-8"))
            if e.get("attempt") == run.attempt:
                not_run[check_id] = f"crashed in attempt {run.attempt}: {e.get('error')}"
                continue
        if not path.is_file():
            not_run[check_id] = "missing: no result was written in this attempt"
            continue
        try:
            result, stamp = read_stamped(path)
        except (ValueError, TypeError, KeyError) as e:
            not_run[check_id] = f"unreadable result file ({type(e).__name__})"
            continue
        if stamp is None or stamp.run_id != run.run_id or stamp.attempt != run.attempt:
            was = f"attempt {stamp.attempt} of run {stamp.run_id}" if stamp else "an unstamped file"
            not_run[check_id] = f"stale: the result is from {was}, this is attempt {run.attempt}"
        elif stamp.fingerprint != fingerprint:
            not_run[check_id] = "stale: the result was measured on other inputs (policy, source or key changed)"
        elif result.id != check_id:
            not_run[check_id] = f"the result file holds check {result.id!r}"
        else:
            results.append(result)
    return results, not_run
