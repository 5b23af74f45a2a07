"""``lab keygen``: a new random key in a file only its owner can read."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from lab.errors import LabError
from lab.keys import fingerprint


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents with mode 0700 (exactly, whatever the umask); an existing folder
    is left as it is."""
    missing = []
    p = folder
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
            os.chmod(p, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise LabError(f"cannot create folder {p} for the key: {e.strerror or e}") from None
    if not folder.is_dir():
        raise LabError(f"cannot create the key file in {folder}: not a folder")


def new_key_file(path: Path) -> str:
    """Write a fresh random key (256 bits, URL-safe text) to ``path`` with permissions 0600 and return its public
    fingerprint (never the key).

    ``path``: where the key goes; it must not exist yet (an existing key is never overwritten: losing a key means
    losing the ability to verify or extend a protected collection). Missing folders on the way are created with
    mode 0700 (only the owner can list them: the private record goes next to the key by default).
    """
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        raise LabError(f"key file {path} already exists; refusing to overwrite it (choose another path)")
    make_private_folder(path.parent)
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
