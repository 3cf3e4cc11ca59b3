"""Crash safety of studies (docs/studies.md): worker seeds, no duplicate work, ghost trials, presets that survive kills,
a creation cut short. In-process and cost-only, so each test takes seconds."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies.config import load_study_file
from studies.objective import _twin
from studies.opening import open_storage, open_study, worker_seed
from studies.runner import run_study
from studies.storage import StudyError
from studies.workers import fail_ghost_trials
from tests import studyfiles

def _cfg(tmp_path, name="c", n_trials=3, ffn=(2.0, 3.0, 4.0), presets=()):
    path = studyfiles.write(tmp_path / f"{name}.toml", studyfiles.study(
        name, n_trials=n_trials, study={"seed": 7, "max_retry": 1},
        space={"base": "tiny-debug", "ffn_ratio": {"choices": list(ffn)}}, enqueue={"presets": list(presets)}))
    return load_study_file(path, storage=f"sqlite:///{tmp_path}/s.db")


def _quiet(cfg, **kw):
    lines = []
    study, _ = run_study(cfg, progress=False, echo=lines.append, **kw)
    return study, lines


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _ghost(study, **attrs):
    """A RUNNING trial left by a process on this host that is gone (what a SIGKILL leaves)."""
    trial = study.ask()
    for k, v in {"worker_host": socket.gethostname(), "worker_pid": _dead_pid(), **attrs}.items():
        trial.set_user_attr(k, v)
    return trial.number


def test_each_run_claims_its_own_sampler_seed(tmp_path):
    cfg = _cfg(tmp_path, n_trials=2)
    _, first = _quiet(cfg)
    _, second = _quiet(cfg, n_trials=1)
    assert first[0] == "worker 0 of study c: sampler seed 7 (study seed 7)"
    assert second[0].startswith(f"worker 1 of study c: sampler seed {worker_seed(7, 1)} ")
    assert worker_seed(7, 1) != 7 and worker_seed(7, 1) != worker_seed(7, 2) and worker_seed(7, 1) != worker_seed(8, 1)
    assert optuna.load_study(study_name="c", storage=cfg.storage).user_attrs["workers"] == 2


def test_a_spec_already_finished_is_reused_not_evaluated_again(tmp_path):
    from studies.halving import REPROPOSAL_LIMIT

    cfg = _cfg(tmp_path, n_trials=3, ffn=(2.0,))  # one point: every sampled spec is the same
    study, lines = _quiet(cfg)
    trials = study.get_trials()
    # a re-proposal counts for nothing: the run looks for 3 designs until the re-proposal limit stops it
    assert [t.state for t in trials] == [TrialState.COMPLETE] * REPROPOSAL_LIMIT * 3
    assert "reused_from" not in trials[0].user_attrs and "latency_ms" in trials[0].user_attrs
    assert [t.user_attrs.get("reused_from") for t in trials[1:]] == [0] * (REPROPOSAL_LIMIT * 3 - 1)
    assert all(t.values == trials[0].values for t in trials)
    assert "reused the result of trial 0" in lines[-1]


def test_a_spec_running_or_queued_elsewhere_is_resampled_and_not_counted(tmp_path):
    cfg = _cfg(tmp_path, n_trials=4, ffn=(2.0, 3.0))
    study = open_study(cfg)
    spec = cfg.space.sample(optuna.trial.FixedTrial({"ffn_ratio": 2.0}))
    other = study.ask()  # another worker's trial, training ffn_ratio=2.0 right now
    other.set_user_attr("spec_id", spec.spec_id)
    study, lines = _quiet(cfg)
    trials = study.get_trials()
    dups = [t for t in trials if t.user_attrs.get("duplicate_of") is not None]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert dups and all(t.state == TrialState.PRUNED and t.user_attrs["duplicate_of"] == other.number
                        and t.user_attrs["spec_id"] == spec.spec_id for t in dups)
    assert any(f"re-sampled: spec {spec.spec_id} is already running in trial {other.number}" in l for l in lines)
    # the duplicates do not count, nor do re-proposals of the other spec: it was evaluated once, and the run went
    # on re-proposing it until the re-proposal limit
    assert {t.params["ffn_ratio"] for t in done} == {3.0}
    assert len([t for t in done if "reused_from" not in t.user_attrs]) == 1 and len(done) > 4
    # a queued spec counts as taken too
    queued = study.enqueue_trial({"ffn_ratio": 2.0}) or study.get_trials()[-1]
    assert queued.state == TrialState.WAITING
    assert _twin(cfg, study, -1, spec.spec_id, 0).number in (other.number, queued.number)


def test_ghost_trial_of_a_dead_process_is_failed_and_requeued_at_once(tmp_path):
    cfg = _cfg(tmp_path, n_trials=2)  # grace period 90 s: the heartbeat rule alone would leave it RUNNING
    study = open_study(cfg, open_storage(cfg.storage, cfg))
    ghost = _ghost(study)
    mine = study.ask()  # a live process's trial (this one): left alone
    for k, v in {"worker_host": socket.gethostname(), "worker_pid": __import__("os").getpid()}.items():
        mine.set_user_attr(k, v)
    assert fail_ghost_trials(study) == [ghost]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[ghost].state == TrialState.FAIL and "is gone" in trials[ghost].user_attrs["killed"]
    assert trials[mine.number].state == TrialState.RUNNING
    requeued = [t for t in trials.values() if t.system_attrs.get("failed_trial") == ghost]
    assert len(requeued) == 1 and requeued[0].state == TrialState.WAITING
    assert "worker_pid" not in requeued[0].user_attrs  # the copy is not itself a ghost
    assert fail_ghost_trials(study) == []  # idempotent


def test_a_preset_killed_again_and_again_is_requeued_until_it_finishes(tmp_path):
    cfg = _cfg(tmp_path, n_trials=2, presets=("tiny-debug",))
    storage = open_storage(cfg.storage, cfg)
    study = open_study(cfg, storage)
    for kill in range(3):  # max_retry = 1 would give up after the first retry
        waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
        assert len(waiting) == 1 and waiting[0].user_attrs["enqueued_preset"] == "tiny-debug", kill
        _ghost(study)  # the worker takes the queued preset and is killed
        assert fail_ghost_trials(study)
    study, _ = _quiet(cfg)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert [t.user_attrs.get("enqueued_preset") for t in done].count("tiny-debug") == 1
    assert sum(t.state == TrialState.FAIL for t in study.get_trials()) == 3


def test_a_sampled_trial_killed_twice_is_given_up_after_max_retry(tmp_path):
    cfg = _cfg(tmp_path, n_trials=2)
    study = open_study(cfg, open_storage(cfg.storage, cfg))
    first = _ghost(study)
    fail_ghost_trials(study)
    study.ask()  # the retry is taken ...
    retry = study.get_trials()[-1]
    assert retry.system_attrs.get("failed_trial") == first
    study._storage.set_trial_user_attr(retry._trial_id, "worker_host", socket.gethostname())
    study._storage.set_trial_user_attr(retry._trial_id, "worker_pid", _dead_pid())
    assert fail_ghost_trials(study) == [retry.number]  # ... and killed again: not re-queued a second time
    assert not [x for x in study.get_trials() if x.state == TrialState.WAITING]


def test_a_creation_cut_short_is_finished_by_the_next_opener(tmp_path):
    cfg = _cfg(tmp_path, n_trials=2, presets=("tiny-debug",))
    # what a kill right after optuna's create_study left: no definition, no metric names, no presets
    optuna.create_study(study_name="c", storage=open_storage(cfg.storage), directions=cfg.directions)
    study = open_study(cfg)
    assert study.user_attrs["created"] is True and study.user_attrs["metric_names"] == ["params_m"]
    assert study.user_attrs["definition"] == cfg.fingerprint()
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs["enqueued_preset"] for t in waiting] == ["tiny-debug"]
    open_study(cfg)  # finished once: nothing enqueued twice
    assert len(study.get_trials()) == 1
    changed = _cfg(tmp_path, name="c", n_trials=2, ffn=(2.0,), presets=("tiny-debug",))
    with pytest.raises(StudyError, match="different definition"):
        open_study(changed)


@pytest.mark.slow  # about 80 s on 2 cores
def test_ten_random_sigkills_lose_nothing_and_repeat_nothing(tmp_path):
    """SIGKILL `study run` 10 times at random moments (start-up, creation, claims, mid-trial), then let it finish:
    no finished trial is lost or changed, none stays RUNNING, the presets finish, no spec is evaluated twice.
    The grace period (60 s) is longer than the test: only the dead-PID rule can free the killed trials."""
    import random
    import time

    space = {k: v for k, v in studyfiles.SNAPGEN_SPACE.items() if k != "attention"}
    path = studyfiles.write(tmp_path / "killed.toml", studyfiles.study(
        "killed", n_trials=10, study={"seed": 5, "heartbeat_interval": 1, "grace_period": 60},
        target={"latent": 64}, space=space, objectives={"latency_ms": "minimize", "params_m": "minimize"},
        enqueue={"presets": ["snapgen-unet", "fig3-a"]}))
    storage = f"sqlite:///{tmp_path}/s.db"
    cmd = [sys.executable, "-m", "pocketdiff.cli", "study", "run", str(path), "--storage", storage, "--no-progress"]
    rng = random.Random(16)
    seen: dict[int, tuple] = {}
    kills = 0
    for _ in range(10):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 8.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
        except KeyError:
            continue  # killed before the study existed
        for t in trials:
            if t.state == TrialState.COMPLETE:
                assert seen.setdefault(t.number, tuple(t.values)) == tuple(t.values)
    assert kills >= 5, "the study finished before most kills; the test needs longer trials"
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    trials = study.get_trials()
    assert study.user_attrs["created"] is True
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for number, values in seen.items():  # no finished trial lost or changed
        assert trials[number].state == TrialState.COMPLETE and tuple(trials[number].values) == values
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sum(t.user_attrs.get("duplicate_of") is None for t in trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)) >= 10
    presets = [t.user_attrs.get("enqueued_preset") for t in done]
    assert presets.count("snapgen-unet") == 1 and presets.count("fig3-a") == 1
    evaluated = [t.user_attrs["spec_id"] for t in done if "reused_from" not in t.user_attrs]
    assert len(evaluated) == len(set(evaluated)), "a spec was evaluated twice"
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "no kill landed in a trial; the test did not exercise the ghost rule"
    for t in failed:  # each was killed mid-trial, failed by the dead-PID rule and re-queued
        assert "is gone" in t.user_attrs["killed"]
        assert any(x.system_attrs.get("retry_history", [None])[-1] == t.number for x in trials)


REPO = Path(__file__).resolve().parents[2]
PARENT_OF_A_WORKER = '''
import subprocess, sys, time
from studies import workers
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         preexec_fn=workers._die_with_parent)
print(child.pid, flush=True)
time.sleep(120)
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's (prctl)")
def test_a_local_worker_ends_when_its_study_run_is_killed():
    """`study run` with jobs > 1 starts `study worker` processes; a SIGKILL of the run must not leave them
    training unseen (they would hold the cores and their trials' claims)."""
    import signal
    import time
    from studies.workers import process_alive
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_A_WORKER], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    assert process_alive(child, None)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while process_alive(child, None) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = process_alive(child, None)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the worker outlived the run that started it"


def test_local_workers_are_started_to_die_with_their_run(monkeypatch):
    from studies import workers
    started = []
    monkeypatch.setattr(workers.subprocess, "Popen", lambda cmd, **kw: started.append((cmd, kw)))
    workers.start_local_workers("s.toml", "sqlite:///s.db", 2)
    assert len(started) == 2
    assert all(kw["preexec_fn"] is workers._die_with_parent and kw["env"]["OMP_NUM_THREADS"] == "1"
               for _, kw in started)
    assert started[0][0][-4:] == ["--storage", "sqlite:///s.db", "--no-progress", "--no-summary"]


def _failing_once(monkeypatch, error: Exception, times: int = 1):
    """The cheap evaluators raise `error` on their first `times` calls (a full disk, a cache race), then work."""
    from studies import evaluate
    real, calls = evaluate.cheap_metrics, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= times:
            raise error
        return real(*args, **kwargs)
    monkeypatch.setattr(evaluate, "cheap_metrics", flaky)


def test_a_trial_failed_by_a_full_disk_is_queued_again_once_and_the_run_still_finishes(tmp_path, monkeypatch):
    import errno
    cfg = _cfg(tmp_path, n_trials=2)
    _failing_once(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    study, lines = _quiet(cfg)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["environmental"] is True
    assert "queued again once" in failed[0].user_attrs["fail_reason"]
    retry = [t for t in trials if t.system_attrs.get("environmental_retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
    assert "environmental" not in retry[0].user_attrs
    # the failure gave its attempt back: the run ended with the file's 2 finished designs (a re-proposed design
    # reuses its twin's result and is no new one)
    assert len({t.user_attrs["spec_id"] for t in trials if t.state == TrialState.COMPLETE}) == 2


def test_a_retry_that_fails_again_is_not_queued_a_third_time(tmp_path, monkeypatch):
    import errno
    cfg = _cfg(tmp_path, n_trials=1)
    _failing_once(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), times=10)
    study, _ = _quiet(cfg)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert trials[1].system_attrs["environmental_retry_of"] == 0 and "environmental" not in trials[1].user_attrs


def test_a_preset_lost_to_a_cache_race_is_retried_once_not_twice(tmp_path, monkeypatch):
    """The race of the issue: a worker's text-embedding cache file vanished under it (FileNotFoundError on the
    cache); the enqueued preset is queued again by the objective, so the preset rule adds no second copy."""
    from search_space.cache import cache_dir
    cfg = _cfg(tmp_path, n_trials=2, presets=("tiny-debug",))
    gone = cache_dir("text") / ".abc.pt.123.tmp"
    _failing_once(monkeypatch, FileNotFoundError(2, "No such file or directory", str(gone)))
    study, _ = _quiet(cfg)
    mine = [t for t in study.get_trials() if t.user_attrs.get("enqueued_preset") == "tiny-debug"]
    assert [t.state for t in mine] == [TrialState.FAIL, TrialState.COMPLETE]


def test_only_the_machines_failures_are_environmental(tmp_path):
    import errno
    from search_space.cache import cache_dir
    from search_space.outputs import OutputError
    from studies.workers import environmental
    wrapped = RuntimeError("unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert environmental(wrapped)
    assert environmental(OutputError("cannot write x: no space left on the device", errno.ENOSPC))
    assert environmental(FileNotFoundError(2, "gone", str(cache_dir("text") / "x.pt")))
    assert not environmental(FileNotFoundError(2, "gone", str(tmp_path / "my-data")))  # the user's file
    assert not environmental(OutputError("--out x is a file"))
    assert not environmental(OSError(errno.EROFS, "Read-only file system"))  # a second attempt meets it again
    assert not environmental(ValueError("channels[1]=500 is not divisible by the 32 norm groups"))


def test_a_killed_trials_partial_artifacts_are_removed_and_finished_ones_kept(tmp_path):
    cfg = _cfg(tmp_path, n_trials=2)
    study = open_study(cfg, open_storage(cfg.storage, cfg))
    art = tmp_path / "artifacts"

    def finished(folder):
        t = study.ask()
        t.set_user_attr("artifacts", str(folder))
        study.tell(t, 1.0)
        return t.number

    done_dir = art / f"trial-{finished(art / 'trial-0000-aaa'):04d}-aaa"
    ghost = _ghost(study)
    ghost_dir = art / f"trial-{ghost:04d}-bbb"
    reused = _ghost(study, artifacts=str(done_dir))  # took a finished trial's result: names that trial's folder
    other_dir = tmp_path / "other-study" / "artifacts" / "trial-0999-ddd"
    foreign = _ghost(study, artifacts=str(other_dir))  # took another study's result from the cache
    cached = _ghost(study)  # its result reached the cache before the kill, and a finished trial took it from there
    cached_dir = art / f"trial-{cached:04d}-ccc"
    finished(cached_dir)
    for number, folder in ((ghost, ghost_dir), (cached, cached_dir)):
        study._storage.set_trial_user_attr(study.get_trials()[number]._trial_id, "artifacts", str(folder))
    for folder in (done_dir, ghost_dir, cached_dir, other_dir):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "record.json").write_text("{}")
    assert sorted(fail_ghost_trials(study)) == sorted([ghost, reused, foreign, cached])
    assert not ghost_dir.exists()
    for folder in (done_dir, cached_dir, other_dir):
        assert (folder / "record.json").is_file() and (folder / "checkpoints").is_dir()
