"""Paired evaluation with confidence: seed means with t-intervals, the study contract (m, m_ci_low, m_ci_high),
paired differences, refusal of same-proxy comparisons, metric validity and [quality] key validation."""
import json
import math

import pytest
import torch
from scipy import stats

import pocketdiff.cli as cli
from evaluators import quality
from evaluators.quality import COMPARE_MARGINS, SameProxyError, aggregate_seeds, compare_quality, compare_verdict
from search_space import PRESETS
from search_space.errors import UserError
from studies.config import StudyFileError, parse_study
from training.data import FlowData
from training.fidelity import extractor_validity
from tests.toys import toy_flow


def test_seed_interval_is_the_student_t_interval():
    """The aggregate's m_ci_low / m_ci_high are evaluators/stats.py's t-interval of the seed values."""
    values = [1.0, 1.4, 0.9, 1.3]
    out = aggregate_seeds([_record(i, v, 10.0 + i) for i, v in enumerate(values)])
    ref = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert out["val_loss"] == pytest.approx(1.15) and (out["val_loss_ci_low"], out["val_loss_ci_high"]) == \
        pytest.approx(ref)
    diverged = aggregate_seeds([_record(0, 1.0, 10.0), _record(1, float("nan"), 11.0)])
    assert math.isnan(diverged["val_loss"]) and math.isnan(diverged["val_loss_ci_low"])


def _record(seed, val, fd, digest="d0"):
    return {"spec_id": "s", "proxy_spec_id": "p", "seed": seed, "status": "ok", "val_loss": val, "fd_domain": fd,
            "steps": 20, "stream_digest": digest, "proxy": {"channels": [[1], [1]]}}


def test_seed_aggregate_keeps_names_and_adds_intervals():
    out = aggregate_seeds([_record(0, 1.0, 10.0), _record(1, 1.2, 14.0), _record(2, 1.1, 12.0)])
    assert out["val_loss"] == pytest.approx(1.1) and out["fd_domain"] == pytest.approx(12.0)
    assert out["fd_domain_ci_low"] < 12.0 < out["fd_domain_ci_high"]
    assert out["steps"] == 20 and out["seeds"] == 3 and out["seed_list"] == [0, 1, 2]
    single = aggregate_seeds([_record(0, 1.0, 10.0)])
    assert "val_loss_ci_low" not in single and single["seeds"] == 1
    # the regime's baselines are the same in every seed: kept as they are, with no interval; the learned fraction
    # is a metric like the others
    regime = {"val_loss_constant": 1.2, "val_loss_class_mean": 1.1, "val_loss_linear": 0.2}
    out = aggregate_seeds([{**_record(s, v, 10.0), **regime, "learned_fraction": 1.2 - v}
                           for s, v in ((0, 0.8), (1, 0.7), (2, 0.9))])
    assert {k: out[k] for k in regime} == regime and not any(f"{k}_ci_low" in out for k in regime)
    assert out["learned_fraction"] == pytest.approx(0.4) and out["learned_fraction_ci_low"] < 0.4


def test_study_quality_metrics_contract(monkeypatch, tmp_path):
    """The dict a study stores: each metric m is the seed mean, plus m_ci_low / m_ci_high when seeds > 1."""
    from studies.evaluate import evaluation_key, quality_metrics

    calls = []

    def fake(spec, data, budget, seed, **kwargs):
        calls.append((seed, kwargs["proxy_config"].width_mult))
        return _record(seed, 1.0 + seed / 10, 10.0 + seed)
    monkeypatch.setattr(quality, "evaluate_quality", fake)
    cfg = parse_study({"study": {"name": "s", "seed": 4}, "space": {"base": "tiny-debug"},
                       "quality": {"evaluator": "flow", "budget": "40steps", "seeds": 3},
                       "objectives": {"val_loss": "minimize"}})
    metrics = quality_metrics(PRESETS["tiny-debug"], cfg, tmp_path, lambda fraction, report: None)
    assert [c[0] for c in calls] == [4, 5, 6] and {c[1] for c in calls} == {1.0}
    assert metrics["val_loss"] == pytest.approx(1.5)
    assert metrics["val_loss_ci_low"] < 1.5 < metrics["val_loss_ci_high"]
    assert {"fd_domain", "fd_domain_ci_low", "fd_domain_ci_high"} <= set(metrics)
    assert '"seeds": 3' in evaluation_key(PRESETS["tiny-debug"], cfg)


@pytest.mark.parametrize("quality_table,message", [
    ({"seeds": 0}, "seeds = 0 must be a whole number from 1 to 64"),
    ({"budget": "-10steps"}, "negative"),
    ({"budget": "a while"}, "not understood"),
    ({"proxy": {"width_mult": 2.0}}, "width_mult"),
    ({"proxy": {"depth": 1}}, "unknown key"),
])
def test_bad_quality_keys_are_one_line(quality_table, message):
    with pytest.raises(StudyFileError, match=message) as err:
        parse_study({"study": {"name": "s"}, "space": {"base": "tiny-debug"},
                     "quality": {"evaluator": "flow", **quality_table}, "objectives": {"val_loss": "minimize"}})
    assert len(str(err.value).splitlines()) == 1


def _fake_compare(monkeypatch, val_b, fd_b):
    """A fake quality run: per seed, A and B get the given val_loss / fd_domain (A's from `_A_VALUES`), and the
    same kid_domain (a metric without a default margin)."""
    def fake(spec, data, budget, seed, **kwargs):
        is_a = spec.ffn_ratio == 3.0
        val = _A_VALUES["val_loss"][seed] if is_a else val_b[seed]
        fd = _A_VALUES["fd_domain"][seed] if is_a else fd_b[seed]
        return {**_record(seed, val, fd, digest=f"seed{seed}"), "kid_domain": 0.01 * (seed + 1)}
    monkeypatch.setattr(quality, "evaluate_quality", fake)


_A_VALUES = {"val_loss": [1.00, 1.01, 1.02], "fd_domain": [53.0, 46.0, 51.0]}


def test_compare_reports_paired_differences(monkeypatch):
    """A is better than B by 0.1 in val_loss on every seed (give or take 0.005); the FD differences scatter
    around zero (+3, -4, +1): not resolved, and not comparable within the default margin of 5 either."""
    _fake_compare(monkeypatch, val_b=[1.105, 1.11, 1.115], fd_b=[50.0, 50.0, 50.0])
    a = PRESETS["tiny-debug"]
    result = compare_quality(a, a.replace(ffn_ratio=2.0), _toy_data(), "40steps", seed=0, seeds=3)
    val, fd = result["metrics"]["val_loss"], result["metrics"]["fd_domain"]
    assert result["tests"] == 5 and result["margins"] == COMPARE_MARGINS and result["alpha"] == pytest.approx(0.05)
    assert val["diff"] == pytest.approx(-0.1) and val["apart"] and val["better"] == "A"
    assert val["verdict"] == "A better" and val["p_holm"] < 0.05
    assert val["p"] == pytest.approx(stats.ttest_rel(_A_VALUES["val_loss"], [1.105, 1.11, 1.115]).pvalue)
    assert not fd["apart"] and fd["ci_low"] < 0 < fd["ci_high"] and fd["verdict"] == "not resolved"
    assert "A is better" in compare_verdict("val_loss", val, 3)
    assert "not resolved" in compare_verdict("fd_domain", fd, 3)


def test_compare_says_comparable_only_by_tost_within_the_margin(monkeypatch):
    """B within 0.5 FD of A on every seed: comparable at the default margin of 5, not at a margin of 0.2
    (--margin fd_domain=0.2); identical values are comparable within any margin, but a metric without a margin
    (kid_domain here) is never comparable."""
    _fake_compare(monkeypatch, val_b=[1.0, 1.01, 1.02], fd_b=[53.3, 45.8, 51.1])
    a, b = PRESETS["tiny-debug"], PRESETS["tiny-debug"].replace(ffn_ratio=2.0)
    fd = compare_quality(a, b, _toy_data(), "40steps", seeds=3)["metrics"]["fd_domain"]
    assert fd["verdict"] == "comparable" and fd["margin"] == 5.0 and fd["tost_p_holm"] < 0.05
    assert "comparable (within +-5" in compare_verdict("fd_domain", fd, 3)
    tight = compare_quality(a, b, _toy_data(), "40steps", seeds=3, margins={"fd_domain": 0.2})["metrics"]
    assert tight["fd_domain"]["verdict"] == "not resolved" and tight["fd_domain"]["margin"] == 0.2
    assert tight["val_loss"]["verdict"] == "comparable"  # identical on every seed: within any margin
    assert tight["kid_domain"]["verdict"] == "not resolved" and tight["kid_domain"]["margin"] is None
    assert "no margin declared" in compare_verdict("kid_domain", tight["kid_domain"], 3)
    with pytest.raises(UserError, match="no metric psnr"):
        compare_quality(a, b, _toy_data(), "40steps", seeds=3, margins={"psnr": 1.0})
    with pytest.raises(UserError, match="positive"):
        compare_quality(a, b, _toy_data(), "40steps", seeds=3, margins={"val_loss": -1.0})


def test_compare_command_prints_the_margins_and_the_family(monkeypatch, capsys):
    """`eval compare` says beside the verdicts how many tests Holm corrected over and which margins it used;
    --margin overrides one metric's; a malformed --margin is a one-line usage error."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pocketdiff.cmd_eval",))
    monkeypatch.setattr(quality, "load_data", lambda name: _toy_data())
    _fake_compare(monkeypatch, val_b=[1.105, 1.11, 1.115], fd_b=[53.3, 45.8, 51.1])
    rc = cli.main(["-q", "eval", "compare", "tiny-debug", "tiny-debug", "--set-b", "ffn_ratio=2.0", "--seeds", "3",
                   "--budget", "40steps", "--margin", "fd_domain=1"])
    out = capsys.readouterr().out
    assert rc == 0 and "Holm-corrected over the 5 tests of this table" in out
    assert "val_loss +-0.02, learned_fraction +-0.02, fd_domain +-1" in out
    assert "val_loss: A - B = -0.1" in out and "A is better" in out
    assert "fd_domain: A - B = -0.06667" in out and "comparable (within +-1: TOST p 0.012, Holm 0.047" in out
    rc = cli.main(["-q", "eval", "compare", "tiny-debug", "tiny-debug", "--margin", "fd_domain"])
    err = capsys.readouterr().err
    assert rc == 2 and "expected METRIC=VALUE" in err and len(err.strip().splitlines()) == 1


def test_compare_reports_the_learned_fraction_and_the_baselines(monkeypatch, capsys):
    """A learned 0.1 more of the regime's learnable loss than B on every seed; the comparison judges the learned
    fraction like any metric (higher is better) and carries the regime's baselines, which the command prints."""
    regime = {"val_loss_constant": 1.5, "val_loss_class_mean": 1.4, "val_loss_linear": 0.5}

    def fake(spec, data, budget, seed, **kwargs):
        val = (1.0 if spec.ffn_ratio == 3.0 else 1.1) + seed / 100
        return {**_record(seed, val, 50.0, digest=f"seed{seed}"), **regime, "learned_fraction": 1.5 - val}
    monkeypatch.setattr(quality, "evaluate_quality", fake)
    a = PRESETS["tiny-debug"]
    result = compare_quality(a, a.replace(ffn_ratio=2.0), _toy_data(), "40steps", seed=0, seeds=3)
    learned = result["metrics"]["learned_fraction"]
    assert learned["diff"] == pytest.approx(0.1) and learned["better"] == "A" and learned["direction"] == "higher"
    assert result["baselines"] == regime
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pocketdiff.cmd_eval",))
    monkeypatch.setattr(quality, "load_data", lambda source: _toy_data())
    assert cli.main(["-q", "eval", "compare", "tiny-debug", "tiny-debug", "--set-b", "ffn_ratio=2", "--seeds", "3",
                     "--budget", "40steps"]) == 0
    out = capsys.readouterr().out
    assert "learned_fraction: A - B = +0.1" in out
    assert "baselines of toy: constant 1.5, class mean 1.4, linear-Gaussian 0.5" in out


def test_compare_refuses_specs_with_one_proxy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pocketdiff.cmd_eval",))
    a = PRESETS["fig3-a"]
    other = tmp_path / "b.json"
    other.write_text(a.replace(text_dim=2048).to_json())  # text width is not represented at proxy scale
    with pytest.raises(SameProxyError):
        compare_quality(a, a.replace(text_dim=2048), _toy_data(), "40steps")
    rc = cli.main(["-q", "eval", "compare", "fig3-a", str(other), "--seeds", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "map to the same proxy" in err and len(err.strip().splitlines()) == 1
    rc = cli.main(["-q", "eval", "compare", "fig3-a", "fig3-b", "--seeds", "0"])
    assert rc == 2 and "--seeds must be >= 1" in capsys.readouterr().err


def _toy_data(n_val=12, classes=3) -> FlowData:
    return toy_flow(300, classes, n_val=n_val)


def test_metrics_that_would_mean_nothing_are_withheld():
    data = _toy_data(n_val=36)
    assert "not clearly above chance" in extractor_validity({"val_accuracy": 0.33}, data, 200)
    assert "not clearly above chance" in extractor_validity({"val_accuracy": 0.5}, data, 200)
    assert extractor_validity({"val_accuracy": 0.95}, data, 200) is None
    assert "fewer than the 500 samples" in extractor_validity({"val_accuracy": 0.95}, data, 500)
    assert "feature dimensions" in extractor_validity({"val_accuracy": 0.95}, data, 100)
    small = data.__class__(**{**data.__dict__, "ref_y": torch.arange(150) % 3})
    assert quality.sample_count(None, small) == 150 and quality.sample_count(None, _toy_data().__class__(
        **{**data.__dict__, "ref_y": torch.arange(5000) % 3})) == quality.NUM_SAMPLES == 192
