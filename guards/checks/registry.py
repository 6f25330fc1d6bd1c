"""The one registry of the gate's checks (ARCHITECTURE.md, Checks).

Every check implements one contract, :class:`Check`: an ``id``, what it ``needs`` (a GPU, OCR, the private
original source, images) and ``run(run) -> CheckResult``, where ``run`` is the persisted :class:`guards.run.Run`
(policy, snapshot, trees, device). The built-in checks are listed once in :data:`BUILTIN`; a check from another
package registers itself with one entry point in the ``release_guard.checks`` group
(``my_check = my_package.my_module:CHECK``). Reading the registry imports neither torch nor any check module
of its own, so the DAG reads it at parse time and maps one task over the checks, sending those that need a GPU
to the GPU queue.

A new check is one module (its ``CHECK = Check(...)``, importing heavy packages inside its function) plus one
registry line: an entry of :data:`BUILTIN`, or an entry point.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Literal

from guards.errors import PolicyError

if TYPE_CHECKING:
    from guards.checks.base import CheckResult
    from guards.run import Run

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "release_guard.checks"
Need = Literal["gpu", "ocr", "original", "images"]
_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass(frozen=True)
class Check:
    """One check of the gate. ``run`` is the function itself, or ``"module:function"`` imported when it runs."""

    id: str
    run: str | Callable[[Run], CheckResult]
    needs: frozenset[Need] = frozenset()
    title: str = ""  # a few words for the report and the DAG's task names

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise PolicyError(f"check id {self.id!r} must be lower-case letters, digits and '_' (at most 40)")
        unknown = set(self.needs) - {"gpu", "ocr", "original", "images"}
        if unknown:
            raise PolicyError(f"check {self.id!r}: unknown needs {sorted(unknown)}")

    def execute(self, run: Run) -> CheckResult:
        fn = self.run
        if isinstance(fn, str):
            module, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(module), name)
        logger.info("check %s: started", self.id)
        start = time.monotonic()
        result = fn(run)
        logger.info("check %s: %s in %.1fs", self.id, result.status, time.monotonic() - start)
        if result.id != self.id:
            raise ValueError(f"check {self.id!r} returned a result for {result.id!r}")
        return result


BUILTIN: tuple[Check, ...] = (
    Check("representation", "guards.checks.representation:check", title="subgroup representation (GX)"),
    Check("reid", "guards.checks.reid:check", title="re-identification risk"),
    Check("phi", "guards.checks.phi:check", frozenset({"ocr", "original"}), title="residual PHI"),
    Check("membership", "guards.checks.membership:check", frozenset({"gpu", "images"}),
          title="membership inference"),
    Check("unlearnability", "guards.checks.unlearnability:check", frozenset({"gpu", "images"}),
          title="unlearnability"),
    Check("attribute", "guards.checks.attribute:check", frozenset({"images"}), title="attribute inference"),
    Check("inversion", "guards.checks.inversion:check", frozenset({"gpu", "images"}),
          title="model inversion (reconstruction)"),
    Check("dp_audit", "guards.checks.dp_audit:check", frozenset({"gpu", "images"}),
          title="DP-SGD audit proxy (optional)"),
)


@cache
def _from_entry_points() -> tuple[Check, ...]:
    found: list[Check] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        check = ep.load()
        if not isinstance(check, Check):
            raise PolicyError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) is not a guards Check")
        if check.id != ep.name:
            raise PolicyError(f"entry point {ep.name!r} registers check {check.id!r}: the names must agree")
        found.append(check)
    return tuple(found)


def registered() -> tuple[Check, ...]:
    """Every check, built-in first, then the entry points in name order; ids are unique."""
    checks = BUILTIN + _from_entry_points()
    ids = [c.id for c in checks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise PolicyError(f"check id(s) {duplicates} are registered twice")
    return checks


def get(check_id: str) -> Check:
    for c in registered():
        if c.id == check_id:
            return c
    raise PolicyError(f"unknown check {check_id!r}; registered checks: {[c.id for c in registered()]}")
