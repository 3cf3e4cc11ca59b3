"""Study files: shipped ones parse and sample valid specs; bad files fail naming the key."""
from pathlib import Path

import optuna
import pytest

from search_space import PRESETS
from studies.config import StudyFileError, load_study_file, parse_study

STUDIES = sorted(Path(__file__).resolve().parents[2].joinpath("studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_files_sample_valid_specs(path):
    cfg = load_study_file(path)
    study = optuna.create_study(directions=cfg.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(25):
        trial = study.ask()
        spec = cfg.space.sample(trial)  # raises SpecError for an invalid combination
        kinds.add(spec.spec_id)
        study.tell(trial, [0.0] * len(cfg.directions))
    assert len(kinds) > 1


def test_quick_study_is_the_documented_default():
    cfg = load_study_file(Path(__file__).resolve().parents[2] / "studies" / "quick.toml")
    assert cfg.name == "quick" and cfg.storage == "sqlite:///runs/quick/study.db"
    # quality by the validation loss: FD is far above its noise floor at these budgets (benchmarks/proxy_fidelity.md)
    assert cfg.metric_names[0] == "val_loss" and "latency_ms" in cfg.metric_names
    assert cfg.enqueue and all(p in PRESETS for p in cfg.enqueue)
    # the main job is multi-fidelity, and its candidate count lets at least one reach the top rung
    assert cfg.quality.rungs is not None and len(cfg.quality.rungs.budgets) >= 2
    assert cfg.n_trials >= cfg.quality.rungs.min_candidates()


def _base(**sections):
    data = {"study": {"name": "t"}, "space": {"base": "tiny-debug"}, "objectives": {"params_m": "minimize"}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return data


@pytest.mark.parametrize("change,match", [
    ({"space": {"headdim": 3}}, "unknown knob 'headdim'"),
    ({"space": {"stages.9.channels": {"choices": [32]}}}, "unknown knob 'stages.9.channels'"),
    ({"space": {"attention": {"choices": ["mqa", 3]}}}, "attention: value 3 does not fit"),
    ({"space": {"ffn_ratio": {"low": 4.0, "high": 2.0}}}, "low=4.0 is above high=2.0"),
    ({"space": {"ffn_ratio": {"lo": 4.0}}}, "unknown option\\(s\\) lo"),
    ({"space": {"head_dim": 48}}, "fixed values give an invalid spec"),
    ({"space": {"base": "nope"}}, "base='nope' is not a preset"),
    ({"space": {"attention": {"choices": ["mqa"]}, "kv_heads": {"choices": [1], "when": {"atention": "gqa"}}}},
     "when-condition on unknown key 'atention'"),
    ({"study": {"sampler": "bayes"}}, "sampler='bayes' is not one of"),
    ({"study": {"n_trial": 3}}, "\\[study\\] unknown key\\(s\\) n_trial"),
    ({"objectives": {"fd": "minimize"}}, "no evaluator produces 'fd'; known metrics: "),
    ({"objectives": {"params_m": "lower"}}, "use \"minimize\" or \"maximize\""),
    ({"objectives": {"fd_domain": "minimize"}}, "fd_domain is produced by evaluator flow, which this study does not "
                                              "run \\(it runs cost, latency\\); set \\[quality\\] evaluator"),
    ({"objectives": {"host_ms": "minimize"}}, "\\[objectives\\] no evaluator produces 'host_ms'"),
    ({"objectives": {"psnr": "maximize"}, "quality": {"evaluator": "flow"}},
     "psnr is produced by evaluator decoder, which this study does not run \\(it runs cost, latency, flow\\)"),
    ({"quality": {"evaluator": "flow", "encoder": "tiny-ae"}},
     "\\[quality\\] unknown option\\(s\\) encoder for evaluator 'flow'; known: budget, data, guidance"),
    ({"quality": {"evaluator": "flow", "guidance": "high"}}, "\\[quality\\] guidance = 'high' must be a finite number from 0 to 100"),
    ({"constraints": {"max_latency_ms": -1}}, "must be a positive number"),
    ({"enqueue": {"presets": ["sdxl"]}}, "unknown preset 'sdxl'"),
    ({"study": {"sampler": "grid"}, "space": {"ffn_ratio": {"low": 2.0, "high": 4.0}}}, "needs every knob"),
])
def test_bad_study_files_name_the_key(change, match):
    with pytest.raises(StudyFileError, match=match):
        parse_study(_base(**change))


def test_unknown_section_and_missing_file(tmp_path):
    with pytest.raises(StudyFileError, match="unknown section\\(s\\) \\[searchspace\\]"):
        parse_study({**_base(), "searchspace": {}})
    with pytest.raises(StudyFileError, match="does not exist"):
        load_study_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname=1")
    with pytest.raises(StudyFileError, match="not valid TOML"):
        load_study_file(bad)


def test_conditional_knobs_and_per_stage_expansion():
    cfg = parse_study(_base(space={
        "attention": {"choices": ["mhsa", "gqa"]},
        "kv_heads": {"choices": [2], "when": {"attention": "gqa"}},
        "conv": {"choices": ["regular", "separable"]},
        "conv_expansion": {"choices": [2.0], "when": {"conv": "separable"}, "otherwise": 1.0},
        "stages.*.self_attention": {"choices": [True, False]},
    }))
    assert {k.path for k in cfg.space.knobs} >= {"stages.0.self_attention", "stages.1.self_attention"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        spec = cfg.space.sample(trial)
        assert ("kv_heads" in trial.params) == (spec.attention == "gqa")
        assert spec.conv_expansion == (2.0 if spec.conv == "separable" else 1.0)
        seen.add((spec.attention, spec.conv))
        study.tell(trial, 0.0)
    assert len(seen) == 4


def test_quality_is_parsed_once_into_typed_values():
    from training.budget import Budget
    from training.proxy import ProxyConfig

    cfg = load_study_file(Path(__file__).resolve().parents[2] / "studies" / "quick.toml")
    q = cfg.quality
    assert q.evaluator == "flow" and q.data == "mnist5k" and q.seeds == 1 and cfg.jobs == 2
    assert q.rungs.budgets == (Budget(steps=64), Budget(steps=128)) and q.rungs.seeds == (1, 3)
    assert q.options["proxy"] == ProxyConfig() and q.options["n_samples"] == 0  # the study's width, 1/7
    assert q.options["sample_steps"] == 8 and q.early_stop.enabled is False  # declared default; the file's rule
    top = cfg.at_rung(1).quality
    assert (top.budget, top.seeds) == (Budget(steps=128), 3) and cfg.quality.budget == Budget(steps=500)
    assert set(q.evaluator_config()) == {"data", "budget", "seeds", "n_samples", "sample_steps", "guidance", "proxy"}
    # a study without a budget gets the evaluator's one declared default, typed
    assert parse_study(_base(quality={"evaluator": "flow"}, objectives={"val_loss": "minimize"})).quality.budget \
        == Budget(steps=500)
    decoder = parse_study({"study": {"name": "d"}, "space": {"base": "tiny-debug-decoder"},
                           "quality": {"evaluator": "decoder"}, "objectives": {"psnr": "maximize"}})
    assert (decoder.quality.data, decoder.quality.budget) == ("sample-images", Budget(seconds=60.0))
    none = parse_study(_base())
    assert none.quality.evaluator == "none" and none.quality.budget is None and none.quality.rungs is None


def test_the_stored_definition_is_the_file_as_written():
    """A study stored before keeps matching its file: the definition holds the [quality] table as written (a budget
    spelled "500 Steps" stays so), not the typed values."""
    cfg = parse_study(_base(quality={"evaluator": "flow", "budget": "500 Steps", "guidance": 3},
                            objectives={"val_loss": "minimize"}))
    assert cfg.quality.budget.steps == 500 and cfg.quality.options["guidance"] == 3.0
    assert cfg.fingerprint()["quality"] == {"budget": "500 Steps", "evaluator": "flow", "guidance": 3}
    assert "rungs" not in cfg.fingerprint()


@pytest.mark.parametrize("quality,study,match", [
    ({"evaluator": "none", "budget": "40steps"}, {}, "\\[quality\\] budget set without an evaluator"),
    ({"evaluator": "flow", "data": "imagenet"}, {}, "data = 'imagenet' is not a flow data source"),
    ({"evaluator": "flow", "proxy": 0.5}, {}, "proxy must be a table"),
    ({"evaluator": "decoder", "rungs": ["30s", "60s"], "rung_seeds": [1, 2]}, {"n_trials": 3},
     "rung_seeds: evaluator 'decoder' has no seeds option"),
])
def test_quality_options_are_checked_by_their_evaluator(quality, study, match):
    base = "tiny-debug-decoder" if quality["evaluator"] == "decoder" else "tiny-debug"
    objective = {"psnr": "maximize"} if quality["evaluator"] == "decoder" else {"params_m": "minimize"}
    with pytest.raises(StudyFileError, match=match):
        parse_study({"study": {"name": "t", **study}, "space": {"base": base}, "quality": quality,
                     "objectives": objective})
