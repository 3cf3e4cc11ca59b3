"""A fingerprint of code files: the sha256 of their paths and contents.

Caches of anything computed from a built model key on it, not on a spec_id alone: a spec_id names an
architecture, but what a model computes also depends on how the builders realize that spec (blocks.py,
attention.py, ...) and what the op trace counts (trace.py). `builder_fingerprint()` covers this whole package,
trace included; a layer above adds its own files to the list (latency_models/fingerprint.py: the feature code).
Changing any covered file changes the fingerprint, so no cached number of code that is gone is ever served.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: fingerprints hash paths relative to it
BUILDER_PACKAGES = ("search_space",)  # specs, blocks, attention, presets, builders and the op trace


def builder_paths(root: Path = ROOT) -> list[Path]:
    """Every module of the builders and the op trace, in a fixed order."""
    paths = []
    for pkg in BUILDER_PACKAGES:
        paths += sorted((root / pkg).rglob("*.py"))
    return paths


def code_fingerprint(paths: list[Path], root: Path = ROOT) -> str:
    """sha256 over (path relative to `root`, content) of every file in `paths`; 16 hex digits."""
    h = hashlib.sha256()
    for p in paths:
        rel = p.relative_to(root) if p.is_relative_to(root) else p
        h.update(str(rel).encode() + b"\0")
        h.update(p.read_bytes() if p.exists() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def builder_fingerprint() -> str:
    """The fingerprint of the builder and trace code this process imported (computed once per process)."""
    return code_fingerprint(builder_paths())
