"""Winner selection (studies/winner.py) and `pocketdiff study best`: by the metric's direction, feasible trials
of the front rung only, under an optional latency budget."""
import json

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from pocketdiff.cli import main
from search_space import PRESETS
from studies.winner import NoWinner, select_winner

SPEC = json.loads(PRESETS["tiny-debug"].to_json())


def _study(tmp_path, objectives, trials, rungs=None, name="w"):
    """A stored study: `trials` are (values, latency_ms, constraint, rung) tuples."""
    storage = f"sqlite:///{tmp_path}/{name}.db"
    study = optuna.create_study(storage=storage, study_name=name, directions=[d for _, d in objectives])
    study.set_user_attr("metric_names", [m for m, _ in objectives])
    if rungs:
        study.set_user_attr("rungs", rungs)
    for i, (values, latency, constraint, rung) in enumerate(trials):
        study.add_trial(create_trial(
            values=values, constraints={"max_latency_ms": constraint},
            user_attrs={"spec": SPEC, "spec_id": f"s{i}", "compact": f"c{i}", "latency_ms": latency, "rung": rung}))
    return study, storage


def test_a_maximized_metric_picks_the_largest_feasible_value(tmp_path):
    # trial 1 has the highest psnr but breaks its constraint; trial 3 the next highest and is feasible
    study, _ = _study(tmp_path, [("psnr", "maximize"), ("latency_ms", "minimize")], [
        ([20.0, 5.0], 5.0, -1.0, 0), ([30.0, 9.0], 9.0, 1.0, 0), ([22.0, 4.0], 4.0, -1.0, 0),
        ([25.0, 6.0], 6.0, -1.0, 0)])
    w = select_winner(study)
    assert (w.trial.number, w.metric, w.direction, w.value) == (3, "psnr", "maximize", 25.0)
    # a latency budget drops trial 3 (6 ms): the best psnr at or under 5 ms is trial 2
    assert select_winner(study, max_latency_ms=5.0).trial.number == 2
    # an explicit minimized objective picks the smallest
    assert select_winner(study, metric="latency_ms").trial.number == 2


def test_a_minimized_metric_picks_the_smallest_value_of_the_top_rung(tmp_path):
    # rung 0 holds the lowest loss (a shorter budget, not comparable); the winner comes from rung 1
    study, _ = _study(tmp_path, [("val_loss", "minimize"), ("params_m", "minimize")], [
        ([0.10, 1.0], 1.0, -1.0, 0), ([0.50, 1.0], 1.0, -1.0, 0), ([0.40, 1.0], 1.0, -1.0, 1),
        ([0.30, 1.0], 1.0, -1.0, 1), ([0.35, 1.0], 1.0, -1.0, 1)], rungs=["10steps", "30steps"])
    w = select_winner(study)
    assert (w.trial.number, w.value, w.rung) == (3, 0.30, 1)
    assert w.record["spec"] == SPEC and w.record["direction"] == "minimize"


def test_no_winner_says_which_filter_left_none(tmp_path):
    study, _ = _study(tmp_path, [("psnr", "maximize")], [([20.0], 5.0, 1.0, 0)])
    with pytest.raises(NoWinner, match="meets its constraints"):
        select_winner(study)
    study, _ = _study(tmp_path, [("psnr", "maximize")], [([20.0], 5.0, -1.0, 0)], name="w2")
    with pytest.raises(NoWinner, match="at or under 1 ms"):
        select_winner(study, max_latency_ms=1.0)
    with pytest.raises(NoWinner, match="no feasible trial recorded 'fid'"):
        select_winner(study, metric="fid")


def test_study_best_writes_the_highest_psnr_decoder(tmp_path, capsys):
    """`pocketdiff study best studies/decoder.toml` on a decoder study: psnr is maximized."""
    study, storage = _study(tmp_path, [("psnr", "maximize"), ("latency_ms", "minimize"), ("params_m", "minimize")], [
        ([24.0, 3.0, 1.0], 3.0, -1.0, 0), ([27.5, 4.0, 1.2], 4.0, -1.0, 0), ([26.0, 2.0, 0.9], 2.0, -1.0, 0)],
        name="decoder")
    out = tmp_path / "best.json"
    assert main(["study", "best", "studies/decoder.toml", "--storage", storage, "-o", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["trial"] == 1 and record["metrics"]["psnr"] == 27.5
    assert "psnr=27.5 (maximized)" in capsys.readouterr().out
    assert main(["study", "best", "studies/decoder.toml", "--storage", storage, "--max-latency-ms", "1",
                 "-o", str(out)]) == 2
    assert "at or under 1 ms" in capsys.readouterr().err
