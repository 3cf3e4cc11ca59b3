"""Successive halving in studies (studies/halving.py): ranking, promotion from the storage alone, the front
from the top rung, many workers, SIGKILL mid-promotion, and bad rung configurations.

The quality evaluator is replaced by a cheap deterministic stand-in (tests/studies/fake_workers.py), in this
process with monkeypatch and in worker subprocesses through its driver script, so each test takes seconds.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from studies import halving
from studies.config import Rungs, StudyFileError, load_study_file, parse_study
from studies.halving import crowding_distance, due_promotions, nondominated_ranks, rank_order
from studies.opening import open_study
from studies.queries import front_note, pareto_rows
from studies.record import TrialRecord
from studies.runner import run_study
from training.budget import Budget
from tests import studyfiles
from tests.studies import fake_workers
from tests.studies.fake_workers import fake_cheap, fake_quality


REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path, name="halving", n_trials=9, seed=0, params_objective=False, **quality):
    """Full-size candidates ranked by the stand-in quality score over three rungs (11, 33, 99 steps)."""
    objectives = {"fd_domain": "minimize", **({"params_m": "minimize"} if params_objective else {})}
    return studyfiles.write(tmp_path / f"{name}.toml", studyfiles.study(
        name, n_trials=n_trials, study={"seed": seed, "heartbeat_interval": 1, "grace_period": 3},
        target={"latent": 64}, space=studyfiles.SNAPGEN_SPACE, objectives=objectives,
        quality={"evaluator": "flow", "rungs": ["11steps", "33steps", "99steps"], "reduction": 3,
                 "early_stop": {"enabled": False}, **quality}))


@pytest.fixture
def fake_evaluators(monkeypatch):
    from studies import evaluate as ev
    monkeypatch.setattr(ev, "quality_metrics", fake_quality)
    monkeypatch.setattr(ev, "cheap_metrics", fake_cheap)


def _worker(path, storage, *extra, env=None):
    return fake_workers.start(path, storage, *extra, env=env)


def _check_rung_invariants(trials, rungs: Rungs):
    """What successive halving promises, read from the storage."""
    by_rung: dict[int, list] = {}
    for t in trials:
        by_rung.setdefault(TrialRecord.of(t).rung, []).append(t)
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["budget"] == rungs.label(TrialRecord.of(t).rung) == str(rungs.budgets[TrialRecord.of(t).rung])
    for r, ts in by_rung.items():
        keys = [t.user_attrs["candidate"] for t in ts if t.state != TrialState.FAIL]
        if r > 0:  # a candidate is evaluated at most once per rung
            assert len(keys) == len(set(keys)), f"rung {r} evaluated a candidate twice: {keys}"
            lower = {t.user_attrs["candidate"] for t in by_rung[r - 1] if t.state == TrialState.COMPLETE}
            assert set(keys) <= lower, "promoted a candidate that did not complete the rung below"
    return by_rung


# --- ranking -------------------------------------------------------------------------------------------------

def test_nondominated_ranks_and_crowding():
    v = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [6, 6], [2, 2]], dtype=float)
    assert nondominated_ranks(v, ["minimize", "minimize"]).tolist() == [0, 0, 0, 1, 2, 0]
    # maximising the second objective turns the order around on that axis
    assert nondominated_ranks(v, ["minimize", "maximize"]).tolist()[4] == 0
    d = crowding_distance(np.array([[0, 4], [1, 2], [3, 1], [4, 0]], dtype=float))
    assert np.isinf(d[[0, 3]]).all() and d[1] == pytest.approx(3 / 4 + 3 / 4) and d[2] == pytest.approx(3 / 4 + 2 / 4)
    # front 0 first; inside it the boundary points (infinite crowding) before the crowded middle one
    order = rank_order(np.array([[1, 5], [2, 2.1], [5, 1], [3, 3], [1.9, 2.2]]), ["minimize", "minimize"])
    assert order[:2] == [0, 2] and order[-1] == 3


def test_due_promotions_pick_the_best_share_once():
    study = optuna.create_study(directions=["minimize"])
    for i, value in enumerate([5.0, 1.0, 4.0, 2.0, 3.0, 6.0]):
        study.add_trial(optuna.trial.create_trial(values=[value], user_attrs={"rung": 0, "candidate": f"c{i}"}))
    rungs = Rungs((Budget(steps=1), Budget(steps=3)), 3)
    due = due_promotions(study.get_trials(), rungs, ["minimize"])
    assert [(p.candidate, p.rung) for p in due] == [("c1", 1), ("c3", 1)]  # floor(6 / 3) = 2 best
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"rung": 1, "candidate": "c1"}))
    assert [p.candidate for p in due_promotions(study.get_trials(), rungs, ["minimize"])] == ["c3"]


def _add(study, rung, values, state=TrialState.COMPLETE, first=0):
    for i, value in enumerate(values, start=first):
        study.add_trial(optuna.trial.create_trial(
            state=state, values=[value] if state == TrialState.COMPLETE else None,
            user_attrs={"rung": rung, "candidate": f"c{i}"}))


def test_synchronous_promotion_waits_for_the_closed_rung_and_promotes_its_share_only():
    asynchronous = Rungs((Budget(steps=1), Budget(steps=3), Budget(steps=9)), 3, candidates=6)
    synchronous = Rungs(asynchronous.budgets, 3, promotion="synchronous", candidates=6)
    study = optuna.create_study(directions=["minimize"])
    _add(study, 0, [3.0, 4.0, 5.0])  # the first three finish; the better three are still to come
    _add(study, 0, [0.0], state=TrialState.RUNNING, first=3)
    # asynchronous: the best of the first three goes up at once
    assert [p.candidate for p in due_promotions(study.get_trials(), asynchronous, ["minimize"])] == ["c0"]
    # synchronous: nothing while a first-rung candidate runs or is yet to be sampled
    assert due_promotions(study.get_trials(), synchronous, ["minimize"]) == []
    assert not halving.rung_closed(study.get_trials(), 0, synchronous)
    study = optuna.create_study(directions=["minimize"])
    _add(study, 0, [3.0, 4.0, 5.0, 0.0, 1.0])
    assert due_promotions(study.get_trials(), synchronous, ["minimize"]) == []  # 5 of n_trials = 6 sampled
    _add(study, 0, [2.0], first=5)
    # closed: exactly floor(6 / 3) = 2 promoted, the best two of all six (asynchronous would have added c0)
    due = due_promotions(study.get_trials(), synchronous, ["minimize"])
    assert [(p.candidate, p.rung) for p in due] == [("c3", 1), ("c4", 1)]
    # rung 1 closes once both promotions finished (one failing counts as finished), not before
    study.add_trial(optuna.trial.create_trial(values=[0.5], user_attrs={"rung": 1, "candidate": "c3"}))
    assert not halving.rung_closed(study.get_trials(), 1, synchronous)  # c4's promotion is not enqueued yet
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"rung": 1, "candidate": "c4"}))
    assert not halving.rung_closed(study.get_trials(), 1, synchronous)
    assert due_promotions(study.get_trials(), synchronous, ["minimize"]) == []
    study = optuna.create_study(directions=["minimize"])
    _add(study, 0, [3.0, 4.0, 5.0, 0.0, 1.0, 2.0])
    study.add_trial(optuna.trial.create_trial(values=[0.5], user_attrs={"rung": 1, "candidate": "c3"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"rung": 1, "candidate": "c4"}))
    assert halving.rung_closed(study.get_trials(), 1, synchronous)
    assert due_promotions(study.get_trials(), synchronous, ["minimize"]) == []  # floor(1 / 3) = 0 to rung 2


def test_a_synchronous_rung_with_infeasible_candidates_still_closes():
    """Rung 0 promotes fewer than its share when only one candidate is feasible; rung 1 must close on that one,
    or rung 2 would wait for ever."""
    rungs = Rungs((Budget(steps=1), Budget(steps=3), Budget(steps=9)), 3, promotion="synchronous", candidates=6)
    study = optuna.create_study(directions=["minimize"])
    for i in range(6):
        study.add_trial(optuna.trial.create_trial(  # c1..c5 break a constraint (a value > 0): infeasible
            values=[float(i)], user_attrs={"rung": 0, "candidate": f"c{i}"},
            system_attrs={"constraints": [0.0 if i == 0 else 1.0]}))
    assert [p.candidate for p in due_promotions(study.get_trials(), rungs, ["minimize"])] == ["c0"]
    study.add_trial(optuna.trial.create_trial(values=[0.0], user_attrs={"rung": 1, "candidate": "c0"}))
    assert halving.rung_closed(study.get_trials(), 1, rungs)


def test_a_first_rung_of_failures_and_duplicates_is_full_when_the_sampler_is_stuck():
    study = optuna.create_study(directions=["minimize"])
    for i in range(9):  # nine attempts that all re-proposed one design: 1 candidate, 9 attempts of 3 x 3
        study.add_trial(optuna.trial.create_trial(values=[1.0], user_attrs={"rung": 0, "candidate": "c0"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"rung": 0, "candidate": "c9"}))
    assert halving.first_rung_counts(study.get_trials()) == (1, 9)
    assert halving.first_rung_full(study.get_trials(), 3) and not halving.first_rung_full(study.get_trials(), 4)


# --- a whole study -------------------------------------------------------------------------------------------

def test_halving_study_promotes_and_builds_the_front_from_the_top_rung(tmp_path, fake_evaluators, capsys):
    from pocketdiff.cli import main

    path, storage = _write(tmp_path, params_objective=True), f"sqlite:///{tmp_path}/s.db"
    cfg = load_study_file(path, storage=storage)
    lines: list[str] = []
    study, _ = run_study(cfg, progress=False, echo=lines.append)
    trials = study.get_trials()
    by_rung = _check_rung_invariants(trials, cfg.quality.rungs)
    candidates0 = {t.user_attrs["candidate"] for t in by_rung[0]}
    assert len(candidates0) == 9 and set(by_rung) == {0, 1, 2}  # n_trials counts distinct designs
    assert len({t.user_attrs["candidate"] for t in by_rung[1]}) >= len(candidates0) // 3
    # the best candidate of rung 0 (params_m is constant: the lowest score) went all the way up
    best0 = min((t for t in by_rung[0] if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
    assert best0.user_attrs["candidate"] in {t.user_attrs["candidate"] for t in by_rung[2]}
    assert any("[rung 2 99steps]" in line for line in lines)
    # the front holds top-rung trials only, although rung-0 scores are lower (better) by construction
    rows = pareto_rows(study)
    assert rows and all(r["rung"] == 2 and r["budget"] == "99steps" for r in rows)
    assert min(t.values[0] for t in by_rung[0]) < min(r["fd_domain"] for r in rows)
    assert rows[0]["fd_domain_ci_low"] < rows[0]["fd_domain"] < rows[0]["fd_domain_ci_high"]
    assert "top rung only (rung 2, 99steps)" in front_note(study)
    # a second run has nothing left to do: no candidate and no promotion is added
    study2, _ = run_study(cfg, progress=False, echo=lambda s: None)
    assert len(study2.get_trials()) == len(trials)

    # status, export and best: the same front, said to come from the top rung
    top = {t.number for t in trials if TrialRecord.of(t).rung == 2 and t.state == TrialState.COMPLETE}
    capsys.readouterr()
    assert main(["study", "status", str(path), "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "rung 0 (11steps)" in out and "rung 2 (99steps)" in out
    assert "Pareto front from the top rung only" in out and "fd_domain=" in out and "[" in out.split("fd_domain=")[1]
    assert main(["study", "status", str(path), "--storage", storage, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rungs"] == ["11steps", "33steps", "99steps"] and data["front_rung"] == 2
    assert data["pareto"] and {r["number"] for r in data["pareto"]} <= top
    assert main(["study", "export", str(path), "--storage", storage, "--pareto", "-o", str(tmp_path / "p.csv")]) == 0
    import csv
    exported = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert exported and {int(r["number"]) for r in exported} <= top
    assert main(["study", "best", str(path), "--storage", storage, "-o", str(tmp_path / "w.json")]) == 0
    assert "top rung only" in capsys.readouterr().out
    assert json.loads((tmp_path / "w.json").read_text())["trial"] in top


# --- many workers and kills -------------------------------------------------------------------------------

def _two_workers(path, storage):
    procs = [_worker(path, storage, env={"FAKE_QUALITY_SLEEP": "0.3"}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return outs


def _check_two_workers(path, storage, outs):
    cfg = load_study_file(path, storage=storage)
    study = optuna.load_study(study_name=cfg.name, storage=storage)
    trials = study.get_trials()
    by_rung = _check_rung_invariants(trials, cfg.quality.rungs)
    assert len(by_rung[0]) >= 9 and 1 in by_rung  # both workers' samplers share a seed: duplicates are one candidate
    assert len({TrialRecord.of(t).candidate for t in by_rung[0]}) == 9  # and never a place too many
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # nothing left to promote: the last worker to finish did every promotion the stored results call for
    assert due_promotions(trials, cfg.quality.rungs, cfg.directions) == []
    done = [int(l.split()[1]) for out, _ in outs for l in out.splitlines() if l.startswith("trial ")]
    assert len(done) == len(set(done)) == len(trials)  # every trial ran in exactly one worker
    promoted = [int(l.split()[1]) for out, _ in outs for l in out.splitlines() if "[rung 1" in l or "[rung 2" in l]
    assert promoted, "no promotion ran"
    assert all(any(l.startswith("trial ") for l in out.splitlines()) for out, _ in outs), "a worker did nothing"


@pytest.mark.slow  # the PostgreSQL twin below runs in CI; this one needs no server
def test_two_workers_promote_from_one_sqlite_storage(tmp_path):
    path, storage = _write(tmp_path), f"sqlite:///{tmp_path}/s.db"
    open_study(load_study_file(path, storage=storage))
    _check_two_workers(path, storage, _two_workers(path, storage))


def test_two_workers_promote_from_one_postgres_study(tmp_path, postgres_url):
    path = _write(tmp_path, name="shared")
    open_study(load_study_file(path, storage=postgres_url))  # create once: workers do not race on tables
    _check_two_workers(path, postgres_url, _two_workers(path, postgres_url))


def test_synchronous_workers_wait_for_each_other_and_promote_each_rungs_share(tmp_path, postgres_url):
    """A worker with nothing to run while the other's first-rung trial runs waits for it instead of leaving:
    both take part in the promotions, and each rung promotes exactly its share."""
    path = _write(tmp_path, name="sync", promotion="synchronous")
    open_study(load_study_file(path, storage=postgres_url))
    procs = [_worker(path, postgres_url, env={"FAKE_QUALITY_SLEEP": "2"}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="sync", storage=postgres_url)
    by_rung = _check_rung_invariants(study.get_trials(), load_study_file(path).quality.rungs)
    sizes = [len({t.user_attrs["candidate"] for t in by_rung[r]}) for r in (0, 1, 2)]
    # the check "is the first rung full?" and the trial it starts are one step under a lock: exactly 9, never
    # one per worker too many
    assert sizes == [9, 3, 1], sizes
    assert any("waiting for trial(s)" in out for out, _ in outs)
    # each worker ran a promoted trial: a worker that left when it found nothing to run would have left all
    # three of rung 1 to the other
    assert all("[rung 1" in out for out, _ in outs), [out for out, _ in outs]


KILL_MID_PROMOTION = '''
import os, signal, optuna
from studies.config import load_study_file
from studies import halving
cfg = load_study_file({path!r}, storage={storage!r})
study = optuna.load_study(study_name=cfg.name, storage={storage!r})
real = study.enqueue_trial
def enqueue_then_die(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # between the first and the second promotion, lock held
study.enqueue_trial = enqueue_then_die
halving.promote(study, cfg.quality.rungs)
'''


def _seed_rung0(study, n):
    """n finished rung-0 candidates (as a run would have left them), scores 0..n-1 so the order is known."""
    for i in range(n):
        study.add_trial(optuna.trial.create_trial(
            values=[float(i)], params={"ffn_ratio": [2.0, 3.0, 4.0][i % 3]},
            distributions={"ffn_ratio": optuna.distributions.CategoricalDistribution([2.0, 3.0, 4.0])},
            user_attrs={"rung": 0, "budget": "11steps", "candidate": f"c{i}", "spec_id": f"c{i}",
                        "spec": None}))


def test_sigkill_during_promotion_loses_no_finished_trial(tmp_path):
    path, storage = _write(tmp_path), f"sqlite:///{tmp_path}/s.db"
    cfg = load_study_file(path, storage=storage)
    study = open_study(cfg)
    _seed_rung0(study, 6)  # 6 finished at rung 0, reduction 3: two promotions due at once
    before = {t.number: (t.state, t.values, t.user_attrs) for t in study.get_trials()}
    r = subprocess.run([sys.executable, "-c", KILL_MID_PROMOTION.format(path=str(path), storage=storage)],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert (tmp_path / "s.db.promote.lock").is_file()  # the promotion ran under the storage's lock
    after = {t.number: t for t in study.get_trials()}
    for number, (state, values, attrs) in before.items():  # nothing finished was lost or changed
        assert after[number].state == state and after[number].values == values
        assert after[number].user_attrs == attrs
    waiting = [t for t in after.values() if t.state == TrialState.WAITING]
    assert [t.user_attrs["candidate"] for t in waiting] == ["c0"]  # the kill came after the first enqueue
    # the next promote (any worker, after the kill) takes the lock the dead process held and finishes the job
    done = halving.promote(study, cfg.quality.rungs)
    assert [p.candidate for p in done] == ["c1"]
    assert halving.promote(study, cfg.quality.rungs) == []  # idempotent: nothing is enqueued twice
    keys = [t.user_attrs["candidate"] for t in study.get_trials() if TrialRecord.of(t).rung == 1]
    assert sorted(keys) == ["c0", "c1"]


# --- bad configurations --------------------------------------------------------------------------------------

def _cfg(**quality):
    return {"study": {"name": "t", "n_trials": 9}, "space": {"base": "tiny-debug"},
            "quality": {"evaluator": "flow", **quality}, "objectives": {"val_loss": "minimize"}}


@pytest.mark.parametrize("quality,study,match", [
    ({"rungs": ["11steps", "33steps", "99steps"]}, {"n_trials": 8},
     "n_trials = 8 cannot promote: 3 rungs with reduction 3 need at least 9 candidates"),
    ({"rungs": ["11steps", "33steps"], "reduction": 4}, {"n_trials": None}, "n_trials = None cannot promote"),
    ({"rungs": ["33steps", "11steps"]}, {}, "'11steps' is not larger than '33steps'"),
    ({"rungs": ["11steps", "60s"]}, {}, "budgets of different kinds"),
    ({"rungs": ["11steps", "lots"]}, {}, "rungs: budget 'lots' is not understood"),
    ({"rungs": ["11steps"]}, {}, "must list at least two budget strings"),
    ({"rungs": "11steps"}, {}, "must list at least two budget strings"),
    ({"rungs": ["11steps", "33steps"], "reduction": 1}, {}, "reduction = 1 must be an integer >= 2"),
    ({"rungs": ["11steps", "33steps"], "rung_seeds": [1]}, {}, "rung_seeds = \\[1\\] must give one whole number"),
    ({"rungs": ["11steps", "33steps"], "rung_seeds": [1, 2], "seeds": 2}, {}, "either seeds .* or rung_seeds"),
    ({"reduction": 3, "budget": "11steps"}, {}, "reduction is set without rungs"),
    ({"rungs": ["11steps", "33steps"], "promotion": "sync"}, {}, "promotion = 'sync' must be \"asynchronous\""),
    ({"promotion": "synchronous", "budget": "11steps"}, {}, "promotion is set without rungs"),
])
def test_bad_rung_configs_name_the_key(quality, study, match):
    data = _cfg(**quality)
    data["study"].update(study)
    data["study"] = {k: v for k, v in data["study"].items() if v is not None}
    with pytest.raises(StudyFileError, match=match):
        parse_study(data)


def test_bad_rung_config_on_the_cli_is_one_line_and_changes_nothing(tmp_path, fake_evaluators):
    storage = f"sqlite:///{tmp_path}/s.db"
    good = _write(tmp_path)
    run_study(load_study_file(good, storage=storage), n_trials=2, progress=False, echo=lambda s: None)
    stamp = (tmp_path / "s.db").read_bytes()
    bad = _write(tmp_path, name="halving", n_trials=4)  # same study, now too few candidates to promote twice
    r = subprocess.run([sys.executable, "-m", "pocketdiff.cli", "study", "run", str(bad), "--storage", storage],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "n_trials = 4 cannot promote" in r.stderr and "set n_trials >= 9" in r.stderr
    assert (tmp_path / "s.db").read_bytes() == stamp


# --- the regime gate -----------------------------------------------------------------------------------------

def _design_params(spec) -> float:
    """A stand-in params count, distinct across the SNAPGEN_SPACE grid and unrelated to the quality score."""
    st = spec.stages
    return st[1].channels / 100 + st[2].channels / 1000 + spec.ffn_ratio / 10000 + (spec.attention == "mqa") / 1e5


def _gated_quality(learned_at_rung0: float):
    """A quality stand-in that records the regime's numbers: val_loss from the design (its order is not the params
    order), learned fraction `learned_at_rung0` at the first rung (11 steps) and 0.9 above."""
    def quality(spec, cfg, out_dir, on_report):
        steps = cfg.quality.budget.steps
        st = spec.stages
        val = 0.3 + (spec.ffn_ratio - 3) ** 2 / 10 + (st[2].channels % 256) / 2560 + (spec.attention == "mhsa") / 50
        learned = learned_at_rung0 if steps == 11 else 0.9
        return {"val_loss": val, "learned_fraction": learned, "learned_fraction_ci_low": learned - 0.05,
                "learned_fraction_ci_high": learned + 0.05, "val_loss_constant": 1.2, "val_loss_class_mean": 1.1,
                "val_loss_linear": 0.2, "_evaluator_seconds": 0.0, "_user_attrs": {}}
    return quality


def _gated_study(tmp_path, monkeypatch, learned_at_rung0: float, capsys):
    from pocketdiff.cli import main
    from studies import evaluate as ev

    monkeypatch.setattr(ev, "quality_metrics", _gated_quality(learned_at_rung0))
    monkeypatch.setattr(ev, "cheap_metrics", lambda spec, latent, device: {"params_m": _design_params(spec),
                                                                            "latency_ms": 1.0})
    path = studyfiles.write(tmp_path / "gate.toml", studyfiles.study(
        "gate", n_trials=9, study={"seed": 1}, target={"latent": 64}, space=studyfiles.SNAPGEN_SPACE,
        objectives={"val_loss": "minimize", "params_m": "minimize"},
        quality={"evaluator": "flow", "rungs": ["11steps", "33steps"], "reduction": 3,
                 "early_stop": {"enabled": False}}))
    storage = f"sqlite:///{tmp_path}/gate.db"
    capsys.readouterr()
    assert main(["study", "run", str(path), "--storage", storage, "--no-progress"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="gate", storage=storage)
    assert len(halving.rung_candidates(study.get_trials(), 0)) == 9
    return study, out, (path, storage)


def _decisions(study):
    """Each promotion to rung 1 with the rung-0 candidates finished when it was decided (one process runs trials
    in number order, so those are the ones numbered below it): [(promoted trial, those trials)]."""
    trials = study.get_trials()
    rung0 = halving.rung_candidates(trials, 0).values()  # a re-proposed spec is one candidate
    return [(p, [t for t in rung0 if t.number < p.number]) for p in trials if TrialRecord.of(p).rung == 1]


def _top(before, by_params: bool) -> set[str]:
    """The k = len // 3 candidates a promotion over `before` may pick: by params alone, or the usual ranking."""
    before = sorted(before, key=lambda t: t.number)
    k = len(before) // 3
    if by_params:
        order = sorted(range(len(before)), key=lambda i: (before[i].values[1], i))
    else:
        order = rank_order(np.array([t.values for t in before]), ["minimize"] * 2)
    return {before[i].user_attrs["candidate"] for i in order[:k]}


def test_a_rung_below_the_regime_gate_promotes_by_the_cheap_objectives(tmp_path, monkeypatch, capsys):
    study, out, (path, storage) = _gated_study(tmp_path, monkeypatch, 0.1, capsys)
    decisions = _decisions(study)
    assert decisions
    for promoted, before in decisions:
        assert promoted.user_attrs["candidate"] in _top(before, by_params=True)
        # the promoted trial's record says how it was ranked
        assert TrialRecord.of(promoted).promoted_by.startswith(
            "cheap objectives only (params_m): rung 0 learned fraction 0.10 < 0.5")
    # ...and the usual ranking would have picked otherwise from these values
    assert any(_top(before, True) != _top(before, False) for _, before in decisions)
    # every trial line shows the learned fraction (it is not an objective here); the run ends with the gate's line
    rung0_lines = [line for line in out.splitlines() if line.startswith("trial ") and "[rung 0" in line]
    assert len(rung0_lines) >= 9 and all("learned_fraction=0.1 [0.05, 0.15]" in line for line in rung0_lines)
    gate = [line for line in out.splitlines() if line.startswith("regime gate")]
    assert len(gate) == 1 and "rung 0 (11steps) 0.10 over 9 candidate(s): NOT a quality rung: promoted by " \
        "params_m only" in gate[0] and "rung 1 (33steps) 0.90 over" in gate[0] and "a quality rung" in gate[0]
    # study status says it too, and --json gives each rung's regime
    from pocketdiff.cli import main
    assert main(["study", "status", str(path), "--storage", storage]) == 0
    status = capsys.readouterr().out
    assert gate[0] in status and "learned_fraction=0.9 [0.85, 0.95]" in status
    assert main(["study", "status", str(path), "--storage", storage, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(r["rung"], r["quality"]) for r in data["regimes"]] == [(0, False), (1, True)]
    assert data["regimes"][0]["learned_fraction"] == pytest.approx(0.1) and data["regime"] == gate[0]


def test_a_rung_above_the_regime_gate_promotes_by_non_dominated_rank(tmp_path, monkeypatch, capsys):
    study, out, _ = _gated_study(tmp_path, monkeypatch, 0.6, capsys)
    decisions = _decisions(study)
    assert decisions
    for promoted, before in decisions:
        assert promoted.user_attrs["candidate"] in _top(before, by_params=False)
        assert TrialRecord.of(promoted).promoted_by.startswith("non-dominated rank over every objective (rung 0 "
                                                               "learned fraction 0.60)")
    assert any(_top(before, True) != _top(before, False) for _, before in decisions)
    assert "rung 0 (11steps) 0.60 over 9 candidate(s): a quality rung" in out


def test_the_gate_without_a_cheap_objective_ranks_by_every_objective_and_says_so():
    study = optuna.create_study(directions=["minimize"])
    for i, value in enumerate([5.0, 1.0, 4.0, 2.0, 3.0, 6.0]):
        study.add_trial(optuna.trial.create_trial(values=[value], user_attrs={
            "rung": 0, "candidate": f"c{i}", "learned_fraction": 0.2}))
    rungs = Rungs((Budget(steps=1), Budget(steps=3)), 3)
    due = due_promotions(study.get_trials(), rungs, ["minimize"], ["val_loss"])
    assert [p.candidate for p in due] == ["c1", "c3"]
    assert due[0].ranked_by.startswith("every objective, though rung 0 learned fraction 0.20 < 0.5")
    assert halving.rung_regime(study.get_trials(), 0) == halving.Regime(pytest.approx(0.2), 6)
    assert halving.regime([None, float("nan"), 0.4, 0.8]) == halving.Regime(pytest.approx(0.6), 2)
    assert halving.regime([]).quality and not halving.regime([0.49]).quality and halving.regime([0.5]).quality
