"""A fingerprint of the code that builds models and turns them into latency features.

Feature caches (predictor.cached_features) are keyed by it, not by a model id alone: a spec_id names an
architecture, but the ops a walk records also depend on how the builders realize that spec (blocks.py,
attention.py, ...) and on what the walk counts (features.py, roofline.py). Changing any of those files
invalidates every cached feature table, so no prediction is ever made from features of code that is gone.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every module of the builders (the whole search_space package: specs, blocks, attention, presets) and of
# the feature code; archs.py and export.py rebuild the library models and the wrappers the walk sees.
BUILDER_PACKAGES = ("search_space",)
FEATURE_FILES = ("latency_models/features.py", "latency_models/roofline.py", "latency_models/archs.py",
                 "latency_models/export.py", "latency_models/fingerprint.py")


def fingerprint_paths(root: Path = ROOT) -> list[Path]:
    """The files the fingerprint covers, in a fixed order."""
    paths = []
    for pkg in BUILDER_PACKAGES:
        paths += sorted((root / pkg).rglob("*.py"))
    paths += [root / f for f in FEATURE_FILES]
    return paths


def code_fingerprint(paths: list[Path] | None = None, root: Path = ROOT) -> str:
    """sha256 over (relative path, content) of every covered file; 16 hex digits."""
    paths = fingerprint_paths(root) if paths is None else paths
    h = hashlib.sha256()
    for p in paths:
        rel = p.relative_to(root) if p.is_relative_to(root) else p
        h.update(str(rel).encode() + b"\0")
        h.update(p.read_bytes() if p.exists() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def current_fingerprint() -> str:
    """The fingerprint of the code this process imported (computed once per process)."""
    return code_fingerprint()
