"""Storage opened safely (studies/storage.py): workers that start together, readers that never write, strict URLs."""
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies import results as R
from studies.storage import StorageError, open_readonly, parse_url
from tests.studyfiles import TINY_SPACE

REPO = Path(__file__).resolve().parents[2]

SPACE = {**TINY_SPACE, "attention": {"choices": ["mqa", "mhsa"]}}


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pocketdiff.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def _tables(url: str) -> set[str]:
    import sqlalchemy
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_four_workers_started_together_on_a_fresh_postgres_database(study_file, postgres_url):
    """Optuna's table creation is check-then-create; without the schema lock 1-2 of 4 workers died with a
    duplicate-key error on PostgreSQL's catalog."""
    path = study_file("together", n_trials=8, space=SPACE)
    cmd = [sys.executable, "-m", "pocketdiff.cli", "study", "worker", str(path), "--storage", postgres_url,
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="together", storage=postgres_url)
    assert study.user_attrs["created"] is True and study.user_attrs["workers"] == 4
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) >= 8
    # each worker claimed its own index, so its own sampler seed
    seeds = {line for out, _ in outs for line in out.splitlines() if line.startswith("worker ")}
    assert len(seeds) == 4


def test_readers_on_a_missing_sqlite_file_create_nothing(tmp_path):
    db = tmp_path / "nothing" / "study.db"
    for args in (["study", "status", "--storage", f"sqlite:///{db}"],
                 ["study", "best", "--storage", f"sqlite:///{db}", "-o", str(tmp_path / "w.json")],
                 ["study", "export", "--storage", f"sqlite:///{db}", "-o", str(tmp_path / "x.csv")]):
        r = _cli(*args)
        assert r.returncode == 2, r.stderr
        assert f"no SQLite file at {db}" in r.stderr and "Traceback" not in r.stderr
    assert not db.exists() and not db.parent.exists()


def test_study_status_from_a_file_never_creates_its_database(tmp_path, study_file):
    path = study_file("fresh", n_trials=2, space=SPACE)
    r = _cli("study", "status", str(path), cwd=tmp_path)
    assert r.returncode == 2 and "no SQLite file" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


def test_readers_on_a_postgres_database_without_optuna_tables_create_nothing(postgres_url):
    with pytest.raises(StorageError, match="holds no Optuna study .*nothing was created"):
        open_readonly(postgres_url)
    with pytest.raises(R.ResultsError, match="holds no Optuna study"):
        R.study_names(postgres_url)  # what `pocketdiff app --storage` lists first
    r = _cli("study", "status", "--storage", postgres_url)
    assert r.returncode == 2 and "holds no Optuna study" in r.stderr, r.stderr
    assert _tables(postgres_url) == set()


def test_readonly_postgres_storage_refuses_writes(postgres_url):
    optuna.create_study(study_name="s", storage=postgres_url)
    storage = open_readonly(postgres_url)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
    with pytest.raises(Exception) as e:
        optuna.create_study(study_name="other", storage=storage)
    assert "read-only transaction" in repr(e.value.__cause__ or e.value.__context__)
    assert [s.study_name for s in optuna.get_all_study_summaries(postgres_url)] == ["s"]


@pytest.mark.parametrize("url, reason", [
    ("sqlite:///runs/a#b.db", "contains '#'"),
    ("sqlite:///runs/a.db?mode=ro", "'?query' in a SQLite URL"),
    ("sqlite:///file:runs/a.db?mode=ro&uri=true", "'?query' in a SQLite URL"),
    ("sqlite://runs/a.db", "three slashes"),
    ("sqlite:///", "names no file"),
    ("redis://localhost/0", "unknown scheme 'redis'"),
    ("postgres://u@h/db", "write postgresql://"),
    ("postgresql://u@h", "names no database"),
    ("runs/a.db", "is not a storage URL"),
])
def test_storage_urls_are_parsed_strictly(url, reason):
    with pytest.raises(StorageError, match=reason.replace("?", "\\?")):
        parse_url(url)


def test_a_bad_storage_url_is_refused_before_anything_is_written(tmp_path, study_file):
    path = study_file("s", n_trials=2, space=SPACE)
    for url in (f"sqlite:///{tmp_path}/a#b.db", f"sqlite:///{tmp_path}/q?mode=ro", "ftp://x/y"):
        r = _cli("study", "run", str(path), "--storage", url, "--no-progress", cwd=tmp_path)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_sqlite_paths_and_memory_parse():
    assert parse_url("sqlite:///runs/x/study.db").path == Path("runs/x/study.db")
    assert parse_url("sqlite:////tmp/x.db").path == Path("/tmp/x.db")
    assert parse_url("sqlite:///:memory:").is_memory
    assert parse_url("postgresql+psycopg://u@h:5432/db?sslmode=disable").scheme == "postgresql"


def _wal_study(folder: Path, leave_side_files: bool = False) -> str:
    """A write-ahead-logged SQLite study with one finished trial in `folder` (as `study run` leaves it); with
    `leave_side_files`, a last commit left in its -wal file (what a killed writer leaves), copied with -shm."""
    import shutil

    from studies.storage import open_for_writing
    url = f"sqlite:///{folder}/s.db"
    storage = open_for_writing(url)
    study = optuna.create_study(study_name="ro", storage=storage)
    study.add_trial(optuna.create_trial(value=1.0))
    if leave_side_files:
        keep = folder.parent / "copy"
        keep.mkdir()
        study.add_trial(optuna.create_trial(value=2.0))  # committed to the -wal file, not yet to s.db
        for name in ("s.db", "s.db-wal", "s.db-shm"):
            shutil.copy(folder / name, keep / name)
    storage.engine.dispose()
    if leave_side_files:
        for name in ("s.db", "s.db-wal", "s.db-shm"):
            shutil.copy(keep / name, folder / name)
    assert (folder / "s.db").read_bytes()[18:20] == b"\x02\x02"  # write-ahead logged
    return url


def test_a_wal_study_in_a_read_only_folder_is_read_immutable(tmp_path, make_readonly):
    """SQLite wants to create s.db-wal and s.db-shm beside a WAL file even to read it; in a folder nobody may
    write (a read-only mount) `study status` and the explorer open it immutable instead."""
    folder = tmp_path / "study"
    folder.mkdir()
    url = _wal_study(folder)
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == ["s.db"]
    make_readonly(folder)
    assert "immutable=1" in R.readonly_url(url)
    assert [t.value for t in optuna.load_study(study_name="ro", storage=open_readonly(url)).get_trials()] == [1.0]
    assert len(R.load_frame(url, "ro")[0]) == 1  # the explorer's loader
    r = _cli("study", "status", "--storage", url)
    assert r.returncode == 0 and "trials: COMPLETE 1" in r.stdout, r.stderr


def test_a_wal_study_in_a_writable_folder_or_with_its_side_files_is_not_read_immutable(tmp_path, make_readonly):
    """Immutable ignores the -wal file: only where SQLite cannot make its side files, and never over commits
    that are still in the -wal file."""
    writable = tmp_path / "writable"
    writable.mkdir()
    assert "immutable" not in R.readonly_url(_wal_study(writable))  # a running study's readers see new commits
    folder = tmp_path / "study"
    folder.mkdir()
    url = _wal_study(folder, leave_side_files=True)
    make_readonly(folder)
    assert "immutable" not in R.readonly_url(url)
    assert [t.value for t in optuna.load_study(study_name="ro", storage=open_readonly(url)).get_trials()] == [1.0, 2.0]
    (tmp_path / "copy" / "s.db-shm").unlink()
    lone = tmp_path / "lone"
    lone.mkdir()
    for name in ("s.db", "s.db-wal"):
        (lone / name).write_bytes((tmp_path / "copy" / name).read_bytes())
    make_readonly(lone)
    with pytest.raises(StorageError, match="last commits are in s.db-wal without s.db-shm"):
        open_readonly(f"sqlite:///{lone}/s.db")
