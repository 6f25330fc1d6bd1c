"""``guard``: the Release Guard command line (ARCHITECTURE.md, Interfaces).

Exit codes: 0 pass or done, 1 the gate failed, 2 bad usage or unusable input, 3 internal error (a bug: the
message says what crashed; nothing is published).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from guards.errors import GuardError, InputError
from guards.keys import PseudonymKey, load_key
from guards.policy import ReleasePolicy, load_policy

logger = logging.getLogger("guards.cli")

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guard", description="Publish DICOM datasets without exposing patients.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, key: bool = True) -> None:
        sp.add_argument("--policy", type=Path, help="policy TOML file (see guard.toml); defaults when omitted")
        if key:
            sp.add_argument("--key-file", type=Path, help="pseudonym key file (else the GUARD_KEY variable)")

    s = sub.add_parser("samples", help="write a generated sample corpus with labels.csv")
    s.add_argument("out", type=Path)
    s.add_argument("--studies", type=int, default=40)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("deid", help="de-identify a DICOM tree (PS3.15 Annex E)")
    s.add_argument("src")
    s.add_argument("dst", type=Path)
    s.add_argument("--crosswalk", type=Path, help="private crosswalk Parquet path (outside DST)")
    s.add_argument("--private", type=Path, metavar="DIR",
                   help="private folder (outside DST, owner-only) for everything holding original values: the "
                   "ingest index and raw copies of unusable files (ingest/), quarantined instances (quarantine/), "
                   "the full manifest with source paths (manifest.parquet); default: DST.private beside DST. "
                   "DST then holds de-identified values only")
    common(s)

    s = sub.add_parser("protect", help="add sparsity-aware unlearnable noise (SALM) to a de-identified tree")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--labels", type=Path, help="labels.csv keyed by the StudyInstanceUID in SRC")
    common(s, key=False)

    s = sub.add_parser("check", help="run the gate's checks on a release tree and write its report")
    s.add_argument("release", type=Path)
    s.add_argument("--source", required=True, help="the original source the release was made from")
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    common(s)

    s = sub.add_parser("run", help="the whole pipeline; publishes under OUT only when the gate passes")
    s.add_argument("src")
    s.add_argument("out", type=Path)
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    s.add_argument("--run-id", help="name of the run folder (default: run-<UTC time, microseconds>-<random>); an "
                   "existing run's id resumes it: steps done on unchanged inputs are skipped, a published run is not "
                   "published again")
    s.add_argument("--shards", type=int, default=1, help="groups of patients de-identified one after another")
    s.add_argument("--labels", type=Path, help="a local labels table (StudyInstanceUID or AccessionNumber, label) "
                   "instead of ingest.labels inside SRC; a PACS source has no folder to hold one")
    common(s)
    return p


def _key(args: argparse.Namespace) -> PseudonymKey:
    return load_key(args.key_file)


def _cmd_samples(args: argparse.Namespace) -> int:
    from guards.samples import generate_corpus

    if args.studies < 1:
        raise GuardError(f"--studies must be at least 1, got {args.studies}")
    corpus = generate_corpus(args.out, studies=args.studies, seed=args.seed)
    logger.info("wrote %d files and %s", len(corpus.files), corpus.labels_csv)
    return EXIT_OK


def _cmd_deid(args: argparse.Namespace, policy: ReleasePolicy) -> int:
    from guards.deid import deidentify_tree

    key = _key(args)
    result = deidentify_tree(args.src, args.dst, policy=policy, key=key, crosswalk=args.crosswalk,
                             private=args.private)
    logger.info("de-identified: %s; manifest %s", result.counts, result.manifest_path)
    logger.info("private folder (original values: the ingest index, quarantined files, the full manifest; "
                "never share it): %s", result.private_root)
    if result.crosswalk_path is not None:
        logger.info("private crosswalk: %s", result.crosswalk_path)
    return EXIT_OK


def _cmd_protect(args: argparse.Namespace, policy: ReleasePolicy) -> int:
    from guards.pipeline import read_labels
    from guards.protect import protect_tree

    labels = read_labels(args.labels) if args.labels else read_labels(args.src / policy.ingest.labels)
    result = protect_tree(args.src, args.dst, policy=policy, labels=labels or None, device=args.device)
    logger.info("protected: %s; manifest %s", result.counts, result.manifest_path)
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, policy: ReleasePolicy) -> int:
    from guards import pipeline

    key = _key(args)
    release = args.release
    if not (release / "manifest.parquet").is_file():
        raise GuardError(f"{release} has no manifest.parquet: pass a tree written by `guard protect` or `guard deid`")
    work = Path(tempfile.mkdtemp(prefix="guard-check-"))
    try:
        # The checks read the release under test; the source, de-identified here, is their clean reference.
        run = pipeline.begin(args.source, work, "check", policy=policy, key=key, device=args.device,
                             under_test=release.resolve())
        pipeline.step_deid(run, key=key)
        pipeline.step_cohort(run, key=key)
        for check_id in pipeline.enabled_checks(policy):
            try:
                pipeline.run_check(run, check_id)
            except GuardError:
                raise
            except Exception as e:  # the gate reads a crashed check as "not run"
                logger.error("check %s crashed (%s: %s)", check_id, type(e).__name__, e)
        outcome = pipeline.step_gate(run)
        if (release / "report").exists():
            shutil.rmtree(release / "report")
        shutil.copytree(run.paths.report, release / "report")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("report: %s", release / "report" / "index.html")
    return EXIT_OK if outcome["passed"] else EXIT_GATE_FAILED


def _cmd_run(args: argparse.Namespace, policy: ReleasePolicy) -> int:
    from guards.pipeline import run_pipeline

    key = _key(args)
    if args.labels is not None:
        if not args.labels.is_file():
            raise InputError(f"--labels {args.labels}: no such file")
        policy = policy.with_overrides({"ingest.labels": str(args.labels.resolve())})
    result = run_pipeline(args.src, args.out, policy=policy, key=key, device=args.device, run_id=args.run_id,
                          shards=args.shards)
    logger.info("report: %s", result.report)
    if result.passed and result.release is not None:
        if result.already_published:
            logger.info("gate PASSED; run %s was already published at %s (not published again)",
                        result.run.run_id, result.release)
        else:
            logger.info("gate PASSED; release published at %s", result.release)
        return EXIT_OK
    logger.error("gate FAILED; nothing was published. Read %s for what to change.", result.report)
    return EXIT_GATE_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "samples":
            return _cmd_samples(args)
        policy = load_policy(args.policy)
        handler = {"deid": _cmd_deid, "protect": _cmd_protect, "check": _cmd_check, "run": _cmd_run}[args.command]
        return handler(args, policy)
    except GuardError as e:
        logger.error("%s", e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        logger.error("interrupted; nothing was published")
        return EXIT_INTERNAL
    except Exception as e:  # a bug, not bad input: say what crashed, exit 3 (not 1, "the gate failed")
        logger.error("internal error: %s: %s", type(e).__name__, e)
        logger.debug("traceback", exc_info=True)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
