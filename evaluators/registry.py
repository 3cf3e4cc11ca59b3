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

`cache_tag(name)` is what every cache of an evaluator's results keys on: the evaluator's version and a
fingerprint of the code that builds the model and its features (latency_models/fingerprint.py: the
search_space package, the op-trace walk and the export wrappers) plus the evaluator's own module. An edit to a
block changes the tag, so a cached result of the old code is never served: it is recomputed.
"""
from __future__ import annotations

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
    run: Callable[..., dict]  # (spec, config, seed, report) -> dict
    spec_kinds: tuple[str, ...] = ("unet", "decoder")
    cheap: bool = False  # known before training: runs on every candidate, before the constraints are checked
    code: tuple[str, ...] = ()  # modules (besides the builders and features) its results depend on
    doc: str = ""

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
        return self.run(spec, self.check_config(config or {}), seed, report)


REGISTRY: dict[str, Evaluator] = {}


def register(evaluator: Evaluator) -> Evaluator:
    for metric, direction in evaluator.metrics.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"{evaluator.name}: metric {metric} has direction {direction!r}")
    REGISTRY[evaluator.name] = evaluator
    return evaluator


def get(name: str) -> Evaluator:
    _load()
    if name not in REGISTRY:
        raise EvaluatorError(f"unknown evaluator {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def evaluators() -> dict[str, Evaluator]:
    _load()
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
    from latency_models.fingerprint import code_fingerprint as digest
    return digest(fingerprint_paths(name), ROOT)


def cache_tag(name: str) -> dict[str, str]:
    """What a cached result of evaluator `name` is keyed on besides its inputs: version and code fingerprint."""
    return {"evaluator": name, "version": get(name).version, "code": code_fingerprint(name)}


# --- the shipped evaluators --------------------------------------------------------------------------------

SHIPPED = ("evaluators.cost", "evaluators.latency", "evaluators.quality", "evaluators.decoder_quality")


def _load() -> None:
    """Import the shipped evaluator modules; each registers itself at import."""
    for module in SHIPPED:
        importlib.import_module(module)


__all__ = ["Evaluator", "EvaluatorError", "Option", "REGISTRY", "register", "get", "evaluators", "producers",
           "direction_of", "quality_metrics", "is_quality_metric", "check_study", "cache_tag", "code_fingerprint",
           "fingerprint_paths"]
