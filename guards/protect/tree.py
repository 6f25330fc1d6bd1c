"""Protect a de-identified DICOM tree: SALM noise on every published image, written back into the files.

``protect_tree(src, dst, ...)`` (docs/CONTRACTS.md):

1. Reads ``src/manifest.parquet``; rows with status ``published`` are protected, every other row is carried
   into ``dst/manifest.parquet`` unchanged (and ``src/quarantine/`` is copied), so nothing is lost.
2. Decodes each published file (``codec.py``); each frame becomes one image, area-resized to
   ``policy.protect.image_size`` squared. A file without Pixel Data is copied unchanged and listed under
   ``not_applicable``; a file whose pixels cannot be protected (``codec.UnsupportedPixelsError``: PALETTE COLOR,
   1 or 32 bits, an undecodable transfer syntax) is quarantined (``dst/quarantine/<path>``, status
   ``quarantined``, reason ``protect: ...``), never published unprotected and never skipped silently.
3. Labels: ``labels[StudyInstanceUID]``; frames of studies without a label get pseudo-labels
   (``labels.pseudo_labels``, k-means on surrogate features) in classes after the labelled ones; with
   ``labels=None`` every image is pseudo-labelled.
4. Noise: ``salm.error_minimizing_noise`` at model resolution, seeded by ``policy.release.seed``.
5. Back to native resolution: the delta is upsampled bilinearly, the mask is recomputed at native resolution
   from the upsampled saliency so that exactly round(rho * foreground) pixels change at most
   (``mask.native_mask``), and the delta is added in stored units within ``floor(epsilon * range)``, only where
   the display window shows all of it (``codec.stored_change``: nothing is written at a pixel clipped in the
   display, before or after the change), and scaled down until the file's PSNR in its display window is at
   least ``policy.protect.min_psnr_db`` (``codec.protect_pixels``). The manifest row records the PSNR, the
   largest change and the budget (``protect_psnr_db``, ``protect_max_abs_delta``, ``protect_budget``).
6. The header records the protection (PS3.3 C.12.1 SOP Common, PS3.15 Annex E): "SALM unlearnable noise ..."
   is appended to Deidentification Method (0012,0063) and a Contributing Equipment Sequence (0018,A001) item
   is added with Manufacturer "Release Guard", Manufacturer's Model Name "guards.protect SALM", Purpose of
   Reference (DCM 109103 "Modifying Equipment") and a Contribution Description with epsilon, rho and seed.
   No timestamp is written, so the same seed gives the same bytes.
   Transfer syntax (``guards.codec``): an instance that arrived compressed is written again losslessly
   (``pixels.encode``: JPEG-LS Lossless by default), one that arrived native as Explicit VR Little Endian; one
   whose pixels the noise left exactly as they were (and whose syntax is lossless) keeps its Pixel Data bytes and
   syntax. A lossy syntax never reaches ``dst``: a lossy input is re-encoded losslessly, still marked lossy.
7. With ``reuse`` (a private cache folder, ``reuse.py``): a file protected by an earlier run from the same
   de-identified bytes under the same settings and seed is carried from the cache. Its images still train the
   surrogate, as released, but get no new noise (``frozen``), and the cache is updated for the next run.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from guards.atomic import copy_file, save_dataset
from guards.codec import is_lossless_syntax, source_of, store_pixels
from guards.errors import GuardError, InputError
from guards.manifest import read_table, to_table, write_table
from guards.policy import ProtectSection, ReleasePolicy
from guards.progress import progress
from guards.protect.codec import (
    PixelBlock,
    UnsupportedPixelsError,
    decode,
    encode,
    protect_pixels,
    psnr_db,
    to_unit,
)
from guards.protect.labels import pseudo_labels
from guards.protect.mask import native_mask
from guards.protect.reuse import CachedFile, NoiseCache, fingerprint
from guards.protect.salm import NoiseConfig, NoiseResult, error_minimizing_noise
from guards.protect.surrogate import auto_batch_size, select_device

logger = logging.getLogger(__name__)

MANUFACTURER = "Release Guard"
MODEL_NAME = "guards.protect SALM"
METHOD_TEXT = "SALM unlearnable noise (arXiv 2403.10573)"


@dataclass(frozen=True)
class ProtectResult:
    """What ``protect_tree`` did. ``max_abs_delta`` and ``budget`` are per relative path, in stored units;
    ``psnr`` per path in dB (display window, ``codec.psnr_db``; ``inf`` for no change); ``clipped`` per path
    protected in this run, the pixels whose change was dropped because the display would have clipped it."""

    manifest_path: Path
    counts: dict[str, int]
    timings: dict[str, float]
    seed: int
    max_abs_delta: dict[str, int] = field(default_factory=dict)
    budget: dict[str, int] = field(default_factory=dict)
    psnr: dict[str, float] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)  # path -> why nothing was protected
    quarantined: dict[str, str] = field(default_factory=dict)  # path -> reason
    surrogate_accuracy: float = 0.0
    rounds: int = 0


def noise_config(section: ProtectSection, *, batch_size: int) -> NoiseConfig:
    """The optimiser options of a policy's ``[protect]`` section."""
    return NoiseConfig(
        epsilon=section.epsilon,
        step_size=section.step_size,
        steps=section.steps,
        rho=section.rho,  # of the foreground (mask.py), as native_mask selects it at native resolution
        stop_accuracy=section.stop_accuracy,
        max_rounds=section.max_rounds,
        train_steps=section.train_steps,
        warmup_epochs=section.warmup_epochs,
        warmup_min_steps=section.warmup_min_steps,
        batch_size=batch_size,
        surrogate=section.surrogate,
        width=section.surrogate_width,
        augment=section.augment,
        saturate=section.saturate,
        init=section.init,
        saliency=section.saliency,
        min_psnr_db=section.min_psnr_db,
        eot=section.eot,
        classwise=section.classwise,
        objective=section.objective,
        defences=tuple(section.defences),
    )


def _resize(unit: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(unit)[:, None]
    return F.interpolate(t, size=(size, size), mode="area") if t.shape[-2:] != (size, size) else t


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _carry(
    cached: CachedFile, block: PixelBlock, section: ProtectSection
) -> tuple[torch.Tensor, Dataset, int, int, float] | None:
    """The cached protected file's images at model size, header, largest change, budget and PSNR against the
    de-identified pixels (in their display window), when its pixels have the de-identified pixels' shape and lie
    within the budget and the PSNR floor of them; else None (protect afresh)."""
    name = cached.path.name
    try:
        ds = pydicom.dcmread(BytesIO(cached.data))
        old = decode(ds)
    except (InvalidDicomError, OSError, UnsupportedPixelsError) as e:
        logger.warning("protect cache: %s cannot be decoded (%s); it is protected afresh", name, e)
        return None
    if old.stored.shape != block.stored.shape:
        return None
    diff = int(np.abs(old.stored.astype(np.int64) - block.stored.astype(np.int64)).max())
    budget = block.budget(section.epsilon)
    if diff > budget:
        logger.warning("protect cache: %s differs by %d > budget %d; it is protected afresh", name, diff, budget)
        return None
    psnr = psnr_db(block, old.stored)
    if psnr < section.min_psnr_db:
        logger.warning("protect cache: %s has PSNR %.2f dB < %.2f; it is protected afresh", name, psnr,
                       section.min_psnr_db)
        return None
    return _resize(to_unit(old), section.image_size), ds, diff, budget, psnr


def _record_protection(ds: Dataset, section: ProtectSection, seed: int) -> None:
    methods = ds.get("DeidentificationMethod")
    if methods is None or methods == "":
        values: list[str] = []
    elif isinstance(methods, str):
        values = [methods]
    else:
        values = [str(v) for v in methods]
    text = METHOD_TEXT
    if text not in values:
        ds.DeidentificationMethod = [*values, text] if values else text
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = MODEL_NAME
    code = Dataset()
    code.CodeValue = "109103"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Modifying Equipment"
    item.PurposeOfReferenceCodeSequence = [code]
    item.ContributionDescription = (
        f"Sparsity-aware unlearnable noise ({section.objective}): epsilon={section.epsilon:.6g} of displayed range, "
        f"PSNR >= {section.min_psnr_db:.6g} dB in the display window, rho={section.rho:.6g}, seed={seed}"
    )[:1024]
    seq = list(ds.get("ContributingEquipmentSequence", []))
    ds.ContributingEquipmentSequence = [*seq, item]


def protect_tree(
    src: Path,
    dst: Path,
    *,
    policy: ReleasePolicy,
    labels: dict[str, int] | None,
    device: str = "cpu",
    reuse: Path | None = None,
) -> ProtectResult:
    """Add SALM noise to every published image of the de-identified tree ``src``, writing ``dst``.

    ``reuse``: a private cache folder of earlier runs' protected files (``reuse.py``); files protected before
    from the same de-identified bytes under the same settings are carried from it instead of protected again,
    and this run's files are kept there for the next run.
    """
    t0 = time.monotonic()
    src, dst = Path(src), Path(dst)
    manifest_in = src / "manifest.parquet"
    if not manifest_in.is_file():
        raise InputError(f"{src} has no manifest.parquet: pass a tree written by `guard deid`")
    section = policy.protect
    seed = policy.release.seed
    dev = select_device(device)
    rows = read_table(manifest_in).to_pylist()
    dst.mkdir(parents=True, exist_ok=True)
    if (src / "quarantine").is_dir():
        shutil.copytree(src / "quarantine", dst / "quarantine", dirs_exist_ok=True)

    published = [i for i, r in enumerate(rows) if r["status"] == "published"]
    parent_sha = {i: str(rows[i].get("sha256") or "") for i in published}  # the de-identified files' hashes
    cache = NoiseCache(reuse, fingerprint(section, seed, encoding=policy.pixels.encode)) if reuse is not None else None
    carried: dict[str, tuple[Path, str, str, str]] = {}  # path -> (cached file, sha256, TransferSyntaxUID, PI)
    frozen: list[bool] = []
    max_abs: dict[str, int] = {}
    budgets: dict[str, int] = {}
    psnr: dict[str, float] = {}
    clipped: dict[str, int] = {}
    not_applicable: dict[str, str] = {}
    quarantined: dict[str, str] = {}
    images: list[torch.Tensor] = []
    owners: list[tuple[int, int]] = []  # (row index, frame) per image
    studies: list[str] = []
    for i in progress(published, total=len(published), what="protect: decode", logger=logger):
        rel = rows[i]["path"]
        try:
            ds = pydicom.dcmread(src / rel)
        except (InvalidDicomError, OSError) as e:
            quarantined[rel] = f"protect cannot read the file: {type(e).__name__}: {e}"
            continue
        if "PixelData" not in ds:
            not_applicable[rel] = "no Pixel Data (7FE0,0010): nothing to protect"
            continue
        try:
            block = decode(ds)
        except UnsupportedPixelsError as e:
            quarantined[rel] = f"protect cannot decode the pixels: {e}"
            continue
        except Exception as e:  # noqa: BLE001 - a decoder's error in one file never stops the run
            quarantined[rel] = f"protect cannot decode the pixels: {type(e).__name__}: {e}"[:500]
            continue
        unit = _resize(to_unit(block), section.image_size)
        cached = cache.lookup(rel, parent_sha[i]) if cache is not None else None
        if cached is not None and (carry := _carry(cached, block, section)) is not None:
            unit, cached_ds, max_abs[rel], budgets[rel], psnr[rel] = carry  # the images as released before
            syntax, photometric = cached_ds.file_meta.TransferSyntaxUID, cached_ds.PhotometricInterpretation
            carried[rel] = (cached.path, cached.sha256, str(syntax), str(photometric))
        for f in range(block.frames):
            images.append(unit[f])
            owners.append((i, f))
            studies.append(str(ds.get("StudyInstanceUID", "")))
            frozen.append(rel in carried)
    t_decode = time.monotonic()

    result_noise = None
    if images and not all(frozen):
        x = torch.stack(images)
        y = _labels_for(x, studies, labels, section=section, seed=seed)
        bs = auto_batch_size(dev, image_size=section.image_size, channels=1, requested=section.batch_size)
        logger.info("protect: %d images (%d files, %d carried from earlier runs), %d classes, batch %d, device %s",
                    len(x), len(published), len(carried), int(y.max()) + 1, bs, dev)
        result_noise = error_minimizing_noise(x, y, config=noise_config(section, batch_size=bs), seed=seed,
                                              device=dev, frozen=torch.tensor(frozen) if carried else None)
    elif images:
        logger.info("protect: all %d images were protected by an earlier run: carried, no new noise", len(images))
    t_noise = time.monotonic()

    per_row: dict[int, list[int]] = {}
    for k, (i, _f) in enumerate(owners):
        per_row.setdefault(i, []).append(k)
    for i in progress(published, total=len(published), what="protect: write", logger=logger):
        row = rows[i]
        rel = row["path"]
        out = dst / rel
        if rel in quarantined:
            if (src / rel).is_file():
                copy_file(src / rel, dst / "quarantine" / rel)
            row.update(status="quarantined", reason=quarantined[rel])
            continue
        if rel in not_applicable:
            copy_file(src / rel, out)
            row["sha256"] = _sha256(out)
        elif rel in carried:
            cached_path, row["sha256"], row["TransferSyntaxUID"], row["PhotometricInterpretation"] = carried[rel]
            copy_file(cached_path, out)
        else:
            assert result_noise is not None  # every protectable row contributed images
            try:
                _write_protected(src, rel, out, row, per_row[i], result_noise, section=section, policy=policy,
                                 seed=seed, max_abs=max_abs, budgets=budgets, psnr=psnr, clipped=clipped)
            except GuardError:
                raise
            except Exception as e:  # noqa: BLE001 - one file that cannot be written never stops the run
                logger.warning("protect: %s cannot be written: %s", rel, type(e).__name__)
                quarantined[rel] = f"protect cannot write the file: {type(e).__name__}: {e}"[:500]
                for record in (max_abs, budgets, psnr, clipped):
                    record.pop(rel, None)
                out.unlink(missing_ok=True)
                copy_file(src / rel, dst / "quarantine" / rel)
                row.update(status="quarantined", reason=quarantined[rel], sha256=None)
                continue
        row["size"] = out.stat().st_size
        _record_row(row, rel, max_abs=max_abs, budgets=budgets, psnr=psnr)
        if cache is not None and rel in max_abs and parent_sha[i]:
            cache.keep(rel, parent_sha256=parent_sha[i], protected=out, sha256=row["sha256"],
                       copy=rel not in carried)
    for i, row in enumerate(rows):
        if i not in parent_sha or row["status"] != "published":  # carried rows and those quarantined here
            _record_row(row, row["path"], max_abs={}, budgets={}, psnr={})
    if clipped:
        logger.info("protect: %d changed pixels were not written because the display window would clip them",
                    sum(clipped.values()))
    manifest_path = dst / "manifest.parquet"
    write_table(to_table(rows), manifest_path)
    if cache is not None:
        logger.info("protect: %d of %d files carried from earlier runs; cache %s", len(carried), len(max_abs),
                    cache.commit())
    t_end = time.monotonic()
    counts = {
        "published_in": len(published),
        "protected": len(max_abs),
        "not_applicable": len(not_applicable),
        "quarantined": len(quarantined),
        "carried": len(rows) - len(published),
        "images": len(images),
        "reused": len(carried),
    }
    logger.info("protect: %s", counts)
    return ProtectResult(
        manifest_path=manifest_path,
        counts=counts,
        timings={"decode_s": t_decode - t0, "noise_s": t_noise - t_decode, "write_s": t_end - t_noise,
                 "total_s": t_end - t0},
        seed=seed,
        max_abs_delta=max_abs,
        budget=budgets,
        psnr=psnr,
        clipped=clipped,
        not_applicable=not_applicable,
        quarantined=quarantined,
        surrogate_accuracy=result_noise.surrogate_accuracy if result_noise else 0.0,
        rounds=result_noise.rounds if result_noise else 0,
    )


def _as_little_endian(ds: Dataset) -> None:
    """Read every element of a big-endian data set (PS3.5 A.3, retired) so that it is written little endian.

    pydicom refuses to write a data set read big endian as little endian while raw (unread) elements remain;
    once every value is read, the data set has no byte order of its own and its original encoding is reset.
    """
    for _ in ds.iterall():
        pass
    ds.set_original_encoding(False, True, ds.original_character_set)


def _record_row(row: dict[str, object], rel: str, *, max_abs: dict[str, int], budgets: dict[str, int],
                psnr: dict[str, float]) -> None:
    """The manifest's ``protect_*`` columns of ``row``: what protect wrote into ``rel``, or null when nothing."""
    row["protect_psnr_db"] = psnr.get(rel)
    row["protect_max_abs_delta"] = max_abs.get(rel)
    row["protect_budget"] = budgets.get(rel)


def _write_protected(src: Path, rel: str, out: Path, row: dict[str, object], ks: list[int],
                     result_noise: NoiseResult, *, section: ProtectSection, policy: ReleasePolicy, seed: int,
                     max_abs: dict[str, int], budgets: dict[str, int], psnr: dict[str, float],
                     clipped: dict[str, int]) -> None:
    """Add the noise of images ``ks`` to the file ``rel`` and write it to ``out``; ``row`` gets what was written.

    The change written is ``codec.protect_pixels``'s: within the budget, only where the display window shows it
    whole, and scaled until the file's PSNR meets ``section.min_psnr_db``; ``max_abs``, ``budgets``, ``psnr``
    and ``clipped`` get this file's record."""
    ds = pydicom.dcmread(src / rel)
    big_endian = ds.original_encoding[1] is False
    if big_endian:  # new pixels are written little endian (guards.protect.codec.encode)
        _as_little_endian(ds)
    source = source_of(ds)  # before decoding: the input's syntax and whether it was lossy
    block = decode(ds)
    native_unit = to_unit(block)
    delta_model = result_noise.delta[ks, 0]
    sal_model = result_noise.saliency[ks, 0]
    h, w = native_unit.shape[1:]
    up = F.interpolate(delta_model[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    masks = torch.stack(
        [native_mask(sal_model[j], torch.from_numpy(native_unit[j]), rho=section.rho) for j in range(len(ks))]
    )
    delta_native = (up * masks).numpy()
    written = protect_pixels(block, delta_native, epsilon=section.epsilon, min_psnr_db=section.min_psnr_db)
    stored = written.stored
    max_abs[rel], budgets[rel], psnr[rel], clipped[rel] = (
        written.max_abs_delta, written.budget, written.psnr_db, written.clipped
    )
    if written.scale < 1.0:
        logger.info("protect: %s: delta scaled by %.3f to meet PSNR %.1f dB", rel, written.scale,
                    section.min_psnr_db)
    if np.array_equal(stored, block.stored) and is_lossless_syntax(source.transfer_syntax) and not big_endian:
        ds = pydicom.dcmread(src / rel)  # no pixel changed: header-only edit, original Pixel Data bytes
    else:
        encode(ds, block, stored)
        store_pixels(ds, source, encoding=policy.pixels.encode, what=rel)
    if not is_lossless_syntax(ds.file_meta.TransferSyntaxUID):  # never lossy in a protected release
        raise GuardError(f"protect: {rel} would be written as {ds.file_meta.TransferSyntaxUID.name}, a "
                         "lossy transfer syntax; a protected release is lossless (guards.codec)")
    _record_protection(ds, section, seed)
    data = save_dataset(ds, out)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    row["TransferSyntaxUID"] = str(ds.file_meta.TransferSyntaxUID)
    row["PhotometricInterpretation"] = str(ds.PhotometricInterpretation)


def _labels_for(
    x: torch.Tensor, studies: list[str], labels: dict[str, int] | None, *, section: ProtectSection, seed: int
) -> torch.Tensor:
    """Contiguous class ids: given labels first, then pseudo-label clusters for the unlabelled images."""
    given = labels or {}
    classes = sorted({given[s] for s in studies if s in given})
    index = {c: j for j, c in enumerate(classes)}
    y = torch.full((len(studies),), -1, dtype=torch.long)
    for n, s in enumerate(studies):
        if s in given:
            y[n] = index[given[s]]
    missing = (y < 0).nonzero().flatten()
    if missing.numel():
        logger.info("protect: %d of %d images have no label: pseudo-labels by clustering", missing.numel(), len(y))
        clusters = pseudo_labels(x[missing], k=section.pseudo_label_clusters, seed=seed)
        y[missing] = clusters + len(classes)
    return y
