"""The evaluator registry (evaluators/registry.py): the contract every evaluator registers, once, in its own module
(evaluators/plugins/), the checks a study file goes through, and cache keys that carry the evaluator's version and
a fingerprint of the builder code."""
import dataclasses
import inspect
import json

import pytest

from evaluators import registry
from evaluators.registry import EvaluatorError
from search_space import PRESETS
from search_space.errors import UserError

REPO = registry.ROOT


def test_every_shipped_evaluator_registers_the_contract():
    evaluators = registry.evaluators()
    assert set(evaluators) >= {"cost", "latency", "flow", "decoder"}
    for e in evaluators.values():
        assert e.version and e.metrics and set(e.metrics.values()) <= {"minimize", "maximize"}
        assert len({o.name for o in e.options}) == len(e.options)
    assert registry.direction_of("psnr") == "maximize" and registry.direction_of("val_loss") == "minimize"
    assert registry.direction_of("fd_domain_ci_low") == "minimize"
    assert registry.producers("latency_ms") == ["latency"] and registry.producers("host_ms") == []
    assert {e.name for e in registry.cheap_evaluators()} == {"cost", "latency"}
    assert registry.is_quality_metric("val_loss") and not registry.is_quality_metric("params_m")


def test_options_are_typed_and_unknown_ones_are_refused():
    from training.budget import Budget
    from training.proxy import ProxyConfig

    flow = registry.get("flow")
    config = flow.check_config({"budget": "40steps", "guidance": 3})  # an int where a float is asked: fine
    assert config["budget"] == Budget(steps=40) and config["guidance"] == 3.0 and config["seeds"] == 1
    assert flow.check_config({"proxy": {"width_mult": 0.5}})["proxy"] == ProxyConfig(width_mult=0.5)
    assert flow.check_config(config) == config  # typed values pass through unchanged
    with pytest.raises(EvaluatorError, match="unknown option\\(s\\) encoder for evaluator 'flow'; known: budget"):
        flow.check_config({"encoder": "tiny-ae"})
    with pytest.raises(EvaluatorError, match="seeds = True must be a whole number from 1 to 64"):
        flow.check_config({"seeds": True})
    with pytest.raises(EvaluatorError, match="sample_steps = 2.5 must be a whole number from 1 to 10000"):
        flow.check_config({"sample_steps": 2.5})
    with pytest.raises(UserError, match="unknown evaluator 'host'; known: cost, decoder, flow, latency"):
        registry.get("host")
    with pytest.raises(EvaluatorError, match="scores unet specs; decoder spec"):
        flow.evaluate(PRESETS["tiny-debug-decoder"], {}, 0)


def test_cheap_evaluators_run_through_the_registry():
    spec = PRESETS["tiny-debug"]
    cost = registry.get("cost").evaluate(spec, {"latent": 8}, 0)
    assert cost["params_m"] > 0 and cost["_user_attrs"]["stage_costs"]["stages"]
    from evaluators.cost import describe_cost
    assert cost["params_m"] == pytest.approx(describe_cost(spec, 8, memory=False)["params"] / 1e6)


def test_study_metrics_must_be_produced_by_an_evaluator_it_runs():
    registry.check_metrics("none", [("objectives", "params_m"), ("constraints", "latency_ms")])
    registry.check_metrics("flow", [("objectives", "val_loss")])
    with pytest.raises(EvaluatorError, match="\\[objectives\\] no evaluator produces 'host_ms'"):
        registry.check_metrics("none", [("objectives", "host_ms")])
    with pytest.raises(EvaluatorError, match="psnr is produced by evaluator decoder"):
        registry.check_metrics("flow", [("objectives", "psnr")])


def test_the_fingerprint_covers_the_builder_modules():
    """Without editing the project: the hashed files include every search_space module (the builders) and the
    evaluator's own module, and a changed source string changes the hash."""
    from search_space.fingerprint import code_fingerprint

    builders = {p.relative_to(REPO).as_posix() for p in (REPO / "search_space").rglob("*.py")}
    assert {"search_space/blocks.py", "search_space/unet.py", "search_space/decoder.py"} <= builders
    for name in ("cost", "latency", "flow", "decoder"):
        hashed = {p.relative_to(REPO).as_posix() for p in registry.fingerprint_paths(name)}
        assert builders <= hashed, builders - hashed
        assert "latency_models/features.py" in hashed
        assert all((REPO / p).is_file() for p in hashed)
    assert "evaluators/quality.py" in {p.relative_to(REPO).as_posix() for p in registry.fingerprint_paths("flow")}

    def digest_with(tmp, text):
        f = tmp / "search_space" / "blocks.py"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        return code_fingerprint([f], tmp)
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        original = (REPO / "search_space" / "blocks.py").read_text()
        assert digest_with(Path(d), original) != digest_with(Path(d), original + "# edited\n")
    tag = registry.cache_tag("flow")
    assert tag == {"evaluator": "flow", "version": registry.get("flow").version,
                   "code": registry.code_fingerprint("flow")}


def test_a_stale_cache_entry_is_recomputed_not_served(monkeypatch, tmp_path):
    """An evaluation cached by an older evaluator version (or older builder code) has another key: the study
    looks it up, finds nothing, and evaluates again."""
    from studies import evaluate as ev
    from studies.config import parse_study

    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path))
    cfg = parse_study({"study": {"name": "c"}, "space": {"base": "tiny-debug"},
                       "quality": {"evaluator": "flow", "budget": "40steps"}, "objectives": {"val_loss": "minimize"}})
    spec = PRESETS["tiny-debug"]
    key = ev.evaluation_key(spec, cfg)
    assert json.loads(key)["code"] == registry.code_fingerprint("flow")
    ev.store_cache(key, {"val_loss": 0.5}, {})
    assert ev.load_cache(key)["metrics"] == {"val_loss": 0.5}
    for field, value in (("version", "quality-999"), ("code", "0" * 16)):
        monkeypatch.setattr(registry, "cache_tag", lambda name, f=field, v=value: {
            "evaluator": name, "version": registry.get(name).version, "code": registry.code_fingerprint(name),
            f: v})
        assert ev.load_cache(ev.evaluation_key(spec, cfg)) is None
    assert ev.cache_root().parent == tmp_path  # one cache root


PROBE_NO_TORCH = """
import sys
from evaluators import registry
registry.get("flow").check_config({"budget": "40steps", "proxy": {"width_mult": 0.5}}, "[quality]")
registry.check_metrics("flow", [("objectives", "val_loss")])
names = sorted(registry.evaluators())
print("NAMES=" + ",".join(names), "TORCH=" + str("torch" in sys.modules))
"""


def test_the_declarations_answer_every_check_without_importing_torch():
    """Importing `evaluators` registers every shipped evaluator from its own module; none imports torch at the
    top (they import it inside `run`), so a study file is checked against the registry at once."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PROBE_NO_TORCH], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert "NAMES=cost,decoder,flow,latency TORCH=False" in out.stdout, out.stdout + out.stderr


# --- the contract, over the whole registry ------------------------------------------------------------------

def test_every_evaluator_declares_the_whole_contract_once_in_its_own_module():
    for name, e in registry.evaluators().items():
        assert e.name == name and isinstance(e.version, str) and e.version and e.doc
        assert e.metrics and set(e.metrics.values()) <= set(registry.DIRECTIONS), name
        assert e.spec_kinds and set(e.spec_kinds) <= {"unet", "decoder"}
        assert e.run.__module__ == f"evaluators.plugins.{name}"  # declared where it runs, nowhere else
        for o in e.options:
            assert isinstance(o.type, type) and o.help, (name, o.name)
            if o.default is not None:  # a default is a value of the option's own type that its check accepts
                assert isinstance(o.default, o.type) and o.check(o.default, name) == o.default, (name, o.name)
        for m in e.code:
            assert (REPO / (m.replace(".", "/") + ".py")).is_file(), (name, m)


def test_a_name_is_registered_once(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    cost = registry.get("cost")
    assert registry.register(cost) is cost  # the same declaration again (a module imported twice): a no-op
    changed = dataclasses.replace(cost, version="cost-999")
    with pytest.raises(ValueError, match="'cost' is registered by evaluators.plugins.cost already"):
        registry.register(changed)
    assert registry.get("cost") is cost
    with pytest.raises(ValueError, match="direction 'lower'"):
        registry.register(dataclasses.replace(cost, name="bad", metrics={"x": "lower"}))
    # an evaluator from outside the package (a plug-in) is known once its module registers it
    plugin = registry.register(registry.Evaluator(
        name="host", version="host-1", metrics={"host_ms": "minimize"}, options=(), doc="host latency",
        run=lambda spec, config, seed, report, out_dir: {"host_ms": 1.0}))
    assert registry.producers("host_ms") == ["host"] and plugin.evaluate(PRESETS["tiny-debug"]) == {"host_ms": 1.0}


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def _library_calls(monkeypatch) -> dict:
    """Per evaluator: the library function its run calls (replaced by a spy that records its arguments), the
    library's own defaults, and which library argument each option becomes."""
    import evaluators.cost as cost
    import evaluators.decoder_quality as decoder_quality
    import evaluators.plugins.latency as latency_plugin
    import evaluators.quality as quality
    import latency_models.api as api

    calls: dict[str, dict] = {}
    seeds_defaults = {**_defaults(quality.evaluate_quality), **_defaults(quality.evaluate_quality_seeds)}
    decoder_defaults = _defaults(decoder_quality.evaluate_decoder_quality)
    predict_defaults = _defaults(api.predict)

    def spy(name, result):
        def record(*args, **kwargs):
            calls[name] = {"args": args, "kwargs": kwargs}
            return result
        return record

    monkeypatch.setattr(quality, "evaluate_quality_seeds", spy("flow", {"val_loss": 1.0, "status": "ok"}))
    monkeypatch.setattr(decoder_quality, "evaluate_decoder_quality", spy("decoder", {"psnr": 20.0,
                                                                                     "train_seconds": 1.0}))
    monkeypatch.setattr(cost, "stage_costs", spy("cost", {"params": 1e6, "gmacs": 1.0, "gmacs_no_attention": 1.0}))

    class Prediction:
        ms = low_ms = high_ms = 1.0
        profile_fit_id = "fit"
    monkeypatch.setattr(api, "predict", spy("latency", Prediction()))
    monkeypatch.setattr(latency_plugin, "latency_breakdown", lambda *a: {})
    return calls, {
        # option -> (the library's argument: by keyword name or position, its default)
        "flow": {"data": (1, seeds_defaults["data"]), "budget": (2, seeds_defaults["budget"]),
                 "seeds": (4, seeds_defaults["seeds"]), "n_samples": ("num_samples", seeds_defaults["num_samples"]),
                 "sample_steps": ("sample_steps", seeds_defaults["sample_steps"]),
                 "guidance": ("cfg_scale", seeds_defaults["cfg_scale"]),
                 "proxy": ("proxy_config", seeds_defaults["proxy_config"])},
        "decoder": {name: ({"data": 1, "budget": 2}.get(name, name), default)
                    for name, default in decoder_defaults.items()
                    if name in ("data", "budget", "encoder")},
        "cost": {"latent": (1, cost.DEFAULT_LATENT)},
        "latency": {"device": (2, None), "latent": ("latent", predict_defaults["latent"])},
    }


def test_the_declared_defaults_are_what_each_run_uses(monkeypatch):
    """Run every evaluator with its declared defaults against a spy of the library it calls: each option reaches
    the library as declared, and equals the library's own default (so `pocketdiff eval quality` and a study
    evaluate alike); the study's [target] defaults are the cheap evaluators' (studies/config.py)."""
    from studies.config import StudyConfig
    from training.budget import Budget

    calls, mapping = _library_calls(monkeypatch)
    target = {f.name: f.default for f in dataclasses.fields(StudyConfig)}
    for name, e in registry.evaluators().items():
        assert set(mapping[name]) == {o.name for o in e.options}, f"{name}: map every option to its library argument"
        spec = PRESETS["tiny-debug-decoder" if "unet" not in e.spec_kinds else "tiny-debug"]
        e.run(spec, e.check_config({}), 0, None, None)
        call = calls[name]
        for option, (argument, library_default) in mapping[name].items():
            declared = e.defaults()[option]
            passed = call["args"][argument] if isinstance(argument, int) else call["kwargs"][argument]
            assert passed == declared, (name, option)
            if option == "budget":
                library_default = Budget.parse(library_default)
            if option in ("latent", "device"):  # set by [target]: its defaults are the evaluators'
                assert declared == target[option], (name, option)
            if library_default is not None or option == "n_samples":
                assert declared == library_default, (name, option, library_default)


def test_the_flow_evaluator_tells_how_many_samples_it_scores_by_default():
    import evaluators.quality as quality
    n_samples = next(o for o in registry.get("flow").options if o.name == "n_samples")
    assert f"up to {quality.NUM_SAMPLES}" in n_samples.help  # None: the library's NUM_SAMPLES, capped
