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


MAX_KEY_BYTES = 4096  # a key file holds one line of text; anything larger is the wrong file


def read_key_file(path: Path, where: str) -> str:
    """The key in ``path`` (its text, stripped), or a one-line error saying what is wrong with the file."""
    if not path.is_file():
        raise LabError(f"{where}.key_file: no such file: {path} (create one with `lab keygen {path}`)")
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_KEY_BYTES + 1)
    except OSError as e:
        raise LabError(f"{where}.key_file: cannot read {path}: {e.strerror or e}") from None
    if len(blob) > MAX_KEY_BYTES:
        raise LabError(f"{where}.key_file: {path} is larger than {MAX_KEY_BYTES} bytes: not a key file (give the "
                       f"file `lab keygen` wrote)")
    try:
        return blob.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise LabError(f"{where}.key_file: {path} is not text (not UTF-8): not a key file (give the file `lab "
                       f"keygen` wrote)") from None


def resolve_key(key: SecretStr | None, key_file: Path | None, where: str = "defense") -> str:
    """The key from a recipe: an inline ``key`` or a ``key_file`` (first line, stripped). Exactly one is needed."""
    if key is not None and key_file is not None:
        raise LabError(f"{where}: give either 'key' or 'key_file', not both")
    if key is not None:
        value = key.get_secret_value()
    elif key_file is not None:
        value = read_key_file(Path(key_file).expanduser(), where)
    else:
        raise LabError(f"{where}: a key is required: set 'key_file: PATH' (or 'key: ...' for throwaway experiments)")
    if len(value) < 8:
        raise LabError(f"{where}: the key is too short ({len(value)} characters); use at least 8")
    return value
