"""The one cache root: prompt embeddings, domain classifiers, reference statistics, training FLOP counts,
study evaluations, latency features and Core ML packages all live under it.

$POCKETDIFF_CACHE when set (tests point it at a temporary folder), else ~/.cache/pocketdiff. It sits in the
lowest layer so that every layer above (training, latency_models, studies) shares it without importing sideways.
"""
from __future__ import annotations

import os
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
