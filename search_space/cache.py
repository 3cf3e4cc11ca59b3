"""The one cache root: prompt embeddings, domain classifiers, reference statistics, training FLOP counts,
study evaluations, latency features and Core ML packages all live under it.

$POCKETDIFF_CACHE when set (tests point it at a temporary folder), else ~/.cache/pocketdiff. It sits in the
lowest layer so that every layer above (training, latency_models, studies) shares it without importing sideways.
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

CACHE_ENV = "POCKETDIFF_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pocketdiff")


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def temporary_sibling(path: Path) -> Path:
    """A fresh name beside `path` for writing it atomically (write there, then `replace` onto `path`): unique per
    process and call, so concurrent workers filling the same cache entry never rename each other's file away."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


_SIBLING = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def remove_abandoned_siblings(folder: Path) -> list[Path]:
    """Remove the temporary siblings in `folder` whose writer (a process of this host, by the pid in the name)
    is gone: what a run killed in the middle of an atomic write leaves. Returns what was removed."""
    gone = []
    for path in Path(folder).glob(".*.tmp"):
        m = _SIBLING.match(path.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        gone.append(path)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process (or a pid no kernel hands out)
        return False
    except PermissionError:  # another user's process
        return True
    return True
