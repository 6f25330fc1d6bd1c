"""The few exceptions Release Guard raises, under one base.

Messages say what was wrong, the offending value, and how to fix it. They never contain the pseudonym key.
"""

from __future__ import annotations


class GuardError(Exception):
    """Base of every error Release Guard raises on purpose."""


class PolicyError(GuardError):
    """Raised when a policy file or override has an unknown key, a wrong type or a value out of range."""


class KeyMissingError(GuardError):
    """Raised when no pseudonym key is configured (``GUARD_KEY``, ``--key-file`` or the Airflow connection)."""


class InputError(GuardError):
    """Raised when an input (source tree, labels table, release folder) cannot be used at all.

    Single unusable files are not errors: they are quarantined with a reason.
    """


class PublishError(GuardError):
    """Raised when a release cannot be published (gate failed, version exists, staging incomplete)."""
