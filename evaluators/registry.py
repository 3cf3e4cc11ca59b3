"""The evaluator registry: one contract for every evaluator a study can run (once-for-all's `get_efficiency`).

An evaluator declares itself once, in its own module (the shipped ones: evaluators/plugins/), with
`register(Evaluator(...))`:
- a `name` (what a study file's `[quality] evaluator = ...` names; the cheap ones always run),
- a `version` (bumped when a change makes old results incomparable),
- the `metrics` it produces, each with its direction ("minimize" | "maximize"), and the `references` its
  records carry beside them: numbers of the data, not the design (the flow evaluator's regime baselines), never
  an objective, kept with the metrics wherever a result is reused,
- its typed `options`, each with its one default (an unknown option is refused with the list of known ones; a
  wrong value is one line naming the key),
- the spec kinds it scores, and
- one call, `run(spec, config, seed, report, out_dir) -> dict`: `config` the checked options (every option, its
  default where not given), `report` an optional callback `(fraction of the budget, {"step": ...,
  "val_loss": ...})` for long runs, `out_dir` the folder for artifacts (None: write none). The result maps
  metric names to floats; `_user_attrs` (a dict) carries what the trial stores beside the metrics (proxy
  mapping, per-stage breakdowns, artifact paths) and `_evaluator_seconds` the time spent in training and
  scoring.

An evaluator's module imports only plain Python at its top; torch, the trainer and the predictors are
imported inside `run`. Importing the `evaluators` package registers the shipped evaluators (its __init__), so
every check of a study file runs against the registry without importing torch.

`cache_tag(name)` is what every cache of an evaluator's results keys on: the evaluator's version and a
fingerprint of the code that builds the model and its features (latency_models/fingerprint.py: the
search_space package with the op trace, the latency feature code and the export wrappers) plus the evaluator's own module and the
modules it names in `code`. An edit to a block changes the tag, so a cached result of the old code is never
served: it is recomputed (docs/architecture.md, the evaluator contract).
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search_space.errors import UserError
from search_space.limits import out_of_range, show

DIRECTIONS = ("minimize", "maximize")
Report = Callable[[float, dict], None]


class EvaluatorError(UserError):
    """An unknown evaluator, option or metric; the message names it and the known ones."""


@dataclass(frozen=True)
class Option:
    """One option of an evaluator: its name, its type, its one default and what it means.

    `parse(name, value)`, where given, turns a study file's value into the typed one (a budget string into a
    `Budget`, a proxy table into a `ProxyConfig`) and accepts a value that is typed already; it raises
    ValueError with a message that names the key. Without it a value must be of `type` (an int is accepted
    for a float)."""
    name: str
    type: type
    default: Any
    help: str = ""
    parse: Callable[[str, Any], Any] | None = None

    def check(self, value: Any, where: str) -> Any:
        if self.parse is not None:
            try:
                return self.parse(self.name, value)
            except ValueError as e:
                raise EvaluatorError(f"{where} {e}") from None
        ok = isinstance(value, self.type) and not (isinstance(value, bool) and self.type is not bool)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            raise EvaluatorError(f"{where} {self.name} = {value!r} must be a {self.type.__name__} ({self.help})")
        return value


def number_in(low: float, high: float, whole: bool = True, note: str = "") -> Callable[[str, Any], Any]:
    """An Option `parse` for a number within its stated range (search_space/limits.py): a whole one if `whole`,
    else a finite one (an int is accepted for a float); never a bool, NaN or infinity."""
    def parse(name: str, value: Any) -> Any:
        problem = out_of_range(value, low, high, whole=whole)
        if problem:
            raise ValueError(f"{name} = {show(value)} {problem}{note}")
        return value if whole else float(value)
    return parse


@dataclass(frozen=True)
class Evaluator:
    name: str
    version: str
    metrics: dict[str, str]  # metric -> direction
    options: tuple[Option, ...]
    run: Callable[..., dict]  # (spec, config, seed, report, out_dir) -> dict
    spec_kinds: tuple[str, ...] = ("unet", "decoder")
    cheap: bool = False  # known before training: runs on every candidate, before the constraints are checked
    references: tuple[str, ...] = ()  # numbers of the data, not the design, its records carry (no direction)
    code: tuple[str, ...] = ()  # modules (besides its own, the builders and features) its results depend on
    doc: str = ""

    def option_names(self) -> list[str]:
        return sorted(o.name for o in self.options)

    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def check_config(self, config: dict[str, Any], where: str = "") -> dict[str, Any]:
        """The options with their defaults filled in; an unknown option or a wrong value is an EvaluatorError."""
        where = where or f"evaluator {self.name!r}:"
        known = {o.name: o for o in self.options}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise EvaluatorError(f"{where} unknown option(s) {', '.join(unknown)} for evaluator {self.name!r}; "
                                 f"known: {', '.join(self.option_names()) or 'none'}")
        return {n: (o.check(config[n], where) if n in config and config[n] is not None else o.default)
                for n, o in known.items()}

    def evaluate(self, spec, config: dict[str, Any] | None = None, seed: int = 0,
                 report: Report | None = None, out_dir: str | Path | None = None) -> dict[str, Any]:
        if spec.kind not in self.spec_kinds:
            raise EvaluatorError(f"evaluator {self.name!r} scores {' and '.join(self.spec_kinds)} specs; "
                                 f"{spec.kind} spec {spec.spec_id} is not one")
        return self.run(spec, self.check_config(config or {}), seed, report, out_dir)


REGISTRY: dict[str, Evaluator] = {}  # name -> the evaluator, registered by its module at import


def register(evaluator: Evaluator) -> Evaluator:
    """Called by an evaluator's module at import with its one declaration and its `run`. A second, different
    evaluator under a taken name is refused (ValueError naming both modules)."""
    for metric, direction in evaluator.metrics.items():
        if direction not in DIRECTIONS:
            raise ValueError(f"{evaluator.name}: metric {metric} has direction {direction!r}")
    names = [o.name for o in evaluator.options]
    if len(set(names)) != len(names):
        raise ValueError(f"{evaluator.name}: an option is declared twice in {names}")
    taken = REGISTRY.get(evaluator.name)
    if taken is not None and taken != evaluator:
        raise ValueError(f"evaluator {evaluator.name!r} is registered by {taken.run.__module__} already; "
                         f"{evaluator.run.__module__} cannot register another under that name")
    REGISTRY[evaluator.name] = evaluator
    return evaluator


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


def references() -> tuple[str, ...]:
    """Every evaluator's reference numbers: recorded with the metrics, never ranked or optimised."""
    return tuple(sorted({r for e in evaluators().values() for r in e.references}))


def quality_metrics() -> tuple[str, ...]:
    """Metrics only a training run produces (not known before a candidate is trained)."""
    return tuple(sorted({m for e in evaluators().values() if not e.cheap for m in e.metrics}))


def is_quality_metric(metric: str) -> bool:
    return metric.removesuffix("_ci_low").removesuffix("_ci_high") in quality_metrics()


def check_metrics(quality_evaluator: str, metrics: list[tuple[str, str]]) -> None:
    """Every (section, metric) a study names is produced by an evaluator it runs: the cheap ones, and its
    quality evaluator unless that is "none". Raises EvaluatorError with one line naming the key, and the
    evaluators that would produce a metric."""
    running = [e.name for e in cheap_evaluators()] + ([quality_evaluator] if quality_evaluator != "none" else [])
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
    """The files an evaluator's cache tag hashes: the builders and feature code, then its own module and the
    modules it names in `code`."""
    from latency_models.fingerprint import fingerprint_paths as builder_paths
    evaluator = get(name)
    own = [Path(sys.modules[evaluator.run.__module__].__file__).resolve()]
    own += [ROOT / (m.replace(".", "/") + ".py") for m in evaluator.code]
    return builder_paths(ROOT) + own


@functools.lru_cache(maxsize=None)
def code_fingerprint(name: str) -> str:
    from search_space.fingerprint import code_fingerprint as digest
    return digest(fingerprint_paths(name), ROOT)


def cache_tag(name: str) -> dict[str, str]:
    """What a cached result of evaluator `name` is keyed on besides its inputs: version and code fingerprint."""
    return {"evaluator": name, "version": get(name).version, "code": code_fingerprint(name)}


__all__ = ["Evaluator", "EvaluatorError", "Option", "REGISTRY", "register", "number_in", "get", "evaluators",
           "cheap_evaluators", "producers", "direction_of", "all_metrics", "references", "quality_metrics",
           "is_quality_metric", "check_metrics", "budget_callback", "cache_tag", "code_fingerprint", "fingerprint_paths"]
