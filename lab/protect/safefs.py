"""Reading and writing a collection's files without ever being led elsewhere.

A data owner's source audio must never be touched, and nothing may be written outside OUTPUT. A path string is
not enough for that: a folder inside OUTPUT replaced by a symbolic link to the sources (or anywhere else) would send
an ordinary ``open(OUTPUT/cat/a.wav, "w")`` into that folder. So everything under OUTPUT is reached one component
at a time from an open descriptor of OUTPUT itself, with ``O_NOFOLLOW``: a link anywhere on the way is an error
(:class:`LinkInOutput`), never followed. And a "file" named like audio that is not a regular file (a FIFO, which
would block forever; a device, which never ends) is refused by name when read (:class:`NotRegular`).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from lab.errors import LabError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_held: dict[int, int] = {}  # descriptor of each OUTPUT lock taken -> the process that took it (close_inherited_locks)


class LinkInOutput(OSError):
    """A component of a path under OUTPUT is a symbolic link (or not a folder)."""


class NotRegular(OSError):
    """A path named like audio is not a regular file (a FIFO, a device, a socket, a folder)."""


def read_regular(path: str | os.PathLike, follow: bool = True, dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (relative to the folder ``dir_fd`` when given). Opened without
    blocking (a FIFO would wait for a writer forever) and checked before anything is read: anything but a regular
    file raises :class:`NotRegular` naming what it is. ``follow=False``: a symbolic link is refused too."""
    with open_regular(path, follow, dir_fd) as f:
        return f.read()


def open_regular(path: str | os.PathLike, follow: bool = True, dir_fd: int | None = None) -> BinaryIO:
    """The regular file at ``path``, open for reading (a binary file object, seekable), with the checks of
    :func:`read_regular` made before it is returned: for reading a long file piece by piece."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP and not follow:
            raise NotRegular(errno.ELOOP, "a symbolic link (not followed)") from None
        raise
    f = os.fdopen(fd, "rb")
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(errno.EINVAL, f"not a regular file ({kind_of(mode)})")
    except BaseException:
        f.close()
        raise
    return f


def file_sha256(f: BinaryIO, piece: int = 1 << 20) -> str:
    """SHA-256 of the whole of the open file ``f``, read from its start piece by piece (bounded memory)."""
    digest = hashlib.sha256()
    f.seek(0)
    while True:
        blob = f.read(piece)
        if not blob:
            return digest.hexdigest()
        digest.update(blob)


def kind_of(mode: int) -> str:
    """What a file mode is, in words."""
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return word
    return "a special file"


def _open_dir(root: str, parts: list[str], create: bool) -> int:
    """A descriptor of the folder ``root/parts...``, reached component by component without following links
    (``create``: missing folders are made). Raises :class:`LinkInOutput` at a link."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for i, name in enumerate(parts):
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nxt = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[:i + 1])
                    raise LinkInOutput(e.errno, f"{where} is a symbolic link or not a folder; lab protect never "
                                                f"writes through links (remove it)") from None
                raise
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def _new_temp(root: str, rel: str, temp_suffix: str) -> Iterator[tuple[int, str]]:
    """A new temporary file beside ``root/rel`` (``.<name>.<pid><temp_suffix>``), never through a link: every
    folder on the way reached by :func:`_open_dir`, the file created new (``O_EXCL | O_NOFOLLOW``). Yields its
    descriptor (the block closes it) and its path (for messages and tests); renamed into place when the block ends
    normally (the rename replaces a link at the final name rather than following it), removed when it raises."""
    *parts, name = rel.split("/")
    dfd = _open_dir(root, parts, create=True)
    tmp = f".{name}.{os.getpid()}{temp_suffix}"
    try:
        try:
            os.unlink(tmp, dir_fd=dfd)  # a leftover of this same process id
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o644, dir_fd=dfd)
        try:
            yield fd, os.path.join(root, *parts, tmp)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def write_under(root: str, rel: str, blob: bytes, temp_suffix: str, fsync: bool = False) -> None:
    """Write ``blob`` to ``root/rel`` atomically (a temporary name beside it, renamed into place once complete),
    never through a link (:func:`_new_temp`)."""
    with _new_temp(root, rel, temp_suffix) as (fd, where):
        write_temp(fd, blob, fsync, where)


def write_temp(fd: int, blob: bytes, fsync: bool, where: str) -> None:
    """Write ``blob`` to the new temporary file ``fd`` (at ``where``, for messages and tests) and close it."""
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def writing_under(root: str, rel: str, temp_suffix: str, fsync: bool = False) -> Iterator[BinaryIO]:
    """:func:`write_under` for a file written piece by piece (a long recording): yields the new temporary file,
    open for reading and writing (an encoder may seek back to finish its header), with the same safety
    (:func:`_new_temp`); flushed (and fsynced), then renamed into place when the block ends normally; removed
    when it raises."""
    with _new_temp(root, rel, temp_suffix) as (fd, _):
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())


@contextmanager
def open_under(root: str, rel: str) -> Iterator[BinaryIO]:
    """The regular file ``root/rel`` open for reading, reached as :func:`read_under` reaches it (no link followed
    anywhere on the way): for reading a long output piece by piece."""
    *parts, name = rel.split("/")
    dfd = _open_dir(root, parts, create=False)
    try:
        f = open_regular(name, follow=False, dir_fd=dfd)
    finally:
        os.close(dfd)
    with f:
        yield f


def read_under(root: str, rel: str) -> bytes:
    """The bytes of the regular file ``root/rel``, reached without following any link (:class:`LinkInOutput` at a
    linked folder, :class:`NotRegular` for a linked or special file)."""
    *parts, name = rel.split("/")
    dfd = _open_dir(root, parts, create=False)
    try:
        return read_regular(name, follow=False, dir_fd=dfd)
    finally:
        os.close(dfd)


def links_under(root: Path, limit: int = 3) -> list[str]:
    """Up to ``limit`` symbolic links anywhere under ``root`` (not followed), as paths relative to it."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            if os.path.islink(os.path.join(dirpath, name)):
                found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
                if len(found) >= limit:
                    return found
    return found


def refuse_links(out: Path) -> None:
    """A one-line error when OUTPUT holds a symbolic link: writing through it could overwrite files outside OUTPUT
    (the sources themselves, when it points into INPUT)."""
    links = links_under(out)
    if links:
        shown = ", ".join(f"{rel} -> {os.readlink(out / rel)}" for rel in links)
        raise LabError(f"OUTPUT {out} holds a symbolic link ({shown}); lab protect never writes through links (it "
                       f"could overwrite files outside OUTPUT, your sources included): remove it and run again")


class OutputLock:
    """An exclusive lock on OUTPUT for one ``lab protect`` run (``shared=True``: a ``lab verify``, which may run
    beside other verifications but not beside a protect run). A ``flock`` on OUTPUT's own folder: nothing is written
    into OUTPUT for it, and the system releases it when the process ends, however it ends."""

    def __init__(self, out: Path, shared: bool = False):
        self.out, self.shared, self.fd = out, shared, None

    def __enter__(self) -> "OutputLock":
        self.fd = os.open(self.out, DIR_FLAGS)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            if self.shared:
                raise LabError(f"OUTPUT {self.out} is being written by a lab protect run; wait until it ends, then "
                               f"verify it") from None
            raise LabError(f"OUTPUT {self.out} is in use by another lab protect (or lab verify) run; wait until it "
                           f"ends and run again (two runs on one OUTPUT would undo each other's work)") from None
        _held[self.fd] = os.getpid()
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            _held.pop(self.fd, None)
            os.close(self.fd)
            self.fd = None


def close_inherited_locks() -> None:
    """In a forked worker process: close its copies of the parent's OUTPUT lock descriptors. The lock belongs to the
    open file, which every copy keeps open: a worker that outlived its parent (killed with -9) would otherwise
    hold OUTPUT locked until it noticed and exited, and the owner's next run would be refused meanwhile."""
    for fd, owner in list(_held.items()):
        if owner != os.getpid():  # a copy inherited through fork; in the process that took the lock: kept
            try:
                os.close(fd)
            except OSError:
                pass
            del _held[fd]
