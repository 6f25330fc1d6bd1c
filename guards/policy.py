"""ReleasePolicy: every option and threshold of a release, one typed object read from a TOML file.

Each section of ``guard.toml`` maps to one frozen dataclass below; ``guard.toml`` at the repository root
documents every key. Unknown keys, wrong types and out-of-range values raise :class:`PolicyError` naming the
key, the value and what is allowed. A policy is valid once :func:`load_policy` returns.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from guards.errors import PolicyError

RetainLongitudinal = Literal["off", "full", "modified"]
PixelMode = Literal["clean", "quarantine", "keep"]
MembershipAttack = Literal["lira", "rmia"]


@dataclass(frozen=True)
class ReleaseSection:
    """Identity and schedule of the release."""

    name: str = "sample-release"
    schedule: str = "0 2 * * *"  # cron, nightly at 02:00
    seed: int = 20260101  # recorded in the manifest; every random step derives its generator from it


@dataclass(frozen=True)
class IngestSection:
    """How a source tree is walked (guards.ingest)."""

    labels: str = "labels.csv"  # labels table (StudyInstanceUID,label), relative to the source root
    sidecars: tuple[str, ...] = ("labels.csv", "demographics.csv", "README.txt")  # non-DICOM files expected
    follow_symlinks: bool = False
    max_file_bytes: int = 2_000_000_000


@dataclass(frozen=True)
class DeidSection:
    """PS3.15 Annex E Basic Application Level Confidentiality Profile and its options (Table E.1-1)."""

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
    date_shift_days: tuple[int, int] = (-730, -1)  # per-patient offset range, inclusive
    uid_root: str = "2.25"


@dataclass(frozen=True)
class PixelsSection:
    """Burned-in annotation handling (PS3.15 E.3.1 Clean Pixel Data Option)."""

    mode: PixelMode = "clean"
    risky_modalities: tuple[str, ...] = ("US", "SC", "OT", "XA", "ES", "XC", "GM", "SM", "DOC")
    ocr_all: bool = True  # OCR every instance, not only the risky ones
    padding: int = 4  # pixels added around each detected text box
    min_confidence: float = 30.0  # tesseract word confidence (0-100) to count as text
    language: str = "eng"
    verify_passes: int = 2  # at most this many re-reads of cleaned frames, hiding any text still found
    reuse: bool = True  # nightly runs: replay OCR decisions for frames read before (OUT/private/ocr-cache)


@dataclass(frozen=True)
class ProtectSection:
    """Sparsity-aware unlearnable noise (SALM, arXiv 2403.10573)."""

    enabled: bool = True
    epsilon: float = 8 / 255  # L-infinity budget as a fraction of the displayed range
    rho: float = 0.1  # fraction of foreground pixels the noise may touch
    step_size: float = 0.8 / 255
    steps: int = 20
    stop_accuracy: float = 0.99  # stop when the surrogate's accuracy on the noised data reaches this
    image_size: int = 64
    device: str = "cpu"
    batch_size: int = 0  # 0: chosen from memory
    max_rounds: int = 5  # rounds of (train surrogate, update noise) before giving up on stop_accuracy
    train_steps: int = 40  # surrogate batches (of 64 images) per round
    warmup_epochs: int = 8  # surrogate epochs on clean images before the noise rounds
    warmup_min_steps: int = 150  # ... and at least this many surrogate batches, however few the images
    surrogate: str = "cnn"  # "cnn" or "resnet18" (guards.protect.surrogate)
    surrogate_width: int = 32
    augment: bool = True  # optimise through flip + shift, as a victim is likely to train
    saturate: bool = True  # every masked pixel gets the full budget (eps * sign) at the end
    pseudo_label_clusters: int = 4  # k-means clusters for images without a label
    init: str = "class_frequency"  # noise start: "uniform", "class_texture" or "class_frequency" (guards.protect.salm)
    saliency: Literal["gradient", "flat"] = "gradient"  # mask rule: "gradient" (surrogate input gradient) or "flat"
    reuse: bool = True  # nightly runs: keep images protected before (OUT/private/protect-cache), noise only new ones


@dataclass(frozen=True)
class CohortSection:
    """Subgroup columns of the study table (guards.cohort)."""

    subgroups: tuple[str, ...] = ("sex", "age_band", "ethnic_group")
    age_bands: tuple[int, ...] = (0, 18, 40, 65, 90)
    demographics: str = ""  # optional private table (PatientID, EthnicGroup, ...), relative to the source


@dataclass(frozen=True)
class RepresentationSection:
    """Subgroup representation suite (Great Expectations)."""

    min_count: int = 5
    min_share: float = 0.02
    required: tuple[str, ...] = ()  # "column=value" subgroups that must be present
    kl_max: float = 0.25
    reference: str = ""  # population table (column,value,share) or a previous release's cohort
    prevalence_min: float = 0.02
    prevalence_max: float = 0.98
    exclusion_ratio_max: float = 3.0  # a subgroup's exclusion rate over the overall rate


@dataclass(frozen=True)
class ReidSection:
    """Re-identification risk over quasi-identifiers (k-anonymity, prosecutor / journalist risk)."""

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
    k: int = 11
    max_risk: float = 0.09  # EMA Policy 0070
    remediate: bool = True  # on by default: a release that fails k-anonymity is generalised, with the cost reported
    population: str = ""
    max_suppression: float = 0.05  # share of included records remediation may suppress (guards.remediate)
    max_subgroup_suppression: float = 0.25  # share of any one subgroup's records it may suppress


@dataclass(frozen=True)
class MembershipSection:
    """Membership inference (LiRA arXiv 2112.03570, RMIA arXiv 2312.03262), per subgroup."""

    attack: MembershipAttack = "rmia"
    reference_models: int = 4
    epochs: int = 15
    tpr_at_1pct_fpr_max: float = 0.10
    auc_max: float = 0.65
    bonferroni_alpha: float = 0.05
    image_size: int = 64  # images are resized to image_size x image_size for the proxy and reference models
    bootstrap: int = 200  # bootstrap resamples (of patients) for the confidence intervals
    min_top_k: int = 10  # the over-representation test looks at max(1% of members, min_top_k) patients


@dataclass(frozen=True)
class UnlearnabilitySection:
    """A victim trained on the release must stay near chance on clean held-out data."""

    margin: float = 0.10  # balanced accuracy must be within this of chance
    epochs: int = 15
    image_size: int = 64


@dataclass(frozen=True)
class AttributeSection:
    """Attribute inference of withheld attributes (advisory by default)."""

    targets: tuple[str, ...] = ("ethnic_group", "sex")
    auc_margin: float = 0.10
    image_size: int = 16  # released images are downsampled to this size and used as features
    folds: int = 5  # patient-level cross-validation folds


@dataclass(frozen=True)
class Waiver:
    """A steward's waiver: a check id and a written reason, recorded in gate.json and the datasheet."""

    check: str
    reason: str

    def __post_init__(self) -> None:
        if not self.check.strip():
            raise PolicyError("gate.waivers: a waiver needs a check id (e.g. check = 'attribute')")
        if len(self.reason.strip()) < 10:
            raise PolicyError(
                f"gate.waivers: waiver for {self.check!r} needs a written reason of at least 10 characters"
            )


@dataclass(frozen=True)
class GateSection:
    """Which checks block the release, and the waivers a steward granted."""

    blocking: tuple[str, ...] = ("phi", "representation", "reid", "membership", "unlearnability")
    advisory: tuple[str, ...] = ("attribute",)
    waivers: tuple[Waiver, ...] = ()


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
    gate: GateSection = field(default_factory=GateSection)

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


_RANGES: dict[str, tuple[float, float]] = {
    "ingest.max_file_bytes": (1, 1e15),
    "protect.epsilon": (0.0, 1.0),
    "protect.rho": (0.0, 1.0),
    "protect.stop_accuracy": (0.0, 1.0),
    "representation.min_share": (0.0, 1.0),
    "representation.prevalence_min": (0.0, 1.0),
    "representation.prevalence_max": (0.0, 1.0),
    "reid.max_risk": (0.0, 1.0),
    "reid.k": (1, 1e9),
    "reid.max_suppression": (0.0, 1.0),
    "reid.max_subgroup_suppression": (0.0, 1.0),
    "unlearnability.margin": (0.0, 1.0),
    "membership.tpr_at_1pct_fpr_max": (0.0, 1.0),
    "membership.auc_max": (0.0, 1.0),
    "membership.reference_models": (1, 64),
    "membership.bonferroni_alpha": (0.0, 1.0),
    "membership.bootstrap": (0, 10_000),
    "membership.min_top_k": (1, 1_000_000),
    "membership.image_size": (8, 1024),
    "membership.epochs": (1, 10_000),
    "unlearnability.image_size": (8, 1024),
    "unlearnability.epochs": (1, 10_000),
    "attribute.auc_margin": (0.0, 0.5),
    "attribute.image_size": (4, 1024),
    "attribute.folds": (2, 100),
    "protect.steps": (0, 10_000),
    "protect.image_size": (8, 4096),
    "protect.max_rounds": (1, 10_000),
    "protect.train_steps": (0, 1_000_000),
    "protect.warmup_epochs": (0, 10_000),
    "protect.warmup_min_steps": (0, 1_000_000),
    "protect.surrogate_width": (8, 1024),
    "protect.pseudo_label_clusters": (1, 1024),
}


def _coerce(value: Any, hint: Any, where: str) -> Any:
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
        if value not in allowed:
            raise PolicyError(f"{where}: {value!r} is not allowed; use one of {list(allowed)}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise PolicyError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise PolicyError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise PolicyError(f"{where}: expected a table, got {value!r}")
        return _build(hint, value, where)
    if isinstance(hint, types.UnionType):
        raise PolicyError(f"{where}: unsupported union type in policy schema")
    raise PolicyError(f"{where}: unsupported policy type {hint!r}")


def _build(cls: type[Any], table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; allowed keys are {names}")
    kwargs: dict[str, Any] = {}
    for name in names:
        if name not in table:
            continue
        key = f"{where}.{name}" if where else name
        value = _coerce(table[name], hints[name], key)
        dotted = key.split(":", 1)[-1]
        if dotted in _RANGES:
            lo, hi = _RANGES[dotted]
            if not lo <= value <= hi:
                raise PolicyError(f"{key}: {value!r} is out of range; allowed {lo} to {hi}")
        kwargs[name] = value
    return cls(**kwargs)


def policy_from_dict(data: dict[str, Any], *, source: str = "<dict>") -> ReleasePolicy:
    """Validate a nested dict (as parsed from TOML) into a :class:`ReleasePolicy`."""
    policy: ReleasePolicy = _build(ReleasePolicy, data, "")
    deid = policy.deid
    lo, hi = deid.date_shift_days
    if lo > hi:
        raise PolicyError(f"{source}: deid.date_shift_days {list(deid.date_shift_days)} must be [low, high]")
    if policy.representation.prevalence_min > policy.representation.prevalence_max:
        raise PolicyError(f"{source}: representation.prevalence_min must not exceed prevalence_max")
    for check in policy.gate.blocking:
        if check in policy.gate.advisory:
            raise PolicyError(f"{source}: gate: check {check!r} is both blocking and advisory; pick one")
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
