"""Private keys: loading, keyed derivation of randomness, and the public fingerprint.

The key itself is never printed, logged or written; results carry :func:`fingerprint` instead.
"""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from pydantic import SecretStr

from lab.errors import LabError


def fingerprint(key: str) -> str:
    """A short public identifier of a key (16 hex digits of a domain-separated SHA-256)."""
    return hashlib.sha256(b"lab-key-fingerprint/v1\0" + key.encode()).hexdigest()[:16]


def derive_seed(key: str, *context: object) -> int:
    """A 63-bit seed from HMAC-SHA256(key, context): same key and context, same seed; nothing of the key leaks."""
    message = "/".join(str(c) for c in context).encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def resolve_key(key: SecretStr | None, key_file: Path | None, where: str = "defense") -> str:
    """The key from a recipe: an inline ``key`` or a ``key_file`` (first line, stripped). Exactly one is needed."""
    if key is not None and key_file is not None:
        raise LabError(f"{where}: give either 'key' or 'key_file', not both")
    if key is not None:
        value = key.get_secret_value()
    elif key_file is not None:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise LabError(f"{where}.key_file: no such file: {path} (create one with `lab keygen {path}`)")
        value = path.read_text().strip()
    else:
        raise LabError(f"{where}: a key is required: set 'key_file: PATH' (or 'key: ...' for throwaway experiments)")
    if len(value) < 8:
        raise LabError(f"{where}: the key is too short ({len(value)} characters); use at least 8")
    return value
