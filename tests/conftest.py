import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see pocketdiff/__init__.py

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes caches under a fresh temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path_factory.mktemp("cache")))
