"""The fingerprint of the code that builds models and turns them into latency features.

Feature caches (predictor.cached_features) and Core ML packages (export.py) are keyed by it: the ops a walk
records depend on how the builders realize a spec and on what the trace counts (search_space/fingerprint.py:
the builder fingerprint), and the features on how they are classified and fused (features.py, roofline.py).
Changing any of those files invalidates every cached feature table, so no prediction is ever made from
features of code that is gone.
"""
from __future__ import annotations

import functools
from pathlib import Path

from search_space.fingerprint import ROOT, builder_paths, code_fingerprint

# The feature code; archs.py and export.py rebuild the library models and the wrappers the walk sees.
FEATURE_FILES = ("latency_models/features.py", "latency_models/roofline.py", "latency_models/archs.py",
                 "latency_models/export.py", "latency_models/fingerprint.py")


def fingerprint_paths(root: Path = ROOT) -> list[Path]:
    """The files the fingerprint covers, in a fixed order: the builders (with the op trace), then the feature code."""
    return builder_paths(root) + [root / f for f in FEATURE_FILES]


@functools.lru_cache(maxsize=1)
def current_fingerprint() -> str:
    """The fingerprint of the code this process imported (computed once per process)."""
    return code_fingerprint(fingerprint_paths())
