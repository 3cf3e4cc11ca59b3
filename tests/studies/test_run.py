"""Running studies: cheap checks first, infeasible candidates not trained, crash-safe resume, many workers."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies.config import load_study_file
from studies.opening import open_study
from studies.runner import run_study
from studies.storage import StudyError
from tests import studyfiles
from tests.studies.fake_workers import designs, single_budget_study

REPO = Path(__file__).resolve().parents[2]

def _cheap(name="cheap", n_trials=6, max_params=10000.0, **sections) -> dict:
    """Full-size candidates with only the cheap evaluators: params and predicted latency, under a params cap."""
    return studyfiles.study(name, n_trials=n_trials, study={"seed": 0, "heartbeat_interval": 1, "grace_period": 2},
                            target={"latent": 64, "device": "a17pro"}, space=studyfiles.SNAPGEN_SPACE,
                            objectives={"latency_ms": "minimize", "params_m": "minimize"},
                            constraints={"max_params_m": max_params}, **sections)


def _study_file(tmp_path, name="cheap", n_trials=6, max_params=10000.0):
    return studyfiles.write(tmp_path / f"{name}.toml", _cheap(name, n_trials, max_params))


def _pocketdiff(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "pocketdiff.cli", *args], capture_output=True, text=True,
                          cwd=kw.pop("cwd", None), env={**os.environ, **(env or {})}, **kw)


def test_cheap_study_runs_records_everything_and_resumes(tmp_path):
    cfg = load_study_file(_study_file(tmp_path), storage=f"sqlite:///{tmp_path}/s.db")
    study, stats = run_study(cfg, progress=False, echo=lambda s: None)
    trials = study.get_trials()
    # six distinct designs (the random sampler may re-propose one: its trial reuses the result, counting nothing)
    assert designs(trials)[0] == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    t = trials[0]
    for key in ("spec", "spec_id", "compact", "params_m", "gmacs", "latency_ms"):
        assert key in t.user_attrs
    assert t.values[1] == pytest.approx(t.user_attrs["params_m"])
    # a second run of the same file has nothing left to do
    study2, _ = run_study(cfg, progress=False, echo=lambda s: None)
    assert len(study2.get_trials()) == len(trials)
    # --n-trials runs more
    study3, _ = run_study(cfg, n_trials=2, progress=False, echo=lambda s: None)
    assert len(study3.get_trials()) == len(trials) + 2


def test_hard_budget_candidates_are_not_trained(tmp_path):
    cfg = load_study_file(_study_file(tmp_path, max_params=300.0), storage=f"sqlite:///{tmp_path}/s.db")
    study, _ = run_study(cfg, progress=False, echo=lambda s: None)
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert pruned, "every candidate fit the budget; the test needs some over it"
    for t in pruned:
        assert t.user_attrs["infeasible"].startswith("infeasible (not trained): params_m")
        assert t.constraints["max_params_m"] > 0
    for t in complete:
        assert t.user_attrs["params_m"] <= 300.0 and t.constraints["max_params_m"] <= 0


def test_same_name_different_space_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    run_study(load_study_file(_study_file(tmp_path, n_trials=1), storage=storage), progress=False, echo=lambda s: None)
    changed = tmp_path / "changed.toml"
    changed.write_text(_study_file(tmp_path, n_trials=1).read_text().replace("[384, 512, 640]", "[384, 512]"))
    # the first changed field, named with the spec's one dotted-path grammar (search_space/paths.py)
    with pytest.raises(StudyError, match=r"different definition \(space\.knobs\.0\.choices: "
                                         r"stored \[384, 512, 640\], file \[384, 512\]"):
        open_study(load_study_file(changed, storage=storage))


def test_unreachable_storage_fails_before_any_work(tmp_path):
    r = _pocketdiff("study", "run", str(_study_file(tmp_path)), "--storage",
                    "postgresql://postgres@127.0.0.1:1/none")
    assert r.returncode == 2
    assert "cannot open storage postgresql://postgres@127.0.0.1:1/none" in r.stderr
    assert "Traceback" not in r.stderr


def test_sigkill_mid_trial_then_resume(tmp_path):
    """Kill `study run` while a trial runs: the rerun marks it FAIL, retries it, keeps every COMPLETE trial."""
    path = _study_file(tmp_path, n_trials=8)
    storage = f"sqlite:///{tmp_path}/s.db"
    proc = subprocess.Popen([sys.executable, "-m", "pocketdiff.cli", "study", "run", str(path), "--storage", storage,
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    killed_number = None
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = optuna.load_study(study_name="cheap", storage=storage)
            except Exception:
                continue
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and running:
                killed_number = running[0].number
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        if proc.poll() is None and killed_number is None:
            proc.kill()
        proc.wait()
    assert killed_number is not None, "no trial was caught running"
    before = {t.number: t.values for t in optuna.load_study(study_name="cheap", storage=storage).get_trials()
              if t.state == TrialState.COMPLETE}
    time.sleep(3)  # past the 2 s grace period: the killed trial's heartbeat is stale
    r = _pocketdiff("study", "run", str(path), "--storage", storage, "--no-progress")
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="cheap", storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    assert trials[killed_number].state == TrialState.FAIL
    for number, values in before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 8
    retried = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed_number]
    assert retried and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == trials[killed_number].params


def test_two_workers_share_one_postgres_study(tmp_path, postgres_url):
    path = _study_file(tmp_path, name="shared", n_trials=8)
    # create the study once, so the two workers do not race on table creation
    open_study(load_study_file(path, storage=postgres_url))
    procs = [subprocess.Popen([sys.executable, "-m", "pocketdiff.cli", "study", "worker", str(path), "--storage",
                               postgres_url, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 8 <= len(complete) <= 9  # MaxTrialsCallback stops both; one in flight may finish past the cap
    # both workers did work: each printed at least one finished trial
    for out, _ in outs:
        assert "COMPLETE" in out
    # every trial row belongs to exactly one worker's output
    lines = [l for out, _ in outs for l in out.splitlines() if l.startswith("trial ")]
    done = [int(l.split()[1]) for l in lines]
    assert len(done) == len(set(done)) == len(trials)


def test_early_stop_compares_curves_at_equal_budget_fractions(tmp_path):
    """Multi-objective studies cannot use Optuna's pruners: our rule stops a run whose validation loss is
    above the chosen quantile of finished trials at the same share of the budget."""
    from optuna.distributions import FloatDistribution
    from studies.objective import _curve_threshold

    study = optuna.create_study(directions=["minimize", "minimize"])
    for i, final in enumerate([0.30, 0.35, 0.40, 0.45]):
        curve = [(10 * (i + 1), final + 0.2, 0.2), (20 * (i + 1), final + 0.1, 0.5), (40 * (i + 1), final, 1.0)]
        study.add_trial(optuna.trial.create_trial(values=[final, 1.0], user_attrs={"curve": curve}))
    assert _curve_threshold(study, 0.1, 0.5) is None  # nobody reported that early
    threshold, n = _curve_threshold(study, 0.5, 0.5)
    assert n == 4 and threshold == pytest.approx(0.475)  # median of 0.40, 0.45, 0.50, 0.55
    threshold, _ = _curve_threshold(study, 0.6, 1.0)
    assert threshold == pytest.approx(0.55)


def test_objective_stops_a_clearly_worse_run(tmp_path, monkeypatch):
    from studies import evaluate as ev
    from studies.config import parse_study
    from studies.objective import Objective, RunStats

    cfg = parse_study({
        "study": {"name": "es"}, "space": {"base": "tiny-debug"},
        "quality": {"evaluator": "flow", "budget": "100steps",
                    "early_stop": {"enabled": True, "warmup_fraction": 0.3, "min_trials": 2, "quantile": 0.5}},
        "objectives": {"val_loss": "minimize"},
    })
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="es")
    for final in (0.2, 0.3):
        study.add_trial(optuna.trial.create_trial(value=final, user_attrs={"curve": [(50, final, 0.5)]}))

    def fake_quality(spec, cfg, out_dir, on_report):  # stands in for training: reports a bad curve
        for step in (20, 40, 60):
            on_report(step / 100, {"step": step, "seconds": 1.0, "val_loss": 0.9})
        raise AssertionError("the run should have been stopped")

    monkeypatch.setattr(ev, "quality_metrics", fake_quality)
    monkeypatch.setattr(ev, "cheap_metrics", lambda spec, latent, device: {"params_m": 0.6})
    objective = Objective(cfg, study, RunStats(), tmp_path)
    study.optimize(objective, n_trials=1)
    t = study.trials[-1]
    assert t.state == TrialState.PRUNED
    # finished curves start at 50% of the budget, so the first comparison is at 60%
    assert t.user_attrs["early_stopped"].startswith("stopped early at step 60 (60% of the budget): val_loss 0.9000")


def test_only_step_budgets_share_results_across_studies():
    from studies.config import parse_study
    from studies.evaluate import load_cache, portable, store_cache

    def cfg(budget):
        return parse_study({"study": {"name": "c"}, "space": {"base": "tiny-debug"},
                            "quality": {"evaluator": "flow", "budget": budget}, "objectives": {"val_loss": "minimize"}})
    assert portable(cfg("500steps")) and not portable(cfg("60s"))
    store_cache("k1", {"val_loss": 0.5}, {"curve": []})
    assert load_cache("k1")["metrics"] == {"val_loss": 0.5}
    assert load_cache("k2") is None


def test_the_overhead_share_counts_the_whole_run_not_only_the_objective(tmp_path, monkeypatch):
    """Everything but the evaluator's training, sampling and scoring is overhead: work between trials (Optuna's
    sampling, storage, promotions; here a slow promotion check) is in the run time the share divides by."""
    import studies.runner as runner
    from studies import evaluate as ev

    study = _cheap("o", 3, quality={"evaluator": "flow", "rungs": ["11steps", "22steps"], "reduction": 3})
    study["objectives"] = {"val_loss": "minimize", **study["objectives"]}
    path = studyfiles.write(tmp_path / "o.toml", study)
    monkeypatch.setattr(ev, "cheap_metrics", lambda spec, latent, device: {"params_m": 1.0, "latency_ms": 1.0})
    monkeypatch.setattr(ev, "quality_metrics", lambda spec, cfg, out_dir, on_report: {
        "val_loss": spec.ffn_ratio, "_evaluator_seconds": 0.25, "_user_attrs": {}})
    promote = runner.promote

    def slow_promote(study, rungs):
        time.sleep(0.2)  # stands in for Optuna's and the storage's work between trials
        return promote(study, rungs)

    monkeypatch.setattr(runner, "promote", slow_promote)
    cfg = load_study_file(path, storage=f"sqlite:///{tmp_path}/s.db")
    study, stats = run_study(cfg, progress=False, echo=lambda s: None)
    n = len(stats.states)
    assert n == 4 and stats.evaluator_seconds == pytest.approx(0.25 * n)
    assert stats.run_seconds >= stats.trial_seconds + 0.2 * n  # the time between trials is counted
    assert stats.overhead_share == pytest.approx(1 - stats.evaluator_seconds / stats.run_seconds)


def test_the_flow_evaluator_reports_training_sampling_and_scoring_of_every_seed(monkeypatch):
    """The seconds the overhead share treats as evaluation: train + sample + score summed over the seeds (the
    aggregate record holds their seed means)."""
    import evaluators.quality as quality
    from evaluators import registry
    from search_space import PRESETS

    per_seed = [{"seed": 0, "seconds_train": 10.0, "seconds_sample": 2.0, "seconds_metrics": 1.0},
                {"seed": 1, "seconds_train": 12.0, "seconds_sample": 3.0, "seconds_metrics": 2.0}]
    monkeypatch.setattr(quality, "evaluate_quality_seeds", lambda *a, **k: quality.aggregate_seeds(
        [{**r, "val_loss": 0.5, "status": "ok"} for r in per_seed]))
    flow = registry.get("flow")
    out = flow.run(PRESETS["tiny-debug"], flow.check_config({"seeds": 2}), 0, None, None)
    assert out["_evaluator_seconds"] == pytest.approx(30.0)


def test_jobs_run_worker_processes_on_one_storage(tmp_path):
    """`[study] jobs = 2`: `study run` trains in two processes of one thread each on the study's storage; the
    trials are shared out, each stored with its worker, and the one summary at the end counts them all."""
    space = {**studyfiles.TINY_SPACE, "attention": {"choices": ["mqa", "mhsa"]},
             "stages.1.channels": {"choices": [64, 96]}}
    study = studyfiles.study("par", n_trials=6, study={"seed": 0, "jobs": 2}, space=space,
                             quality={"evaluator": "flow", "data": "mnist5k", "budget": "12steps",
                                      "n_samples": 150},
                             objectives={"val_loss": "minimize", "params_m": "minimize"})
    path = studyfiles.write(tmp_path / "par.toml", study)
    storage = f"sqlite:///{tmp_path}/s.db"
    r = subprocess.run([sys.executable, "-m", "pocketdiff.cli", "study", "run", str(path), "--storage", storage,
                        "--no-progress"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 worker processes" in r.stdout and r.stdout.count("Pareto set") == 1
    trials = optuna.load_study(study_name="par", storage=storage).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 6 and len({t.user_attrs["worker_pid"] for t in finished}) == 2
    assert "x 2 workers of run time" in r.stdout and f"in {len(finished)} trials" in r.stdout
    # every trial line, from either process, reaches the output
    assert len(re.findall(r"^trial +\d+ (COMPLETE|PRUNED) ", r.stdout, re.M)) == len(finished)


def test_jobs_must_be_a_whole_number_and_exclude_n_trials(tmp_path):
    from studies.config import StudyFileError, parse_study

    with pytest.raises(StudyFileError, match=r"\[study\] jobs = 0 must be a whole number"):
        parse_study(studyfiles.study("j", study={"jobs": 0}))
    cfg = load_study_file(_study_file(tmp_path, n_trials=1), storage=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(StudyError, match="leave it out"):
        run_study(cfg, n_trials=1, jobs=2, progress=False, echo=lambda s: None)


def test_a_failed_enqueued_preset_is_retried_once_and_the_run_says_so(tmp_path, monkeypatch, capsys):
    """The presets are the front's reference: one lost to a failure is enqueued once more on the next run, and
    `study run` exits 1 while a preset has no finished trial."""
    from pocketdiff.cli import main
    from studies import evaluate

    real = evaluate.cheap_metrics
    failures = {"left": 1}

    def flaky(spec, latent, device):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("No space left on device: the stand-in for an environmental failure")
        return real(spec, latent, device)

    monkeypatch.setattr(evaluate, "cheap_metrics", flaky)
    path = studyfiles.write(tmp_path / "p.toml", _cheap("p", n_trials=3, enqueue={"presets": ["snapgen-unet"]}))
    run = ["study", "run", str(path), "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress"]
    assert main(run) == 1  # the preset ran first and failed; the sampled trials completed
    err = capsys.readouterr().err
    assert "enqueued preset(s) without a finished trial" in err and "snapgen-unet (trial 0: " in err
    assert "No space left on device" in err and "will be tried once more" in err
    assert main(run) == 0  # enqueued again at the start of the run, and it completes
    out = capsys.readouterr().out
    assert "enqueued preset snapgen-unet again" in out
    study = optuna.load_study(study_name="p", storage=f"sqlite:///{tmp_path}/s.db")
    presets = [t for t in study.get_trials() if t.user_attrs.get("enqueued_preset") == "snapgen-unet"]
    assert [t.state for t in presets] == [TrialState.FAIL, TrialState.COMPLETE]

    failures["left"] = 10  # a preset that fails every time: tried twice in all, then the run says to fix it
    path = studyfiles.write(tmp_path / "q.toml", _cheap("q", n_trials=2, enqueue={"presets": ["snapgen-unet"]}))
    run = ["study", "run", str(path), "--storage", f"sqlite:///{tmp_path}/s.db", "--no-progress"]
    assert main(run) == 1
    capsys.readouterr()
    failures["left"] = 1
    assert main(run) == 1
    assert "Each was tried 2 times: fix the cause" in capsys.readouterr().err
    assert main(run) == 1  # not enqueued a third time
    study = optuna.load_study(study_name="q", storage=f"sqlite:///{tmp_path}/s.db")
    assert sum(t.user_attrs.get("enqueued_preset") == "snapgen-unet" for t in study.get_trials()) == 2


def test_the_run_counts_a_queued_trial_that_another_worker_ran(tmp_path, monkeypatch):
    """A preset enqueued before the run (WAITING when it starts) and run by a local worker is part of the run:
    the main job's summary said "in 7 trials" for 8, leaving out the preset the second worker ran."""
    from studies import runner
    from studies.objective import RunStats

    cfg = load_study_file(_study_file(tmp_path, n_trials=2), storage=f"sqlite:///{tmp_path}/s.db")
    study = open_study(cfg)
    study.enqueue_trial({}, user_attrs={"enqueued_preset": "snapgen-unet"})
    study.add_trial(optuna.trial.create_trial(values=[1.0, 1.0], user_attrs={"worker_pid": 1}))  # an earlier run
    before = runner._ended(study)
    queued = study.ask()  # the local worker (another PID) takes the queued trial and finishes it
    queued.set_user_attr("worker_pid", os.getpid() + 1)
    queued.set_user_attr("evaluator_seconds", 12.5)
    study.tell(queued, [2.0, 2.0])
    stats = RunStats(workers=2)
    runner._count_other_workers(study, stats, before)
    assert stats.states == ["COMPLETE"] and stats.evaluator_seconds == 12.5


# --- n_trials counts distinct finished designs, across concurrent runs -------------------------------------

def test_concurrent_runs_finish_exactly_n_trials_distinctdesigns(tmp_path):
    """Three `study run` processes on one SQLite file whose samplers propose the same designs (one seed): the
    study ends with exactly n_trials distinct finished designs, each evaluated once. Re-proposals (a result
    reused, a duplicate of a running design) count for nothing; runs that checked "is the study full?" only
    after their own trial overshot by one per process and stopped early on reused results."""
    from tests.studies import fake_workers

    path, storage = single_budget_study(tmp_path, "distinct", n_trials=6), f"sqlite:///{tmp_path}/s.db"
    open_study(load_study_file(path, storage=storage))
    fake_workers.finish([fake_workers.start(path, storage, command="run",
                                            env={"FAKE_QUALITY_SLEEP": "0.5", "FAKE_SAME_SEED": "1"})
                         for _ in range(3)])
    trials = optuna.load_study(study_name="distinct", storage=storage).get_trials()
    assert designs(trials) == (6, 6), [(t.number, t.state.name, t.user_attrs.get("spec_id"),
                                         t.user_attrs.get("reused_from"), t.user_attrs.get("duplicate_of"))
                                        for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_sampler_that_keeps_re_proposing_is_stopped(tmp_path, monkeypatch, caplog):
    """A space of two designs and n_trials 4: the run ends after REPROPOSAL_LIMIT attempts per asked-for design
    with the two designs it found, saying why, instead of sampling the same two for ever."""
    from studies import evaluate as ev
    from studies.halving import REPROPOSAL_LIMIT
    from tests.studies.fake_workers import fake_cheap, fake_quality

    monkeypatch.setattr(ev, "quality_metrics", fake_quality)
    monkeypatch.setattr(ev, "cheap_metrics", fake_cheap)
    space = {"base": "snapgen-unet", "attention": {"choices": ["mqa", "mhsa"]}}
    cfg = load_study_file(single_budget_study(tmp_path, "stuck", n_trials=4, space=space),
                          storage=f"sqlite:///{tmp_path}/s.db")
    with caplog.at_level("WARNING", logger="pocketdiff.study"):
        study, _ = run_study(cfg, progress=False, echo=lambda s: None)
    trials = study.get_trials()
    assert designs(trials)[0] == 2 and len(trials) == REPROPOSAL_LIMIT * 4
    assert "keeps proposing designs already evaluated: stopping with 2 distinct candidates of the 4" in caplog.text
