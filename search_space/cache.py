"""The one cache root: prompt embeddings, domain classifiers, reference statistics, training FLOP counts,
study evaluations, latency features and Core ML packages all live under it.

$POCKETDIFF_CACHE when set (tests point it at a temporary folder), else ~/.cache/pocketdiff. It sits in the
lowest layer so that every layer above (training, latency_models, studies) shares it without importing sideways.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "POCKETDIFF_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pocketdiff")


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
