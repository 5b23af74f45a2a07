"""``lab keygen``: a new random key in a file only its owner can read."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from lab.errors import LabError
from lab.keys import fingerprint


def new_key_file(path: Path) -> str:
    """Write a fresh random key (256 bits, URL-safe text) to ``path`` with permissions 0600 and return its public
    fingerprint (never the key).

    ``path``: where the key goes; it must not exist yet (an existing key is never overwritten: losing a key means
    losing the ability to verify or extend a protected collection), and its folder must exist.
    """
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        raise LabError(f"key file {path} already exists; refusing to overwrite it (choose another path)")
    if not path.parent.is_dir():
        raise LabError(f"cannot create key file {path}: folder {path.parent} does not exist")
    key = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LabError(f"key file {path} already exists; refusing to overwrite it (choose another path)") from None
    except OSError as e:
        raise LabError(f"cannot create key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    os.chmod(path, 0o600)  # the umask may have removed bits, never added any; make it exact
    return fingerprint(key)
