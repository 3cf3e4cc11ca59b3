import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see pocketdiff/__init__.py

import uuid

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes caches under a fresh temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def postgres_url():
    """A fresh database on the server named by POCKETDIFF_TEST_POSTGRES_URL, dropped afterwards."""
    base = os.environ.get("POCKETDIFF_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("POCKETDIFF_TEST_POSTGRES_URL is not set (.ci/run sets it to the local PostgreSQL server)")
    import psycopg
    name = f"pocketdiff_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def study_file(tmp_path):
    """Write a study file under the test's folder: study_file(name, **sections) -> its path (tests/studyfiles.py
    says what the sections default to)."""
    from tests import studyfiles

    def write(name: str = "t", **sections):
        return studyfiles.write(tmp_path / f"{name}.toml", studyfiles.study(name, **sections))
    return write
