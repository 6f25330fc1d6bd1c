"""PS3.15 Annex E de-identification: pinned Table E.1-1, options, keyed pseudonyms, per-patient date shift.

- :func:`deidentify_dataset` de-identifies one pydicom Dataset in place (guards.deid.engine);
- :func:`deidentify_tree` ingests a source tree and writes the de-identified tree and its manifest (de-identified
  values only) into DST, and the ingest index, the quarantine, the full manifest and optionally the crosswalk into
  a private folder outside DST (guards.deid.tree).
"""

from guards.deid.engine import InstanceQuarantined, deidentify_dataset
from guards.deid.tree import DeidResult, deidentify_tree

__all__ = ["DeidResult", "InstanceQuarantined", "deidentify_dataset", "deidentify_tree"]
