"""The evaluator registry: one contract for every evaluator a study can run (once-for-all's `get_efficiency`).

Each evaluator registers
- a `name` (what a study file's `[quality] evaluator = ...` names; the cheap ones always run),
- a `version` (bumped when a change makes old results incomparable),
- the `metrics` it produces, each with its direction ("minimize" | "maximize"),
- its typed `options` (an unknown option is refused with the list of known ones; a wrong type names the key),
- the spec kinds it scores, and
- one call, `evaluate(spec, config, seed, report) -> dict`: `config` the checked options, `report` an optional
  callback `(fraction of the budget, {"step": ..., "val_loss": ...})` for long runs. The result maps metric
  names to floats; `_user_attrs` (a dict) carries what the trial stores beside the metrics (proxy mapping,
  per-stage breakdowns, artifact paths) and `_evaluator_seconds` the time spent in training and scoring.

The shipped evaluators are declared statically at the bottom of this file (name, version, metrics with
directions, typed options, the module that runs them), so loading a study file checks it against the registry
without importing torch; an evaluator's module is imported only when it evaluates. Each module still
registers its own declaration with its `run` function (beside the code, where a change of version or metric is
made), and `register` refuses one that disagrees with the static declaration, naming the field.

`cache_tag(name)` is what every cache of an evaluator's results keys on: the evaluator's version and a
fingerprint of the code that builds the model and its features (latency_models/fingerprint.py: the
search_space package, the op-trace walk and the export wrappers) plus the evaluator's own module. An edit to a
block changes the tag, so a cached result of the old code is never served: it is recomputed.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search_space.errors import UserError

DIRECTIONS = ("minimize", "maximize")
Report = Callable[[float, dict], None]


class EvaluatorError(UserError):
    """An unknown evaluator, option or metric; the message names it and the known ones."""


@dataclass(frozen=True)
class Option:
    name: str
    type: type  # int, float, str, bool or dict
    default: Any
    help: str = ""

    def check(self, value: Any, where: str) -> Any:
        ok = isinstance(value, self.type) and not (isinstance(value, bool) and self.type is not bool)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise EvaluatorError(f"{where} {self.name} = {value!r} must be a {self.type.__name__} ({self.help})")
        return value


@dataclass(frozen=True)
class Evaluator:
    name: str
    version: str
    metrics: dict[str, str]  # metric -> direction
    options: tuple[Option, ...]
    run: Callable[..., dict] | None = None  # (spec, config, seed, report) -> dict; None: in `module`
    spec_kinds: tuple[str, ...] = ("unet", "decoder")
    cheap: bool = False  # known before training: runs on every candidate, before the constraints are checked
    code: tuple[str, ...] = ()  # modules (besides the builders and features) its results depend on
    doc: str = ""
    module: str = ""  # where a statically declared evaluator's `run` registers itself (imported on first use)

    def option_names(self) -> list[str]:
        return sorted(o.name for o in self.options)

    def check_config(self, config: dict[str, Any], where: str = "") -> dict[str, Any]:
        """The options with their defaults filled in; an unknown option or a wrong type is an EvaluatorError."""
        where = where or f"evaluator {self.name!r}:"
        known = {o.name: o for o in self.options}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise EvaluatorError(f"{where} unknown option(s) {', '.join(unknown)} for evaluator {self.name!r}; "
                                 f"known: {', '.join(self.option_names()) or 'none'}")
        return {n: (o.check(config[n], where) if n in config and config[n] is not None else o.default)
                for n, o in known.items()}

    def evaluate(self, spec, config: dict[str, Any] | None = None, seed: int = 0,
                 report: Report | None = None) -> dict[str, Any]:
        if spec.kind not in self.spec_kinds:
            raise EvaluatorError(f"evaluator {self.name!r} scores {' and '.join(self.spec_kinds)} specs; "
                                 f"{spec.kind} spec {spec.spec_id} is not one")
        return runner(self.name)(spec, self.check_config(config or {}), seed, report)

    def declaration(self) -> "Evaluator":
        """What the registry knows without importing the evaluator's module: everything but `run`."""
        return dataclasses.replace(self, run=None, module="")


REGISTRY: dict[str, Evaluator] = {}  # name -> declaration (static, or registered by a module at import)
_RUNS: dict[str, Callable[..., dict]] = {}  # name -> run, once its module registered it


def _check_directions(evaluator: Evaluator) -> None:
    for metric, direction in evaluator.metrics.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"{evaluator.name}: metric {metric} has direction {direction!r}")


def declare(evaluator: Evaluator) -> Evaluator:
    """A static declaration: known to every check at once, its `module` imported when it first evaluates."""
    _check_directions(evaluator)
    if not evaluator.module:
        raise ValueError(f"{evaluator.name}: a static declaration names the module that registers its run")
    REGISTRY[evaluator.name] = evaluator
    return evaluator


def register(evaluator: Evaluator) -> Evaluator:
    """Called by an evaluator's module at import with its own full declaration and `run`. A statically
    declared evaluator must agree field by field (else ValueError naming the fields: edit both places); an
    evaluator without a static declaration (a plug-in) is known from its import on."""
    _check_directions(evaluator)
    if evaluator.run is None:
        raise ValueError(f"{evaluator.name}: a module registers its evaluator with its run function")
    static = REGISTRY.get(evaluator.name)
    if static is not None and static.module:
        mine = evaluator.declaration()
        differ = [f.name for f in dataclasses.fields(Evaluator)
                  if getattr(mine, f.name) != getattr(static.declaration(), f.name)]
        if differ:
            raise ValueError(f"evaluator {evaluator.name!r}: the module's declaration differs from the static one "
                             f"in evaluators/registry.py in {', '.join(differ)}; make them agree")
    else:
        REGISTRY[evaluator.name] = evaluator
    _RUNS[evaluator.name] = evaluator.run
    return REGISTRY[evaluator.name]


def provide(name: str, run: Callable[..., dict]) -> Evaluator:
    """Called by a shipped evaluator's module at import: its run function for the static declaration above, which
    is the evaluator's one declaration (its version included: bump it there when the evaluator's results change)."""
    if name not in REGISTRY or not REGISTRY[name].module:
        raise ValueError(f"evaluator {name!r} has no static declaration in evaluators/registry.py; a plug-in calls "
                         f"register() with its full declaration")
    _RUNS[name] = run
    return REGISTRY[name]


def runner(name: str) -> Callable[..., dict]:
    """The `run` function of evaluator `name`, importing its module the first time."""
    if name not in _RUNS:
        module = get(name).module
        if module:
            importlib.import_module(module)  # registers its run
        if name not in _RUNS:
            raise EvaluatorError(f"evaluator {name!r} has no run function (its module {module or '?'} did not "
                                 f"register one)")
    return _RUNS[name]


def get(name: str) -> Evaluator:
    if name not in REGISTRY:
        raise EvaluatorError(f"unknown evaluator {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def evaluators() -> dict[str, Evaluator]:
    return dict(REGISTRY)


def cheap_evaluators() -> list[Evaluator]:
    return [e for e in evaluators().values() if e.cheap]


def producers(metric: str) -> list[str]:
    """Names of the evaluators that produce `metric`."""
    return [e.name for e in evaluators().values() if metric in e.metrics]


def direction_of(metric: str) -> str:
    """The direction of a metric, from the evaluators that produce it (its seed-interval bounds follow it)."""
    base = metric.removesuffix("_ci_low").removesuffix("_ci_high")
    for e in evaluators().values():
        if base in e.metrics:
            return e.metrics[base]
    raise EvaluatorError(f"no evaluator produces {metric!r}; known metrics: {', '.join(all_metrics())}")


def all_metrics() -> list[str]:
    return sorted({m for e in evaluators().values() for m in e.metrics})


def quality_metrics() -> tuple[str, ...]:
    """Metrics only a training run produces (not known before a candidate is trained)."""
    return tuple(sorted({m for e in evaluators().values() if not e.cheap for m in e.metrics}))


def is_quality_metric(metric: str) -> bool:
    return metric.removesuffix("_ci_low").removesuffix("_ci_high") in quality_metrics()


def check_study(quality_evaluator: str, options: dict[str, Any], metrics: list[tuple[str, str]]) -> None:
    """A study's evaluator setup against the registry: the quality evaluator exists ("none": no training), its
    options are known and typed, and every (section, metric) the study names is produced by an evaluator it
    runs. Raises EvaluatorError with one line naming the key, and the evaluators that would produce a metric."""
    running = [e.name for e in cheap_evaluators()]
    if quality_evaluator != "none":
        get(quality_evaluator).check_config({k: v for k, v in options.items() if k != "evaluator"}, "[quality]")
        running.append(quality_evaluator)
    for section, metric in metrics:
        if any(metric in evaluators()[n].metrics for n in running):
            continue
        would = producers(metric)
        if not would:
            raise EvaluatorError(f"[{section}] no evaluator produces {metric!r}; known metrics: "
                                 f"{', '.join(all_metrics())}")
        raise EvaluatorError(f"[{section}] {metric} is produced by evaluator {' or '.join(would)}, which this study "
                             f"does not run (it runs {', '.join(running)}); set [quality] evaluator = "
                             f"\"{would[0]}\" or drop {metric}")


def budget_callback(budget, report: Report | None) -> Callable[[dict], bool]:
    """A trainer step callback that passes (share of `budget` used, values) on to an evaluator's `report`."""
    def callback(values: dict) -> bool:
        if report is not None:
            fraction = values["fraction"] if "fraction" in values else budget.fraction(values["step"],
                                                                                    values["seconds"])
            report(fraction, values)
        return False  # never asks the trainer to stop: a report that wants to stop raises
    return callback


# --- cache keys ------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def fingerprint_paths(name: str) -> list[Path]:
    """The files an evaluator's cache tag hashes: the builders and feature code, then its own modules."""
    from latency_models.fingerprint import fingerprint_paths as builder_paths
    own = [ROOT / (m.replace(".", "/") + ".py") for m in get(name).code]
    return builder_paths(ROOT) + own


@functools.lru_cache(maxsize=None)
def code_fingerprint(name: str) -> str:
    from search_space.fingerprint import code_fingerprint as digest
    return digest(fingerprint_paths(name), ROOT)


def cache_tag(name: str) -> dict[str, str]:
    """What a cached result of evaluator `name` is keyed on besides its inputs: version and code fingerprint."""
    return {"evaluator": name, "version": get(name).version, "code": code_fingerprint(name)}


# --- the shipped evaluators --------------------------------------------------------------------------------
# Static declarations: each must equal the one its module registers (register() checks it when the module is
# imported; tests/test_evaluators_registry.py imports every one). Defaults are the modules' constants, written
# out here so that no check of a study file imports torch.

declare(Evaluator(
    name="cost", version="cost-1", cheap=True, code=("evaluators.cost",), module="evaluators.cost",
    metrics={"params_m": "minimize", "gmacs": "minimize", "gmacs_no_attention": "minimize"},
    options=(Option("latent", int, 128, "full-size latent side the model is counted at"),),
    doc="params and MACs of the full-size model on the meta device, per stage and per op kind"))

declare(Evaluator(
    name="latency", version="latency-1", cheap=True, code=("evaluators.latency",), module="evaluators.latency",
    metrics={"latency_ms": "minimize", "latency_low_ms": "minimize", "latency_high_ms": "minimize"},
    options=(Option("latent", int, 128, "full-size latent side the latency is predicted at"),
             Option("device", str, "a17pro", "latency profile, e.g. a17pro (latency_models/profiles/)")),
    doc="predicted Neural Engine latency of the full-size model, with its band and per-stage split"))

declare(Evaluator(
    name="flow", version="quality-3", spec_kinds=("unet",), code=("evaluators.quality",),
    module="evaluators.quality",
    metrics={"val_loss": "minimize", "fd_domain": "minimize", "kid_domain": "minimize",
             "precision_domain": "maximize", "recall_domain": "maximize", "fid": "minimize", "kid": "minimize",
             "precision": "maximize", "recall": "maximize"},
    options=(Option("data", str, "mnist5k", "training data, e.g. mnist5k"),
             Option("budget", str, "500steps", "training budget, e.g. 500steps or 60s"),
             Option("seeds", int, 1, "seeds per candidate; 3 gives a 95% interval"),
             Option("n_samples", int, None, "generated images per seed (default: up to 192, evaluators/quality.py NUM_SAMPLES)"),
             Option("sample_steps", int, 8, "Euler steps when sampling"),
             Option("guidance", float, 2.0, "classifier-free guidance scale"),
             Option("proxy", dict, {}, "proxy mapping, e.g. { width_mult = 0.125 }"),
             Option("out_dir", str, None, "artifact folder (set by the study runner)")),
    doc="proxy flow-matching run, scored by validation loss and domain FD (Inception FID when available)"))

declare(Evaluator(
    name="decoder", version="decoder-quality-1", spec_kinds=("decoder",), code=("evaluators.decoder_quality",),
    module="evaluators.decoder_quality",
    metrics={"psnr": "maximize", "val_loss": "minimize", "lpips": "minimize", "baseline_psnr": "maximize"},
    options=(Option("data", str, "sample-images", "images the decoder reconstructs, e.g. sample-images"),
             Option("budget", str, "60s", "training budget, e.g. 30s or 400steps"),
             Option("encoder", str, "tiny-ae", "frozen encoder: tiny-ae or vae:/path/to/vae"),
             Option("out_dir", str, None, "artifact folder (set by the study runner)")),
    doc="short decoder training with a frozen encoder, scored by held-out reconstruction PSNR"))

SHIPPED = tuple(REGISTRY)  # the statically declared evaluators, by name


__all__ = ["Evaluator", "EvaluatorError", "Option", "REGISTRY", "declare", "register", "provide", "runner", "get", "evaluators",
           "producers",
           "direction_of", "quality_metrics", "is_quality_metric", "check_study", "cache_tag", "code_fingerprint",
           "fingerprint_paths"]
