"""The feature-cache fingerprint covers the builders and the feature code, and moves when they change."""
from __future__ import annotations

import shutil

from latency_models import fingerprint
from latency_models.fingerprint import fingerprint_paths
from search_space.fingerprint import ROOT, builder_fingerprint, builder_paths, code_fingerprint


def test_fingerprint_covers_every_builder_module_and_the_feature_code():
    covered = {p.relative_to(ROOT).as_posix() for p in fingerprint_paths()}
    builders = {p.relative_to(ROOT).as_posix() for p in (ROOT / "search_space").glob("*.py")}
    assert builders and builders <= covered
    for f in ("search_space/blocks.py", "search_space/unet.py", "search_space/attention.py",
              "latency_models/features.py", "latency_models/roofline.py", "latency_models/archs.py"):
        assert f in covered


def test_fingerprint_changes_when_a_builder_module_changes(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "search_space", root / "search_space")
    (root / "latency_models").mkdir()
    for f in fingerprint.FEATURE_FILES:
        shutil.copy(ROOT / f, root / f)
    before = code_fingerprint(fingerprint_paths(root), root)
    assert before == code_fingerprint(fingerprint_paths(root), root)  # deterministic
    assert before == fingerprint.current_fingerprint()  # a faithful copy fingerprints like the checkout
    blocks = root / "search_space" / "blocks.py"
    blocks.write_text(blocks.read_text() + "\n# a builder edit\n")
    after = code_fingerprint(fingerprint_paths(root), root)
    assert after != before
    walk = root / "latency_models" / "features.py"
    walk.write_text(walk.read_text().replace("ACTIVATION_BYTES = 2", "ACTIVATION_BYTES = 4"))
    assert code_fingerprint(fingerprint_paths(root), root) not in (before, after)


def test_feature_cache_key_carries_the_fingerprint():
    from latency_models.predictor import feature_cache_key

    key = feature_cache_key("preset:fig3-b|1x16x32x32|w16")
    assert fingerprint.current_fingerprint() in key and key.endswith("preset:fig3-b|1x16x32x32|w16")


def test_builder_fingerprint_covers_the_builders_and_the_trace_only():
    covered = {p.relative_to(ROOT).as_posix() for p in builder_paths()}
    assert {"search_space/trace.py", "search_space/blocks.py", "search_space/fingerprint.py"} <= covered
    assert not any(f.startswith("latency_models/") for f in covered)
    assert builder_fingerprint() == code_fingerprint(builder_paths())
    assert builder_fingerprint() != fingerprint.current_fingerprint()  # the feature code adds to it
