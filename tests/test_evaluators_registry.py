"""The evaluator registry (evaluators/registry.py): the contract every evaluator registers, the checks a study
file goes through, and cache keys that carry the evaluator's version and a fingerprint of the builder code."""
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
    flow = registry.get("flow")
    config = flow.check_config({"budget": "40steps", "guidance": 3})  # an int where a float is asked: fine
    assert config["budget"] == "40steps" and config["guidance"] == 3.0 and config["seeds"] == 1
    with pytest.raises(EvaluatorError, match="unknown option\\(s\\) encoder for evaluator 'flow'; known: budget"):
        flow.check_config({"encoder": "tiny-ae"})
    with pytest.raises(EvaluatorError, match="seeds = True must be a int"):
        flow.check_config({"seeds": True})
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
    registry.check_study("none", {}, [("objectives", "params_m"), ("constraints", "latency_ms")])
    registry.check_study("flow", {"budget": "10steps"}, [("objectives", "val_loss")])
    with pytest.raises(EvaluatorError, match="\\[objectives\\] no evaluator produces 'host_ms'"):
        registry.check_study("none", {}, [("objectives", "host_ms")])
    with pytest.raises(EvaluatorError, match="psnr is produced by evaluator decoder"):
        registry.check_study("flow", {}, [("objectives", "psnr")])


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
registry.check_study("flow", {"budget": "40steps", "proxy": {"width_mult": 0.5}}, [("objectives", "val_loss")])
names = sorted(registry.evaluators())
print("NAMES=" + ",".join(names), "TORCH=" + str("torch" in sys.modules))
"""


def test_the_static_declarations_answer_every_check_without_importing_an_evaluator():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PROBE_NO_TORCH], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert "NAMES=cost,decoder,flow,latency TORCH=False" in out.stdout, out.stdout + out.stderr


def test_each_module_provides_the_run_of_its_static_declaration():
    """The static declaration is each shipped evaluator's one declaration: importing its module hands the registry
    the run function and nothing else; the module's own defaults agree with the options declared for it."""
    import importlib

    for name in registry.SHIPPED:
        static = registry.get(name)
        module = importlib.import_module(static.module)
        assert registry.runner(name).__module__ == module.__name__
        assert registry.get(name) is static  # the static declaration stays the registry's entry
    quality = importlib.import_module("evaluators.quality")
    n_samples = next(o for o in registry.get("flow").options if o.name == "n_samples")
    assert f"up to {quality.NUM_SAMPLES}" in n_samples.help  # the declared default is the one the module uses
    with pytest.raises(ValueError, match="no static declaration"):
        registry.provide("host", lambda *a: {})


def test_a_module_declaration_that_disagrees_with_the_static_one_is_refused(monkeypatch):
    import dataclasses

    static = registry.get("cost")
    monkeypatch.setattr(registry, "_RUNS", dict(registry._RUNS))
    changed = dataclasses.replace(static.declaration(), version="cost-999",
                                  metrics={**static.metrics, "gmacs": "maximize"}, run=lambda *a: {})
    with pytest.raises(ValueError, match="'cost'.* differs from the static one .* in version, metrics"):
        registry.register(changed)
    assert registry.get("cost") is static and registry._RUNS.get("cost") is not changed.run
    # an evaluator without a static declaration (a plug-in) is known once its module registers it
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    plugin = registry.register(registry.Evaluator(name="host", version="host-1", metrics={"host_ms": "minimize"},
                                                  options=(), run=lambda spec, config, seed, report: {"host_ms": 1.0}))
    assert registry.producers("host_ms") == ["host"] and plugin.evaluate(PRESETS["tiny-debug"]) == {"host_ms": 1.0}
