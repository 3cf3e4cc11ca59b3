"""Re-ranking a study after a latency refit (studies/rerank.py, studies/overlay.py, `pocketdiff study rerank`):
the front, the winner and the exports follow the current profile; nothing stored changes."""
import json
import os

import optuna
import pytest
from optuna.trial import create_trial

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models.api import predict  # noqa: E402
from pocketdiff.cli import main  # noqa: E402
from search_space import PRESETS, apply_overrides  # noqa: E402
from studies.queries import pareto_rows  # noqa: E402
from studies.rerank import rerank  # noqa: E402
from studies.winner import select_winner  # noqa: E402
from tests.studyfiles import study as study_table  # noqa: E402
from tests.studyfiles import toml  # noqa: E402

LATENT = 16
WIDTHS = (16, 32, 64)  # tiny-debug's first stage: wider is slower on any profile


def _specs():
    return [apply_overrides(PRESETS["tiny-debug"], [f"stages.0.channels={w}"]) for w in WIDTHS]


def _study(tmp_path, stale_ms, limit):
    """Three trials whose stored latencies (`stale_ms`, as an old profile predicted) rank them the wrong way."""
    storage = f"sqlite:///{tmp_path}/r.db"
    study = optuna.create_study(storage=storage, study_name="r", directions=["minimize", "minimize"])
    study.set_user_attr("metric_names", ["params_m", "latency_ms"])
    for i, (spec, ms) in enumerate(zip(_specs(), stale_ms)):
        study.add_trial(create_trial(
            values=[3.0 - i, ms], constraints={"max_latency_ms": ms - limit},  # 3-i: stand-in parameter counts
            user_attrs={"spec": json.loads(spec.to_json()), "spec_id": spec.spec_id, "compact": f"c{i}",
                        "latency_ms": ms, "latency_fit": "old", "rung": 0}))
    return study, storage


def test_rerank_ranks_the_front_and_the_winner_by_the_current_profile_and_keeps_what_was_stored(tmp_path):
    now = [predict(s, None, "a17pro", latent=LATENT).ms for s in _specs()]
    assert now[0] < now[1] < now[2]
    limit = (now[1] + now[2]) / 2  # the widest is over the budget now
    stale = [now[2] * 10, now[1] * 0.1, now[0] * 0.5]  # the old profile had them backwards, all under budget
    study, _ = _study(tmp_path, stale, max(stale) + 1.0)
    assert select_winner(study, metric="latency_ms").trial.number == 1  # stored numbers: trial 1 is fastest
    assert {r["number"] for r in pareto_rows(study)} == {1, 2}
    result = rerank(study, "a17pro", LATENT, {"max_latency_ms": limit})
    assert [c["now_ms"] for c in result["changes"]] == pytest.approx(now)
    assert result["changes"][0]["fit_at_run"] == "old"
    # ranked by the current profile: trial 0 is fastest; trial 2 breaks the budget and leaves the front
    assert select_winner(study, metric="latency_ms").trial.number == 0
    rows = {r["number"]: r for r in pareto_rows(study)}
    assert 2 not in rows and rows[0]["latency_ms"] == pytest.approx(now[0])
    assert set(result["front_before"]) == {1, 2} and set(result["front_after"]) == {0, 1} == set(rows)
    # nothing stored changed: a fresh load without the overlay still has the run-time numbers
    again = optuna.load_study(study_name="r", storage=study._storage)
    assert [t.user_attrs["latency_ms"] for t in again.get_trials()] == pytest.approx(stale)
    assert [t.values[1] for t in again.get_trials()] == pytest.approx(stale)


def test_study_rerank_command_prints_the_change_and_the_front(tmp_path, capsys):
    now = [predict(s, None, "a17pro", latent=LATENT).ms for s in _specs()]
    _, storage = _study(tmp_path, [now[2] * 10, now[1] * 0.1, now[0] * 0.5], 1e9)
    path = tmp_path / "r.toml"
    path.write_text(toml(study_table("r", target={"latent": LATENT, "device": "a17pro"},
                                     objectives={"params_m": "minimize", "latency_ms": "minimize"})))
    assert main(["study", "rerank", str(path), "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert "latency of 3 trials re-predicted with a17pro's profile fit" in out and "fit at run: old" in out
    assert main(["study", "status", str(path), "--storage", storage]) == 0
    assert "latency re-ranked with a17pro's profile fit" in capsys.readouterr().out
