"""Files private to the user that runs the pipeline: files 0600, folders 0700, whatever the umask.

Everything the project writes (staging partitions, manifests, lock and `.readers` files, Spark logs and job
specs, the jobs archive, the SQLite database) holds customer data or says who runs what, so no other local
user may read it. Modes are set explicitly where the project creates a file or folder, and a run holds a
0o077 umask (`umask_private`) for what others create on its behalf: pyarrow's Parquet writer, spark-submit's
JVM and the job's Python driver. Lock and temporary files are opened with O_NOFOLLOW: a symbolic link
planted at their path is refused (`UnsafePath`), never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UnsafePath

FILE_MODE = 0o600
DIR_MODE = 0o700
PRIVATE_UMASK = 0o077


@contextmanager
def umask_private() -> Iterator[None]:
    """Hold a 0o077 umask for the block (process-wide: children started inside inherit it)."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def private_open(path: Path | str, flags: int) -> int:
    """`os.open` of a file this user only may read: created 0600, never through a symbolic link, not
    inherited by children. An existing file of this user's with a wider mode (an older release made it)
    is tightened."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(
                f"{path} is a symbolic link: refusing to follow it (lock and temporary files are opened "
                "only as regular files; remove the link)"
            ) from None
        raise
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_write(path: Path, data: str | bytes, *, exclusive: bool = False) -> None:
    """Write a whole file 0600 (`exclusive`: it must not exist yet, as a temporary file's name)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    with os.fdopen(private_open(path, flags), "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def private_create(path: Path) -> None:
    """Create an empty 0600 file that another writer then fills (opening it with O_TRUNC keeps its mode)."""
    os.close(private_open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))


def private_dirs(path: Path, *, owned_from: Path | None = None) -> Path:
    """Make `path` and its missing parents, each 0700. Folders from `owned_from` (`path` or an ancestor)
    down to `path` are the project's own: one that exists with a wider mode is tightened to 0700. A folder
    above it (a user-supplied parent such as /tmp), or any when `owned_from` is None, is only made."""
    path = Path(path)
    owned = [path] if owned_from is not None else []
    while owned and owned[-1] != owned_from:
        if owned[-1] == owned[-1].parent:
            raise ValueError(f"{owned_from} is not {path} nor one of its parents")
        owned.append(owned[-1].parent)
    missing = []
    folder = path
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            pass  # another writer made it meanwhile: tightened below when it is ours
    for folder in reversed(owned):
        _dir_tighten(folder)
    return path


def _dir_tighten(folder: Path) -> None:
    info = os.lstat(folder)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(folder, DIR_MODE)


def file_tighten(path: Path) -> None:
    """Make an existing file of this user's 0600 (without following a link); a missing one is left."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(path, FILE_MODE)
