"""The light policy file of the tests that run ``guard run --policy FILE``: only the header checks (reid, phi)
run and block, every other registered check is off (one registered later too: an unlisted check would run as
blocking), no OCR of every image, no re-identification remediation."""

from __future__ import annotations

import json

from guards.checks import registry

HEADER_CHECKS = ("reid", "phi")
OFF = [c.id for c in registry.registered() if c.id not in HEADER_CHECKS]


def light_toml(protect: str = "enabled = false", extra: str = "") -> str:
    """The policy file's text; ``protect``: the [protect] table's lines; ``extra``: further tables."""
    return f"""
[pixels]
ocr_all = false
[protect]
{protect}
[reid]
remediate = false
k = 1
max_risk = 1.0
[gate]
blocking = {json.dumps(list(HEADER_CHECKS))}
advisory = []
off = {json.dumps(OFF)}
{extra}"""
