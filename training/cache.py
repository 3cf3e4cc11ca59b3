"""Where cached artefacts live: prompt embeddings, domain classifiers, reference statistics.

$POCKETDIFF_CACHE when set (tests point it at a temporary folder), else ~/.cache/pocketdiff.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "POCKETDIFF_CACHE"


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pocketdiff")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
