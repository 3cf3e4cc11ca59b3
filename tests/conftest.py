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


def _mount(*args: str) -> bool:
    import subprocess
    return os.geteuid() == 0 and subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def make_readonly():
    """make_readonly(folder) -> the folder, from now on read-only even for root: a read-only bind mount of it
    over itself where this process may mount (root with CAP_SYS_ADMIN), else its write permission removed (which
    binds any other user); skipped for a root that cannot mount."""
    import subprocess
    mounted, chmodded = [], []

    def make(folder):
        if _mount("--bind", str(folder), str(folder)):
            mounted.append(folder)
            if not _mount("-o", "remount,ro,bind", str(folder)):
                pytest.skip("cannot remount a bind mount read-only here")
        elif os.geteuid() == 0:
            pytest.skip("root ignores permission bits and cannot mount here: no read-only folder to test with")
        else:
            folder.chmod(0o555)
            chmodded.append(folder)
        return folder
    yield make
    for folder in mounted:  # lazily: a test's storage may still hold a connection open in it
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
    for folder in chmodded:
        folder.chmod(0o755)


@pytest.fixture
def readonly_folder(tmp_path, make_readonly):
    """An empty folder nothing can be written into (`make_readonly`)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    return make_readonly(folder)


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kib) -> a folder on a tmpfs of that size (a disk that fills up for real); skipped where this
    process cannot mount one (tests of the same rules with a simulated ENOSPC run everywhere)."""
    import subprocess
    mounted = []

    def make(kib: int):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if not _mount("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)):
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        mounted.append(folder)
        return folder
    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)
