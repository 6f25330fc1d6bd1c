"""PS3.15 Annex E de-identification: pinned Table E.1-1, options, keyed pseudonyms, per-patient date shift.

- :func:`deidentify_dataset` de-identifies one pydicom Dataset in place (guards.deid.engine);
- :func:`deidentify_tree` ingests a source tree and writes the de-identified tree, its manifest, the quarantine
  and optionally the private crosswalk (guards.deid.tree).
"""

from guards.deid.engine import InstanceQuarantined, deidentify_dataset
from guards.deid.tree import DeidResult, deidentify_tree

__all__ = ["DeidResult", "InstanceQuarantined", "deidentify_dataset", "deidentify_tree"]
