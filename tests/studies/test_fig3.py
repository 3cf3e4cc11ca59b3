"""The Figure 3 quality orderings (studies/results.py `fig3_orderings`): each step against the step before it,
the paper's published FID ordering beside our difference with its interval, and the verdict."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from evaluators.stats import holm, tost
from studies.results import FIG3_MARGINS, FIG3_PAPER_ORDER, FIG3_PARENT, fig3_orderings, fig3_orderings_text


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
    assert t.loc["b", "p"] == pytest.approx(stats.ttest_rel(CHAIN["b"], CHAIN["a"]).pvalue)
    assert t.loc["b", "verdict"] == "reproduced" and t.loc["b", "interval"] == "paired over 3 seeds, 95%"
    assert t.loc["c1", "verdict"] == "reproduced"  # paper: worse; ours +1 every seed
    assert t.loc["c2", "verdict"] == "not resolved at proxy scale"  # +1.5, -1.1, +0.8: spans zero
    assert t.loc["d", "verdict"] == "consistent with the paper's 'comparable' (within +-5)"  # paper: comparable
    assert t.loc["d", "margin"] == FIG3_MARGINS["fd_domain"] and t.loc["b", "margin"] != t.loc["b", "margin"]
    # e: ours +2.4 to +2.8, a resolved difference, but within the margin: still the paper's "comparable"
    assert t.loc["e", "verdict"] == "consistent with the paper's 'comparable' (within +-5; ours resolved worse, " \
                                    "by less than that)"
    assert t.loc["f", "verdict"] == "reproduced"
    assert t.loc["b", "paper FID (vs)"] == "3.76"
    text = fig3_orderings_text(t.reset_index())
    assert " b vs a   paper 3.12 vs 3.76: better" in text and "-> reproduced" in text
    assert "Holm-corrected over the 9 tests of this table" in text and "TOST within +-5 fd_domain" in text


def test_holm_over_the_table_decides_what_one_test_alone_would_not():
    """The family is the whole table: 7 difference tests (one per measured step) and 2 equivalence tests (d, e).
    g - f is +0.4 to +0.7 on every seed: p = 0.026 alone, which without the correction would read "reversed";
    over 9 tests its adjusted p is 0.079, so the table says "not resolved"."""
    t = fig3_orderings(_frame(CHAIN)).set_index("step")
    measured = [s for s in FIG3_PAPER_ORDER if s != "f-1to1"]
    pairs = [(CHAIN[s], CHAIN[FIG3_PARENT[s]]) for s in measured]
    family = [stats.ttest_rel(x, y).pvalue for x, y in pairs] + \
             [tost(CHAIN[s], CHAIN[FIG3_PARENT[s]], FIG3_MARGINS["fd_domain"]).p for s in ("d", "e")]
    adjusted = holm(family).adjusted
    assert list(t.loc[measured, "p (Holm)"]) == pytest.approx(adjusted[:7])
    assert list(t.loc[["d", "e"], "TOST p (Holm)"]) == pytest.approx(adjusted[7:])
    assert t.loc["g", "p"] == pytest.approx(0.0263, abs=1e-4) and t.loc["g", "p (Holm)"] > 0.05
    assert t.loc["g", "verdict"] == "not resolved at proxy scale"
    # the same data as a one-step table (only f and g measured): one test, and g is "reversed"
    alone = fig3_orderings(_frame({"f": CHAIN["f"], "g": CHAIN["g"]})).set_index("step")
    assert alone.loc["g", "verdict"] == "reversed" and alone.loc["g", "p (Holm)"] == pytest.approx(alone.loc["g", "p"])


def test_comparable_only_by_equivalence_within_the_margin():
    """An interval that merely contains 0 is not the paper's "comparable": noisy seeds for d give "not
    resolved"; a tighter margin turns e's small resolved difference into "differs"."""
    noisy = fig3_orderings(_frame({**CHAIN, "d": [15.0, 4.0, 10.0]})).set_index("step")  # d - c2: +5.5, -5, +0.2
    assert noisy.loc["d", "ci_low"] < 0 < noisy.loc["d", "ci_high"]
    assert noisy.loc["d", "verdict"] == "not resolved at proxy scale" and noisy.loc["d", "TOST p (Holm)"] > 0.05
    tight = fig3_orderings(_frame(CHAIN), margins={"fd_domain": 1.0}).set_index("step")
    assert tight.loc["e", "verdict"] == "differs: ours worse" and tight.loc["e", "margin"] == 1.0
    assert tight.loc["d", "verdict"] == "consistent with the paper's 'comparable' (within +-1)"
    by_fid = fig3_orderings(_frame(CHAIN).rename(columns={"fd_domain": "fid"}).assign(
        per_seed_json=lambda f: f["per_seed_json"].str.replace("fd_domain", "fid")), metric="fid")
    assert by_fid.set_index("step").loc["d", "verdict"].startswith("not resolved (no margin for fid")


def test_unpaired_intervals_and_one_seed():
    # without per-seed values the two seed intervals combine (wider): b - a = -1.97 +- sqrt(2); no test, no verdict
    t = fig3_orderings(_frame(CHAIN, paired=False, intervals=True)).set_index("step")
    assert t.loc["b", "ci_high"] - t.loc["b", "ci_low"] == pytest.approx(2 * np.sqrt(2))
    assert "unpaired" in t.loc["b", "interval"] and t.loc["b", "verdict"] == "no verdict (no per-seed values to test)"
    # one seed: a difference, no interval, no verdict
    one = fig3_orderings(_frame({k: v[:1] for k, v in CHAIN.items()}, paired=False)).set_index("step")
    assert one.loc["b", "difference"] == pytest.approx(-2.0)
    assert set(one.drop(index="f-1to1")["verdict"]) == {"no verdict (one seed)"}  # f-1to1: no trial here
    assert one.loc["f-1to1", "verdict"] == "not measured"
    # a missing step: its row and the next one's say "not measured"
    gap = fig3_orderings(_frame({k: v for k, v in CHAIN.items() if k != "d"})).set_index("step")
    assert gap.loc["d", "verdict"] == gap.loc["e", "verdict"] == "not measured"


def test_the_flow_evaluator_stores_the_per_seed_values_figure_3_pairs(monkeypatch):
    """A study trial carries each metric's per-seed values (`per_seed`), so Figure 3 pairs its seeds; without
    them every verdict would fall back to "no verdict"."""
    import evaluators.quality as quality
    from evaluators import registry
    from search_space import PRESETS

    per_seed = [{"seed": s, "status": "ok", "val_loss": 1.0 + s, "fd_domain": 10.0 * (s + 1)} for s in range(3)]
    monkeypatch.setattr(quality, "evaluate_quality_seeds", lambda *a, **k: quality.aggregate_seeds(per_seed))
    flow = registry.get("flow")
    out = flow.run(PRESETS["tiny-debug"], flow.check_config({"seeds": 3}), 0, None, None)
    assert out["_user_attrs"]["per_seed"] == {"val_loss": [1.0, 2.0, 3.0], "fd_domain": [10.0, 20.0, 30.0]}


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
