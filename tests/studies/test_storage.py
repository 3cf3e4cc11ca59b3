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
from tests import studyfiles
from tests.studies.fake_workers import designs, single_budget_study
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
    ("journal:///runs/a#b.log", "contains '#'"),
    ("journal://runs/a.log", "three slashes"),
    ("journal:///runs/", "names no file"),
    ("journal:///runs/a.log?lock=open", "'?query' in a journal URL"),
    ("journal+nfs:///runs/a.log", "journal takes no driver"),
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


def test_a_hash_written_as_percent_23_names_the_file_with_the_hash(tmp_path):
    """The '#' refusal recommends %23: that spelling opens the file whose name has the '#', for writers (and their
    lock files) and for readers, and nothing is written under the encoded name."""
    from studies.storage import open_for_writing

    with pytest.raises(StorageError, match="write the '#' as %23"):
        parse_url(f"sqlite:///{tmp_path}/a#b.db")
    url = f"sqlite:///{tmp_path}/a%23b.db"
    assert parse_url(url).path == tmp_path / "a#b.db"
    optuna.create_study(study_name="s", storage=open_for_writing(url))
    assert [s.study_name for s in optuna.get_all_study_summaries(open_readonly(url))] == ["s"]
    r = _cli("study", "status", "--storage", url)
    assert r.returncode == 0 and "study s" in r.stdout, r.stderr
    assert (tmp_path / "a#b.db").is_file() and not list(tmp_path.glob("*%23*"))


# --- journal:///: one file on a shared filesystem, no database server ----------------------------------------

def test_journal_urls_parse_like_sqlite_paths():
    assert parse_url("journal:///runs/x/study.log").path == Path("runs/x/study.log")
    assert parse_url("journal:////shared/x/study.log").path == Path("/shared/x/study.log")
    assert parse_url("journal:///runs/a%23b.log").path == Path("runs/a#b.log")


def test_journal_readers_write_nothing(tmp_path):
    """A missing journal is an error that creates nothing; a stored study is read, and the reader's storage
    refuses to append; a file with no study in it is one line."""
    from studies.storage import open_for_writing

    missing = tmp_path / "none" / "study.log"
    r = _cli("study", "status", "--storage", f"journal:///{missing}")
    assert r.returncode == 2 and "no journal file at" in r.stderr and not missing.parent.exists(), r.stderr

    url = f"journal:///{tmp_path}/study.log"
    optuna.create_study(study_name="s", storage=open_for_writing(url)).enqueue_trial({})
    before = (tmp_path / "study.log").read_bytes()
    storage = open_readonly(url)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
    with pytest.raises(PermissionError, match="opened read-only"):
        optuna.create_study(study_name="other", storage=storage)
    r = _cli("study", "status", "--storage", url)
    assert r.returncode == 0 and "study s" in r.stdout, r.stderr
    assert (tmp_path / "study.log").read_bytes() == before

    (tmp_path / "empty.log").write_text("")
    r = _cli("study", "status", "--storage", f"journal:///{tmp_path}/empty.log")
    assert r.returncode == 2 and "holds no Optuna study" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.filterwarnings("ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_journal_trial_whose_heartbeat_stops_is_failed_and_requeued(tmp_path, monkeypatch):
    """Optuna has heartbeats for RDB storages only; the journal's make a worker killed on another host lose
    nothing: its RUNNING trial goes stale after grace_period, is failed, and RequeueKilled queues it again."""
    import time

    from studies import journal
    from studies.storage import open_for_writing
    from studies.workers import RequeueKilled

    storage = open_for_writing(f"journal:///{tmp_path}/study.log", heartbeat_interval=1, grace_period=2,
                               heartbeat_stale_trial_callback=RequeueKilled(max_retry=1))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING  # beating: not stale

    now = time.time()
    monkeypatch.setattr(journal.time, "time", lambda: now + 3)  # no beat for 3 s > grace_period
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.get_trials()[1].params == study.get_trials()[0].params


def test_four_workers_share_one_journal_file(tmp_path):
    """Four `study worker` processes on one journal file (the flock beside it serialises claims and sampling):
    every trial ends exactly once, in one worker, nothing is left running or queued, and the study holds
    exactly n_trials distinct finished designs, each evaluated once."""
    from tests.studies import fake_workers

    path, storage = single_budget_study(tmp_path, "journal", n_trials=8), f"journal:///{tmp_path}/shared/study.log"
    # one sampler seed for all: the workers propose the same designs at the same moments, so their claims
    # collide (without the journal's lock 1 run in 3 evaluated a design twice)
    env = {"FAKE_QUALITY_SLEEP": "0.3", "FAKE_SAME_SEED": "1"}
    outs = fake_workers.finish([fake_workers.start(path, storage, env=env) for _ in range(4)])
    trials = optuna.load_study(study_name="journal", storage=open_readonly(storage)).get_trials()
    assert designs(trials) == (8, 8)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    ran = [int(line.split()[1]) for out, _ in outs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(ran) == [t.number for t in trials]  # each trial ended once, in one worker: none lost or twice
    assert sum(any(line.startswith("trial ") for line in out.splitlines()) for out, _ in outs) >= 2


@pytest.mark.slow  # 160 s on the 2-core machine (2026-12-07; 8 processes sharing 2 cores)
def test_eight_workers_x_200_trials_on_postgres_lose_and_repeat_nothing(tmp_path, postgres_url):
    """The scale-out path at size: 8 `study worker` processes started together on a fresh PostgreSQL database,
    200 cheap trials (the stand-in evaluator without sleep). Every trial ends exactly once, in one worker; nothing
    is left running or queued; the study holds exactly 200 distinct finished designs, each evaluated once."""
    from tests.studies import fake_workers

    space = {**studyfiles.SNAPGEN_SPACE, "ffn_ratio": {"low": 2.0, "high": 4.0, "step": 0.05}}  # 738 designs
    path = single_budget_study(tmp_path, "wide", n_trials=N_WIDE, space=space)
    outs = fake_workers.finish([fake_workers.start(path, postgres_url) for _ in range(8)], timeout=1200)
    trials = optuna.load_study(study_name="wide", storage=open_readonly(postgres_url)).get_trials()
    assert designs(trials) == (N_WIDE, N_WIDE)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    ran = [int(line.split()[1]) for out, _ in outs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(ran) == [t.number for t in trials]
    assert sum(any(line.startswith("trial ") for line in out.splitlines()) for out, _ in outs) >= 4


N_WIDE = 200


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
