"""The Figure 3 quality orderings (studies/results.py `fig3_orderings`): each step against the step before it,
the paper's published FID ordering beside our difference with its interval, and the verdict."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from studies.results import FIG3_PAPER_ORDER, fig3_orderings, fig3_orderings_text


def _frame(values: dict[str, list[float]], paired: bool = True, intervals: bool = False) -> pd.DataFrame:
    """One COMPLETE trial per chain step with per-seed fd_domain values (as the seeds evaluator stores them)."""
    rows = []
    for i, (step, seeds) in enumerate(values.items()):
        row = {"number": i, "state": "COMPLETE", "preset": f"fig3-{step}", "rung": 0.0,
               "fd_domain": float(np.mean(seeds))}
        if paired:
            row["per_seed_json"] = json.dumps({"fd_domain": seeds})
        if intervals:
            row["fd_domain_ci_low"], row["fd_domain_ci_high"] = row["fd_domain"] - 1.0, row["fd_domain"] + 1.0
        rows.append(row)
    return pd.DataFrame(rows)


CHAIN = {  # per-seed fd_domain: b clearly better than a, c1 clearly worse than b, c2 vs b noisy, ...
    "a": [10.0, 12.0, 11.0], "b": [8.0, 10.1, 9.0], "c1": [9.0, 11.2, 10.1], "c2": [9.5, 9.0, 9.8],
    "d": [9.6, 9.1, 9.7], "e": [12.0, 11.5, 12.5], "f": [11.0, 10.4, 11.6], "g": [11.5, 11.1, 12.0],
}


def test_paired_orderings_and_verdicts():
    t = fig3_orderings(_frame(CHAIN)).set_index("step")
    assert list(t.index) == list(FIG3_PAPER_ORDER)
    # b - a per seed: -2, -1.9, -2 -> paired t interval, clearly below zero: the paper's "better" reproduced
    d = np.array(CHAIN["b"]) - np.array(CHAIN["a"])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert t.loc["b", "difference"] == pytest.approx(d.mean())
    assert (t.loc["b", "ci_low"], t.loc["b", "ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert t.loc["b", "verdict"] == "reproduced" and t.loc["b", "interval"] == "paired over 3 seeds, 95%"
    assert t.loc["c1", "verdict"] == "reproduced"  # paper: worse; ours +1 every seed
    assert t.loc["c2", "verdict"] == "not resolved at proxy scale"  # +1.5, -1.1, +0.8: spans zero
    assert t.loc["d", "verdict"] == "consistent (no difference resolved)"  # paper: comparable
    assert t.loc["e", "verdict"] == "differs: ours worse"  # paper: minimal impact; ours +2.5 to +2.8
    assert t.loc["f", "verdict"] == "reproduced"
    assert t.loc["g", "verdict"] == "reversed"  # paper: better; ours worse on every seed
    assert t.loc["b", "paper FID (vs)"] == "3.76"
    text = fig3_orderings_text(t.reset_index())
    assert " b vs a   paper 3.12 vs 3.76: better" in text and "-> reversed" in text


def test_unpaired_intervals_and_one_seed():
    # without per-seed values the two seed intervals combine (wider): b - a = -1.97 +- sqrt(2) -> resolved
    t = fig3_orderings(_frame(CHAIN, paired=False, intervals=True)).set_index("step")
    assert t.loc["b", "ci_high"] - t.loc["b", "ci_low"] == pytest.approx(2 * np.sqrt(2))
    assert t.loc["b", "verdict"] == "reproduced" and "unpaired" in t.loc["b", "interval"]
    # one seed: a difference, no interval, no verdict
    one = fig3_orderings(_frame({k: v[:1] for k, v in CHAIN.items()}, paired=False)).set_index("step")
    assert one.loc["b", "difference"] == pytest.approx(-2.0)
    assert set(one.drop(index="f-1to1")["verdict"]) == {"no verdict (one seed)"}  # f-1to1: no trial here
    assert one.loc["f-1to1", "verdict"] == "not measured"
    # a missing step: its row and the next one's say "not measured"
    gap = fig3_orderings(_frame({k: v for k, v in CHAIN.items() if k != "d"})).set_index("step")
    assert gap.loc["d", "verdict"] == gap.loc["e", "verdict"] == "not measured"


def test_study_status_reports_the_orderings(tmp_path, capsys):
    """`study status` of a stored Figure 3 study prints each ordering with its paired interval and verdict;
    a study that met a single fig3 preset on its way prints none."""
    import optuna
    from pocketdiff.cli import main

    url = f"sqlite:///{tmp_path}/fig3.db"
    study = optuna.create_study(study_name="paper-fig3", storage=url, directions=["minimize"])
    study.set_user_attr("metric_names", ["fd_domain"])
    for step in ("a", "b"):
        seeds = CHAIN[step]
        study.add_trial(optuna.trial.create_trial(values=[float(np.mean(seeds))], user_attrs={
            "preset": f"fig3-{step}", "spec_id": step, "fd_domain": float(np.mean(seeds)),
            "per_seed": {"fd_domain": seeds}}))
    assert main(["study", "status", "--storage", url, "--study", "paper-fig3"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.strip().startswith("b vs a"))
    assert "paired over 3 seeds, 95%" in line and line.endswith("-> reproduced")
    assert "c1 vs b" in out and "-> not measured" in out
    assert main(["study", "status", "--storage", url, "--study", "paper-fig3", "--json"]) == 0
    import json as _json
    rows = {r["step"]: r for r in _json.loads(capsys.readouterr().out)["fig3_orderings"]}
    assert rows["b"]["verdict"] == "reproduced" and rows["b"]["ci_high"] < 0

    other = optuna.create_study(study_name="search", storage=url, directions=["minimize"])
    other.add_trial(optuna.trial.create_trial(values=[1.0], user_attrs={"preset": "fig3-a", "fd_domain": 1.0}))
    assert main(["study", "status", "--storage", url, "--study", "search"]) == 0
    assert "Figure 3" not in capsys.readouterr().out


def test_each_separable_block_reading_is_its_own_chain():
    """paper-fig3.toml sweeps both readings of the separable block: a step is compared with its parent under
    the same reading (uib's c2 against uib's b), never across readings, in the orderings and the table."""
    per_conv = _frame(CHAIN)
    per_conv["knob:sep_block"] = "per_conv"
    uib_chain = {**CHAIN, "c2": [7.0, 8.9, 7.9]}  # under uib, c2 beats b on every seed
    uib = _frame(uib_chain)
    uib["number"] += len(per_conv)
    uib["knob:sep_block"] = "uib"
    frame = pd.concat([per_conv, uib], ignore_index=True)
    t = fig3_orderings(frame)
    assert set(t["reading"]) == {"per_conv", "uib"}
    c2 = t[t["step"] == "c2"].set_index("reading")
    assert c2.loc["per_conv", "verdict"] == "not resolved at proxy scale"
    assert c2.loc["uib", "verdict"] == "reproduced"
    assert c2.loc["uib", "difference"] == pytest.approx(np.mean(np.array(uib_chain["c2"]) - np.array(CHAIN["b"])))
    text = fig3_orderings_text(t)
    assert "separable block uib:" in text and text.index("separable block per_conv:") < text.index("separable block uib:")
    from studies.results import fig3_table
    table = fig3_table(frame.assign(params_m=1.0))
    assert len(table) == 2 * len(CHAIN) and set(table["label"]) >= {"c2 (per_conv)", "c2 (uib)"}
