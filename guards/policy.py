"""ReleasePolicy: every option and threshold of a release, one typed object read from a TOML file.

Each section of ``guard.toml`` maps to one frozen dataclass below; ``guard.toml`` at the repository root
documents every key. A policy object is valid once constructed, however it was made (``ProtectSection(...)``,
:func:`load_policy`, :func:`policy_from_dict`, :meth:`ReleasePolicy.with_overrides`, ``dataclasses.replace``):
each section's ``__post_init__`` checks the type of every field (its annotation: ``bool``, ``int``, ``float``,
``str``, a ``Literal`` of allowed values, a tuple), its range (the field's ``metadata["range"]``, the one table
of ranges) and the section's cross-field rules. Unknown keys, wrong types and out-of-range values raise
:class:`PolicyError` naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from guards.errors import PolicyError

RetainLongitudinal = Literal["off", "full", "modified"]
PixelMode = Literal["clean", "quarantine", "keep"]
PixelEncoding = Literal["jpeg-ls", "jpeg2000", "rle", "native"]  # guards.codec.ENCODINGS
MembershipAttack = Literal["lira", "rmia"]
Surrogate = Literal["cnn", "resnet18"]  # guards.protect.surrogate
NoiseInit = Literal["uniform", "class_texture", "class_frequency"]  # guards.protect.salm.INITS
Saliency = Literal["gradient", "flat"]
NoiseObjective = Literal["min-min", "adversarial"]  # guards.protect.salm.OBJECTIVES
VictimRecipe = Literal["plain", "augmented", "jpeg75", "jpeg10", "blur", "mlp"]  # guards.checks.victims.RECIPES

Number = int | float
_UID_ROOT_MAX = 53  # leaves room for a pseudonym within 64 characters (guards.deid.pseudonyms)
_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def _ranged(default: Any, lo: Number | None, hi: Number | None = None) -> Any:
    """A field with a default and its allowed range, inclusive (``None``: no bound on that side)."""
    return field(default=default, metadata={"range": (lo, hi)})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint``; ints become floats, lists tuples, tables dataclasses."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise PolicyError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PolicyError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is Literal:
        allowed = typing.get_args(hint)
        if not isinstance(value, str) or value not in allowed:
            raise PolicyError(f"{where}: {value!r} is not allowed; use one of {list(allowed)}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise PolicyError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise PolicyError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise PolicyError(f"{where}: expected a table, got {value!r}")
        return _build(hint, value, where)
    if isinstance(hint, types.UnionType):
        raise PolicyError(f"{where}: unsupported union type in policy schema")
    raise PolicyError(f"{where}: unsupported policy type {hint!r}")


def _check_range(value: Any, bounds: tuple[Number | None, Number | None], where: str) -> None:
    lo, hi = bounds
    for i, v in enumerate(value) if isinstance(value, tuple) else ((None, value),):
        key = where if i is None else f"{where}[{i}]"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            allowed = f"{lo} to {hi}" if lo is not None and hi is not None else (
                f"at least {lo}" if lo is not None else f"at most {hi}")
            raise PolicyError(f"{key}: {v!r} is out of range; allowed {allowed}")


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved annotations of a section (``from __future__ import annotations`` makes them strings)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _names(value: tuple[str, ...], where: str) -> None:
    """Every entry a non-empty string, none repeated."""
    for i, v in enumerate(value):
        if not v.strip():
            raise PolicyError(f"{where}[{i}]: an empty name is not allowed")
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise PolicyError(f"{where}: {repeated} listed more than once")


class _Section:
    """Validation shared by the sections: types from the annotations, ranges from the fields' metadata, then
    the section's own cross-field rules (:meth:`_check`). ``KEY`` is the section's name in ``guard.toml``."""

    KEY: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            where = f"{self.KEY}.{f.name}"
            value = _coerce(getattr(self, f.name), hints[f.name], where)
            if "range" in f.metadata:
                _check_range(value, f.metadata["range"], where)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        """Cross-field rules of the section (none by default)."""


@dataclass(frozen=True)
class ReleaseSection(_Section):
    """Identity of the release."""

    KEY: ClassVar[str] = "release"

    name: str = "sample-release"
    # recorded in the manifest; every random step derives its generator from it
    seed: int = _ranged(20260101, 0, 2**32 - 1)

    def _check(self) -> None:
        if not self.name.strip():
            raise PolicyError("release.name: an empty name is not allowed; it names the release folder")


@dataclass(frozen=True)
class IngestSection(_Section):
    """How a source tree is walked (guards.ingest)."""

    KEY: ClassVar[str] = "ingest"

    labels: str = "labels.csv"  # labels table (StudyInstanceUID,label), relative to the source root
    sidecars: tuple[str, ...] = ("labels.csv", "demographics.csv", "README.txt")  # non-DICOM files expected
    follow_symlinks: bool = False
    max_file_bytes: int = _ranged(2_000_000_000, 1, 10**15)


@dataclass(frozen=True)
class DeidSection(_Section):
    """PS3.15 Annex E Basic Application Level Confidentiality Profile and its options (Table E.1-1)."""

    KEY: ClassVar[str] = "deid"

    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_longitudinal: RetainLongitudinal = "modified"
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    clean_pixel_data: bool = True
    date_shift_days: tuple[int, int] = _ranged((-730, -1), -36_500, 36_500)  # per-patient offset range, inclusive
    uid_root: str = "2.25"

    def _check(self) -> None:
        lo, hi = self.date_shift_days
        if lo > hi:
            raise PolicyError(f"deid.date_shift_days: {list(self.date_shift_days)} must be [low, high]")
        root = self.uid_root.rstrip(".")
        if not root or any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in root.split(".")):
            raise PolicyError(f"deid.uid_root: {self.uid_root!r} is not a valid UID root; use digits and dots,"
                              " no leading zeros, e.g. '2.25'")
        if len(root) > _UID_ROOT_MAX:
            raise PolicyError(f"deid.uid_root: {self.uid_root!r} is too long to leave room for a pseudonym;"
                              f" use at most {_UID_ROOT_MAX} characters")


@dataclass(frozen=True)
class PixelsSection(_Section):
    """Burned-in annotation handling (PS3.15 E.3.1 Clean Pixel Data Option)."""

    KEY: ClassVar[str] = "pixels"

    mode: PixelMode = "clean"
    risky_modalities: tuple[str, ...] = ("US", "SC", "OT", "XA", "ES", "XC", "GM", "SM", "DOC")
    ocr_all: bool = True  # OCR every instance, not only the risky ones
    padding: int = _ranged(4, 0, 4096)  # pixels added around each detected text box
    min_confidence: float = _ranged(30.0, 0.0, 100.0)  # tesseract word confidence (0-100) to count as text
    language: str = "eng"
    verify_passes: int = _ranged(2, 0, 100)  # at most this many re-reads of cleaned frames, hiding any text still found
    reuse: bool = True  # nightly runs: replay OCR decisions for frames read before (OUT/private/ocr-cache)
    encode: PixelEncoding = "jpeg-ls"  # lossless syntax of changed pixels of compressed input (guards.codec)

    def _check(self) -> None:
        if not self.language.strip():
            raise PolicyError("pixels.language: an empty tesseract language is not allowed; e.g. 'eng'")


@dataclass(frozen=True)
class ProtectSection(_Section):
    """Sparsity-aware unlearnable noise (SALM, arXiv 2403.10573)."""

    KEY: ClassVar[str] = "protect"

    enabled: bool = True
    epsilon: float = _ranged(8 / 255, 0.0, 1.0)  # L-infinity budget as a fraction of the displayed range
    min_psnr_db: float = _ranged(38.0, 0.0, 200.0)  # every protected file's PSNR in its display window, at least
    rho: float = _ranged(1.0, 0.0, 1.0)  # fraction of foreground pixels the noise may touch
    step_size: float = _ranged(1 / 255, 0.0, 1.0)
    steps: int = _ranged(60, 0, 10_000)
    stop_accuracy: float = _ranged(0.99, 0.0, 1.0)  # stop when the surrogate's accuracy on the noised data reaches this
    image_size: int = _ranged(64, 8, 4096)
    batch_size: int = _ranged(0, 0, 1_000_000)  # 0: chosen from memory
    max_rounds: int = _ranged(5, 1, 10_000)  # rounds of (train surrogate, update noise) before giving up
    train_steps: int = _ranged(40, 0, 1_000_000)  # surrogate batches (of 64 images) per round
    warmup_epochs: int = _ranged(10, 0, 10_000)  # surrogate epochs on clean images before the noise rounds
    warmup_min_steps: int = _ranged(150, 0, 1_000_000)  # ... and at least this many surrogate batches
    surrogate: Surrogate = "cnn"  # guards.protect.surrogate
    surrogate_width: int = _ranged(32, 8, 1024)
    augment: bool = True  # optimise through flip + shift, as a victim is likely to train
    saturate: bool = False  # every masked pixel gets the full budget (eps * sign) at the end
    eot: bool = True  # optimise through what an attacker does: JPEG 50-95, blur, jitter (guards.protect.eot)
    classwise: bool = False  # one noise part per class plus one per image (guards.protect.salm)
    objective: NoiseObjective = "adversarial"  # "min-min" (error-minimizing) or "adversarial" (class-targeted)
    defences: tuple[str, ...] = ("blur", "jpeg75")  # adversarial: surrogates also trained on such images
    pseudo_label_clusters: int = _ranged(4, 1, 1024)  # k-means clusters for images without a label
    init: NoiseInit = "class_frequency"  # noise start (guards.protect.salm)
    saliency: Saliency = "gradient"  # mask rule: "gradient" (surrogate input gradient) or "flat"
    reuse: bool = True  # nightly runs: keep images protected before (OUT/private/protect-cache), noise only new ones

    def _check(self) -> None:
        unknown = sorted(set(self.defences) - {"blur", "jpeg75"})  # guards.protect.salm.DEFENCES
        if unknown:
            raise PolicyError(f"protect.defences: {unknown} unknown; use any of ['blur', 'jpeg75'] or []")
        if self.defences and self.objective != "adversarial":
            raise PolicyError("protect.defences needs protect.objective = \"adversarial\"; set defences = [] for"
                              " \"min-min\"")
        if self.enabled and self.epsilon <= 0:
            raise PolicyError(f"protect.epsilon: {self.epsilon!r} gives no noise; it must be above 0 (e.g. 8/255 ="
                              " 0.0314), or set protect.enabled = false")


@dataclass(frozen=True)
class CohortSection(_Section):
    """Subgroup columns of the study table (guards.cohort)."""

    KEY: ClassVar[str] = "cohort"

    subgroups: tuple[str, ...] = ("sex", "age_band", "ethnic_group")
    age_bands: tuple[int, ...] = _ranged((0, 18, 40, 65, 90), 0, 200)
    demographics: str = ""  # optional private table (PatientID, EthnicGroup, ...), relative to the source

    def _check(self) -> None:
        _names(self.subgroups, "cohort.subgroups")
        bands = list(self.age_bands)
        if not bands or bands != sorted(set(bands)):
            raise PolicyError(f"cohort.age_bands: {bands} must be increasing, non-negative lower bounds,"
                              " e.g. [0, 18, 40, 65, 90]")


@dataclass(frozen=True)
class RepresentationSection(_Section):
    """Subgroup representation suite (Great Expectations)."""

    KEY: ClassVar[str] = "representation"

    min_count: int = _ranged(5, 0)
    min_share: float = _ranged(0.02, 0.0, 1.0)
    required: tuple[str, ...] = ()  # "column=value" subgroups that must be present
    kl_max: float = _ranged(0.25, 0.0)
    reference: str = ""  # population table (column,value,share) or a previous release's cohort
    prevalence_min: float = _ranged(0.02, 0.0, 1.0)
    prevalence_max: float = _ranged(0.98, 0.0, 1.0)
    exclusion_ratio_max: float = _ranged(3.0, 0.0)  # a subgroup's exclusion rate over the overall rate

    def _check(self) -> None:
        if self.prevalence_min > self.prevalence_max:
            raise PolicyError(f"representation.prevalence_min: {self.prevalence_min!r} must not exceed"
                              f" prevalence_max ({self.prevalence_max!r})")


@dataclass(frozen=True)
class ReidSection(_Section):
    """Re-identification risk over quasi-identifiers (k-anonymity, prosecutor / journalist risk)."""

    KEY: ClassVar[str] = "reid"
    # the pseudonyms every cohort record carries: unique per patient / study, never a quasi-identifier
    NOT_QUASI_IDENTIFIERS: ClassVar[tuple[str, ...]] = ("PatientID", "StudyInstanceUID")

    quasi_identifiers: tuple[str, ...] = (
        "PatientSex",
        "PatientAge",
        "EthnicGroup",
        "PatientSize",
        "PatientWeight",
        "StudyYear",
        "Manufacturer",
        "ManufacturerModelName",
        "InstitutionName",
        "BodyPartExamined",
    )
    k: int = _ranged(11, 1, 10**9)
    max_risk: float = _ranged(0.09, 0.0, 1.0)  # EMA Policy 0070
    remediate: bool = True  # on by default: a release that fails k-anonymity is generalised, with the cost reported
    population: str = ""
    max_suppression: float = _ranged(0.05, 0.0, 1.0)  # share of included records remediation may suppress
    max_subgroup_suppression: float = _ranged(0.25, 0.0, 1.0)  # share of any one subgroup's records it may suppress

    def _check(self) -> None:
        _names(self.quasi_identifiers, "reid.quasi_identifiers")
        for i, q in enumerate(self.quasi_identifiers):
            if not _KEYWORD.match(q):
                raise PolicyError(f"reid.quasi_identifiers[{i}]: {q!r} is not a DICOM keyword (or StudyYear);"
                                  " e.g. 'StationName'")
            if q in self.NOT_QUASI_IDENTIFIERS:
                raise PolicyError(f"reid.quasi_identifiers[{i}]: {q!r} is a pseudonym every record carries, not a"
                                  " quasi-identifier")


@dataclass(frozen=True)
class MembershipSection(_Section):
    """Membership inference (LiRA arXiv 2112.03570, RMIA arXiv 2312.03262), per subgroup."""

    KEY: ClassVar[str] = "membership"

    attack: MembershipAttack = "rmia"
    reference_models: int = _ranged(4, 1, 64)
    epochs: int = _ranged(15, 1, 10_000)
    tpr_at_1pct_fpr_max: float = _ranged(0.10, 0.0, 1.0)
    auc_max: float = _ranged(0.65, 0.0, 1.0)
    bonferroni_alpha: float = _ranged(0.05, 0.0, 1.0)
    image_size: int = _ranged(64, 8, 1024)  # images are resized to image_size x image_size for the models
    bootstrap: int = _ranged(200, 0, 10_000)  # bootstrap resamples (of patients) for the confidence intervals
    min_top_k: int = _ranged(10, 1, 1_000_000)  # the over-representation test looks at max(1% of members, min_top_k)


@dataclass(frozen=True)
class UnlearnabilitySection(_Section):
    """A victim trained on the release must stay near chance on clean held-out data."""

    KEY: ClassVar[str] = "unlearnability"

    margin: float = _ranged(0.10, 0.0, 1.0)  # balanced accuracy must be within this of chance
    epochs: int = _ranged(15, 1, 10_000)
    image_size: int = _ranged(64, 8, 1024)
    # The attackers (guards.checks.victims): the check's figure is the worst case over them.
    victims: tuple[VictimRecipe, ...] = ("plain", "augmented", "jpeg75", "blur", "mlp")

    def _check(self) -> None:
        if not self.victims:
            raise PolicyError("unlearnability.victims: empty; name at least one attacker, e.g. [\"plain\"]")
        if len(set(self.victims)) != len(self.victims):
            raise PolicyError(f"unlearnability.victims: {list(self.victims)} names an attacker twice")


@dataclass(frozen=True)
class AttributeSection(_Section):
    """Attribute inference of withheld attributes (advisory by default)."""

    KEY: ClassVar[str] = "attribute"

    targets: tuple[str, ...] = ("ethnic_group", "sex")
    auc_margin: float = _ranged(0.10, 0.0, 0.5)
    image_size: int = _ranged(16, 4, 1024)  # released images are downsampled to this size and used as features
    folds: int = _ranged(5, 2, 100)  # patient-level cross-validation folds

    def _check(self) -> None:
        _names(self.targets, "attribute.targets")


@dataclass(frozen=True)
class InversionSection(_Section):
    """Model inversion per label and subgroup cell (guards.checks.inversion; advisory by default)."""

    KEY: ClassVar[str] = "inversion"

    epochs: int = _ranged(15, 1, 10_000)  # training epochs of the attacker's proxies (protected and clean)
    image_size: int = _ranged(64, 8, 1024)  # images are resized to image_size x image_size for the proxies
    restarts: int = _ranged(8, 1, 256)  # seeded starts per label, each reconstructed by gradient ascent
    steps: int = _ranged(200, 1, 100_000)  # gradient steps per reconstruction
    step_size: float = _ranged(0.05, 0.0, 10.0)  # Adam learning rate on the pixels
    tv_weight: float = _ranged(0.5, 0.0, 1000.0)  # weight of the total-variation prior
    ssim_bounds: tuple[float, ...] = _ranged((0.3, 0.5, 0.7), 0.0, 1.0)  # ReRo: SSIM bounds reported
    auc_max: float = _ranged(0.65, 0.5, 1.0)  # a cell fails when its AUC is shown above this (and significant)
    alpha: float = _ranged(0.05, 0.0, 1.0)  # family-wise alpha of the permutation tests (Bonferroni over cells)
    permutations: int = _ranged(1000, 1, 10_000_000)  # at least; raised to resolve alpha / cells
    min_patients_per_cell: int = _ranged(10, 2, 1_000_000)  # fewer (or under half on a side): inconclusive

    def _check(self) -> None:
        if not self.ssim_bounds:
            raise PolicyError("inversion.ssim_bounds: give at least one SSIM bound for ReRo, e.g. [0.5]")
        if self.alpha <= 0 or self.step_size <= 0:
            raise PolicyError(f"inversion: alpha ({self.alpha!r}) and step_size ({self.step_size!r}) must be"
                              " above 0")


@dataclass(frozen=True)
class DpAuditSection(_Section):
    """The optional DP-SGD audit (guards.checks.dp_audit; off unless ``enabled``, advisory when on).

    Proxies are trained with DP-SGD (Opacus) at each of ``epsilons`` (with ``delta``); the membership attack of
    the membership check is run on each. The accounting is record-level: one record is one image (instance),
    so a patient with k images is protected at roughly k times the stated epsilon (group privacy)."""

    KEY: ClassVar[str] = "dp_audit"

    enabled: bool = False  # off: the check is not run and the gate shows nothing of it (gate.off gets dp_audit)
    epsilons: tuple[float, ...] = (1.0, 10.0, 100.0)  # record-level privacy budgets of the audit proxies
    delta: float = _ranged(1e-5, 0.0, 1.0)  # must be below 1 / number of training images (checked at run time)
    max_grad_norm: float = _ranged(1.0, 0.0, 1e6)  # per-sample gradient clipping bound (DP-SGD)
    epochs: int = _ranged(15, 1, 10_000)  # epochs of every DP and non-DP proxy and reference model
    batch_size: int = _ranged(32, 1, 100_000)  # expected batch size (Poisson sampling rate = batch / images)
    lr: float = _ranged(2e-3, 0.0, 10.0)  # Adam learning rate of the DP proxies

    def _check(self) -> None:
        if not self.epsilons:
            raise PolicyError("dp_audit.epsilons: empty; give at least one budget, e.g. [1, 10, 100]")
        bad = [e for e in self.epsilons if not e > 0]
        if bad:
            raise PolicyError(f"dp_audit.epsilons: {bad} not above 0; each epsilon must be a positive number")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise PolicyError(f"dp_audit.epsilons: {list(self.epsilons)} lists a budget twice")
        if not (0 < self.delta < 1) or self.max_grad_norm <= 0 or self.lr <= 0:
            raise PolicyError(f"dp_audit: delta ({self.delta!r}) must be in (0, 1), max_grad_norm"
                              f" ({self.max_grad_norm!r}) and lr ({self.lr!r}) above 0")


@dataclass(frozen=True)
class Waiver(_Section):
    """A steward's waiver: a check id and a written reason, recorded in gate.json and the datasheet."""

    KEY: ClassVar[str] = "gate.waivers"

    check: str
    reason: str

    def _check(self) -> None:
        if not self.check.strip():
            raise PolicyError("gate.waivers: a waiver needs a check id (e.g. check = 'attribute')")
        if len(self.reason.strip()) < 10:
            raise PolicyError(
                f"gate.waivers: waiver for {self.check!r} needs a written reason of at least 10 characters"
            )


@dataclass(frozen=True)
class GateSection(_Section):
    """Which checks block the release, and the waivers a steward granted.

    Check ids are any non-empty names here: which checks exist is the registry's business
    (guards.checks.registry), and guards.gate refuses a waiver for a check neither configured nor run."""

    KEY: ClassVar[str] = "gate"

    blocking: tuple[str, ...] = ("phi", "representation", "reid", "membership", "unlearnability")
    advisory: tuple[str, ...] = ("attribute", "inversion")
    off: tuple[str, ...] = ()  # registered checks this release does not run (shown in the report and datasheet)
    waivers: tuple[Waiver, ...] = ()

    def _check(self) -> None:
        _names(self.blocking, "gate.blocking")
        _names(self.advisory, "gate.advisory")
        _names(self.off, "gate.off")
        for check in self.blocking:
            if check in self.advisory:
                raise PolicyError(f"gate: check {check!r} is both blocking and advisory; pick one")
        for check in self.off:
            if check in self.blocking or check in self.advisory:
                raise PolicyError(f"gate: check {check!r} is off and also blocking or advisory; pick one")


@dataclass(frozen=True)
class ApprovalSection(_Section):
    """The named sign-off between a passed gate and publish (the DAG's ``approve`` task, guards.approval).

    A steward approves or rejects in Airflow's Required actions page with a comment; who, when and the comment
    go into the datasheet and gate.json. No answer within ``timeout_hours`` rejects. ``guard run`` on the command
    line records the user who ran it as the one who signed off."""

    KEY: ClassVar[str] = "approval"

    required: bool = True  # a DAG run waits for a steward's approval before it publishes
    scheduled: bool = True  # the nightly (scheduled) run waits too; false: it publishes on a passed gate, recorded
    timeout_hours: float = _ranged(72.0, 0.0, 24 * 365)  # no answer in this time rejects (must be > 0)

    def _check(self) -> None:
        if self.timeout_hours <= 0:
            raise PolicyError(f"approval.timeout_hours = {self.timeout_hours}: must be above 0 (no answer in that "
                              "time rejects the release)")


@dataclass(frozen=True)
class ReleasePolicy:
    """Every option and threshold of a release."""

    release: ReleaseSection = field(default_factory=ReleaseSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    deid: DeidSection = field(default_factory=DeidSection)
    pixels: PixelsSection = field(default_factory=PixelsSection)
    protect: ProtectSection = field(default_factory=ProtectSection)
    cohort: CohortSection = field(default_factory=CohortSection)
    representation: RepresentationSection = field(default_factory=RepresentationSection)
    reid: ReidSection = field(default_factory=ReidSection)
    membership: MembershipSection = field(default_factory=MembershipSection)
    unlearnability: UnlearnabilitySection = field(default_factory=UnlearnabilitySection)
    attribute: AttributeSection = field(default_factory=AttributeSection)
    inversion: InversionSection = field(default_factory=InversionSection)
    dp_audit: DpAuditSection = field(default_factory=DpAuditSection)
    gate: GateSection = field(default_factory=GateSection)
    approval: ApprovalSection = field(default_factory=ApprovalSection)

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f.name))
        self._dp_audit_switch()

    def _dp_audit_switch(self) -> None:
        """``dp_audit.enabled`` is the one switch of the DP audit: off, ``gate.off`` lists ``dp_audit`` (and no
        other gate list does); on, ``gate.off`` does not, and it is advisory unless the policy classifies it."""
        gate, check = self.gate, "dp_audit"
        off = tuple(c for c in gate.off if c != check)
        if not self.dp_audit.enabled:
            changed = dataclasses.replace(
                gate, blocking=tuple(c for c in gate.blocking if c != check),
                advisory=tuple(c for c in gate.advisory if c != check), off=(*off, check))
        elif check in gate.blocking or check in gate.advisory:
            changed = dataclasses.replace(gate, off=off)
        else:
            changed = dataclasses.replace(gate, off=off, advisory=(*gate.advisory, check))
        if changed != gate:
            object.__setattr__(self, "gate", changed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-able view, for the manifest and the datasheet."""
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> ReleasePolicy:
        """A copy with ``{"section.key": value}`` overrides applied and validated (Airflow Params, CLI)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in data or not key:
                raise PolicyError(f"override {dotted!r}: expected 'section.key' with section one of {sorted(data)}")
            data[section][key] = value
        return policy_from_dict(data, source="overrides")


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    """``cls(**table)`` after refusing keys ``cls`` does not have; the object validates the values."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise PolicyError(f"{where or 'policy'}: unknown key(s) {unknown}; allowed keys are {names}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [n for n in required if n not in table]
    if absent:
        raise PolicyError(f"{where or 'policy'}: missing key(s) {absent}; keys are {names}")
    return cls(**table)


def policy_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> ReleasePolicy:
    """Validate a nested dict (as parsed from TOML) into a :class:`ReleasePolicy`.

    ``source`` (the file, "overrides") is not part of the message: the dotted key names what is wrong."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a table of sections, got {data!r}")
    policy: ReleasePolicy = _build(ReleasePolicy, data, "")
    return policy


def load_policy(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None) -> ReleasePolicy:
    """Read a policy TOML file (defaults when ``path`` is None) and apply dotted overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise PolicyError(f"policy file {str(p)!r} does not exist; pass --policy with a guard.toml path")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"policy file {str(p)!r} is not valid TOML: {e}") from e
    policy = policy_from_dict(data, source=str(path or "<defaults>"))
    return policy.with_overrides(overrides) if overrides else policy
