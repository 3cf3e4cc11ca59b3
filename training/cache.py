"""The one cache root: prompt embeddings, domain classifiers, reference statistics, study evaluations
(studies/evaluate.py), latency features and Core ML packages (latency_models/) all live under it.

$POCKETDIFF_CACHE when set (tests point it at a temporary folder), else ~/.cache/pocketdiff.
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
