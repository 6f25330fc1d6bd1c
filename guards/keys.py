"""The pseudonym key: where it comes from, and the guarantee that it is never shown.

The key is read from ``GUARD_KEY``, a key file (``--key-file``) or, in the DAG, the Airflow connection
``guard_pseudonym_key``. :class:`PseudonymKey` never reveals its bytes through ``repr``/``str``; code that
needs them calls :meth:`PseudonymKey.hmac`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from guards.errors import KeyMissingError

MIN_KEY_BYTES = 16


class PseudonymKey:
    """A secret HMAC-SHA256 key. Its value never appears in repr, str, logs or exceptions."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise KeyMissingError(
                f"the pseudonym key is too short ({len(secret)} bytes); use at least {MIN_KEY_BYTES} random bytes,"
                " e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        self._secret = secret

    def hmac(self, message: bytes | str, *, purpose: str) -> bytes:
        """HMAC-SHA256 of ``message`` under the key, domain-separated by ``purpose`` (e.g. "uid", "date")."""
        data = message.encode("utf-8") if isinstance(message, str) else message
        return hmac.new(self._secret, purpose.encode("ascii") + b"\x00" + data, hashlib.sha256).digest()

    def fingerprint(self) -> str:
        """A short, non-reversible identifier of the key, safe to record (which key made a release)."""
        return hashlib.sha256(b"release-guard-key-id\x00" + self._secret).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"PseudonymKey(fingerprint={self.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("PseudonymKey cannot be pickled; pass the key source, not the key")


def key_from_text(text: str) -> PseudonymKey:
    """A key from its text form: hex is decoded, anything else is taken as UTF-8 bytes."""
    text = text.strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = text.encode("utf-8")
    return PseudonymKey(secret)


def load_key(key_file: str | Path | None = None, *, env: dict[str, str] | None = None) -> PseudonymKey:
    """The key from ``key_file`` if given, else ``GUARD_KEY``; refuses to run without one."""
    environ = os.environ if env is None else env
    if key_file is not None:
        p = Path(key_file)
        if not p.is_file():
            raise KeyMissingError(f"key file {str(p)!r} does not exist")
        return key_from_text(p.read_text(encoding="utf-8"))
    text = environ.get("GUARD_KEY", "")
    if not text.strip():
        raise KeyMissingError(
            "no pseudonym key: set GUARD_KEY or pass --key-file FILE (Release Guard refuses to run without one)"
        )
    return key_from_text(text)
