"""Paired evaluation with confidence: seed means with t-intervals, the study contract (m, m_ci_low, m_ci_high),
paired differences, refusal of same-proxy comparisons, metric validity and [quality] key validation."""
import json

import pytest
import torch
from scipy import stats

import pocketdiff.cli as cli
from evaluators import quality
from evaluators.quality import (SameProxyError, aggregate_seeds, compare_quality, compare_verdict,
                                mean_interval)
from search_space import PRESETS
from studies.config import StudyFileError, parse_study
from training.data import FlowData
from training.fidelity import extractor_validity
from tests.toys import toy_flow


def test_mean_interval_is_the_student_t_interval():
    values = [1.0, 1.4, 0.9, 1.3]
    mean, low, high = mean_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 4, scale=stats.sem(values))
    assert mean == pytest.approx(1.15) and (low, high) == pytest.approx(ref)
    assert mean_interval([2.0]) == (2.0, None, None)


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
    ({"seeds": 0}, "seeds = 0 must be a whole number >= 1"),
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


def test_compare_reports_paired_differences(monkeypatch, capsys):
    """A is better than B by a consistent 0.1 in val_loss on every seed; FD differences scatter around zero."""
    fd_noise = {0: 3.0, 1: -4.0, 2: 1.0}

    regime = {"val_loss_constant": 1.5, "val_loss_class_mean": 1.4, "val_loss_linear": 0.5}

    def fake(spec, data, budget, seed, **kwargs):
        is_a = spec.ffn_ratio == 3.0
        val = (1.0 if is_a else 1.1) + seed / 100
        return {**_record(seed, val, 50.0 + (fd_noise[seed] if is_a else 0.0), digest=f"seed{seed}"), **regime,
                "learned_fraction": 1.5 - val}
    monkeypatch.setattr(quality, "evaluate_quality", fake)
    a = PRESETS["tiny-debug"]
    b = a.replace(ffn_ratio=2.0)
    data = _toy_data()
    result = compare_quality(a, b, data, "40steps", seed=0, seeds=3)
    val, fd = result["metrics"]["val_loss"], result["metrics"]["fd_domain"]
    assert val["diff"] == pytest.approx(-0.1) and val["apart"] and val["better"] == "A"
    assert not fd["apart"] and fd["ci_low"] < 0 < fd["ci_high"]
    assert "A is better" in compare_verdict("val_loss", val, 3)
    assert "do not tell A and B apart" in compare_verdict("fd_domain", fd, 3)
    learned = result["metrics"]["learned_fraction"]  # higher is better: A learned 0.1 more
    assert learned["diff"] == pytest.approx(0.1) and learned["better"] == "A" and learned["direction"] == "higher"
    assert result["baselines"] == regime
    # the command prints the learned fraction's verdict and the regime's baselines
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pocketdiff.cmd_eval",))
    monkeypatch.setattr(quality, "load_data", lambda source: data)
    assert cli.main(["-q", "eval", "compare", "tiny-debug", "tiny-debug", "--set-b", "ffn_ratio=2"]) == 0
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
