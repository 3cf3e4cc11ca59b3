"""Where the workbench writes: checks made before any work starts, and writes that leave the old file or the new
one, never half of one.

- `check_output_dir(path, flag)` / `check_output_file(path, flag)`: a command's output folder (or the folder of
  its output file) can be created and written, and nothing is in the way (a file where a folder must go, a
  folder where a file must go). Otherwise OutputError naming the flag and the path, before any work.
- `atomic_write(path)`: the block writes a temporary sibling, which is renamed onto `path` when the block
  succeeds and removed when it fails, so a checkpoint, cache entry or measurement store already there is never
  half overwritten. `append=True` starts the sibling as a copy of the file (stores that grow by rows).
- `disk_errors(path)`: a full disk, an exhausted quota or a read-only file system while writing `path` becomes
  OutputError naming it (one line; the CLI exits 2); `disk_error` makes that error for one the CLI catches
  unwrapped.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from .cache import temporary_sibling
from .errors import UserError

# errno -> what it means for the user; a failure with one of these is the machine's, not the input's
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the file system is read-only"}
# Rust bindings (safetensors) report an I/O failure only in their message: "... (os error 28)"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# SQLite reports a full disk as SQLITE_FULL, in words only (through SQLAlchemy's OperationalError)
_SQLITE_FULL = "database or disk is full"


class OutputError(UserError):
    """An output cannot be written: a file in the way, a folder that is not writable, a full disk. `errno` is
    the system's error number for a failure while writing (None for a check refused before any work)."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def writable(folder: str | Path) -> bool:
    """Whether files can be created in an existing `folder` (permission bits, and a read-only mount even for
    root)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_output_dir(path: str | Path, flag: str) -> Path:
    """`path` as a folder a command will write into: it exists or can be created (no file at it or above it),
    and its nearest existing folder is writable. Raises OutputError naming `flag` and the path; creates
    nothing."""
    return _check_folder(Path(path), flag, Path(path))


def _check_folder(folder: Path, flag: str, shown: Path) -> Path:
    """`check_output_dir` of `folder`, for the output `shown` (the folder itself, or a file inside it)."""
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        what = "is a file" if existing == shown else f"cannot be created: {existing} is a file"
        raise OutputError(f"{flag} {shown} {what}; remove it or choose another folder")
    if not writable(existing):
        raise OutputError(f"{flag} {shown} cannot be written: {existing} is not writable (read-only or no "
                          f"permission); choose another folder")
    return folder


def check_output_file(path: str | Path, flag: str, package: bool = False) -> Path:
    """`path` as a file a command will write (or, `package=True`, a folder written whole, such as an
    .mlpackage): nothing of the other kind at it, and its folder passes `check_output_dir`."""
    path = Path(path)
    if package and os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; remove it or choose another name")
    if not package and path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name inside it")
    _check_folder(path.parent, flag, path)
    return path


def disk_errno(e: BaseException) -> int | None:
    """The full-disk / quota / read-only errno behind `e` (found along its cause chain: torch wraps the OSError
    of a file object in a RuntimeError; safetensors names it in its message, SQLite in words), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (OSError, OutputError)) and e.errno in DISK_ERRNOS:
            return e.errno
        m = _RUST_OS_ERROR.search(str(e))
        if m and int(m.group(1)) in DISK_ERRNOS:
            return int(m.group(1))
        if _SQLITE_FULL in str(e):
            return errno.ENOSPC
        e = e.__cause__ or e.__context__
    return None


def disk_error(e: BaseException, path: str | Path | None = None) -> OutputError | None:
    """The OutputError to report for `e` if a full disk, an exhausted quota or a read-only file system is behind
    it (naming `path`, else the file the error names), else None."""
    if isinstance(e, OutputError):
        return e if e.errno in DISK_ERRNOS else None
    code = disk_errno(e)
    if code is None:
        return None
    where = path if path is not None else getattr(e, "filename", None) or "an output file"
    kept = " (what was stored before is unchanged)" if path is not None else ""  # only an atomic writer knows
    return OutputError(f"cannot write {where}: {DISK_ERRNOS[code]}; free space or choose another folder, then run "
                       f"again{kept}", code)


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full disk, an exhausted quota or a read-only file system inside the block into OutputError naming
    `path`; other errors pass unchanged."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        error = disk_error(e, path)
        if error is None:
            raise
        raise error from None


@contextlib.contextmanager
def atomic_write(path: str | Path, append: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file, or a folder such as an .mlpackage); when the block
    succeeds it replaces `path` in one rename, when it fails it is removed and `path` is as it was. With
    `append`, the sibling starts as a copy of `path` (if any), under a lock beside it held until the rename, so
    two processes appending at once both keep their rows. A full disk is reported by `disk_errors`."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with disk_errors(path), contextlib.ExitStack() as held:
            if append:
                lock = held.enter_context(open(path.with_name(f".{path.name}.lock"), "a"))
                fcntl.flock(lock, fcntl.LOCK_EX)  # freed when the file closes (or the process dies)
                if path.is_file():
                    shutil.copyfile(path, tmp)
            yield tmp
            if tmp.is_dir() and path.is_dir():
                shutil.rmtree(path)  # a folder cannot be renamed over another; the old one goes just before
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            tmp.unlink()


def save_torch(obj, path: str | Path) -> None:
    """torch.save through a Python file object: a full disk then surfaces as OSError (torch.save given a path
    reports it only as "unexpected pos")."""
    import torch

    with open(path, "wb") as f:
        torch.save(obj, f)
