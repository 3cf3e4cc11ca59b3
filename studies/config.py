"""Study files (TOML), parsed once, at load, into a typed `StudyConfig`; every error names the key and the fix.

Sections:
    [study]       name, storage, sampler (tpe | nsga2 | gp | random | grid), seed, n_trials, timeout,
                  heartbeat_interval, grace_period, max_retry
    [target]      latent (full-size latent the cheap objectives are measured at), device (latency profile)
    [space]       base preset + knobs (search_space/sampling.py)
    [quality]     evaluator (flow | decoder | none) and that evaluator's options (data, budget, seeds, ...: its
                  declaration in evaluators/plugins/ lists them, typed, with their defaults); early_stop options;
                  rungs = ["200steps", "800steps"] and reduction = 3: successive halving, the rungs set each
                  trial's budget (a `budget` beside them is not used, and `study run` says so)
                  (studies/halving.py); rung_seeds = [1, 3]: seeds per rung (default: `seeds` at every rung)
    [objectives]  metric = "minimize" | "maximize", in order
    [constraints] max_latency_ms, max_params_m (hard: a candidate over them is never trained)
    [enqueue]     presets = [...] evaluated first
[quality] becomes a `QualityConfig`: budgets are `training.budget.Budget` values and every option has the type
and the one default its evaluator declares; nothing downstream parses a study value again (docs/studies.md).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators import registry
from search_space.sampling import SearchSpace, parse_space
from search_space.errors import MAX_SEED, SpecError
from search_space.limits import MAX_LATENT, out_of_range, read_toml, show
from training.budget import Budget
from training.config import MAX_SEEDS

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
# The quality evaluators a study file may name (the registry's, in registration order), or none.
QUALITY_EVALUATORS = tuple(e.name for e in registry.evaluators().values() if not e.cheap) + ("none",)
# Metrics only a quality evaluator produces (the registry's answer; evaluators/registry.py).
QUALITY_METRICS = registry.quality_metrics()
# [quality] keys of the study itself; every other key is an option of its evaluator.
STUDY_QUALITY_KEYS = ("evaluator", "rungs", "reduction", "rung_seeds", "promotion", "early_stop")
PROMOTIONS = ("asynchronous", "synchronous")
DEFAULT_STORAGE_DIR = "runs"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class StudyFileError(SpecError):
    """A study file is invalid; the message names the key."""


@dataclass(frozen=True)
class EarlyStop:
    """Stop a quality run whose validation loss is worse than the `quantile` of finished trials at that step."""
    enabled: bool = True
    warmup_fraction: float = 0.3
    min_trials: int = 4
    quantile: float = 0.75


@dataclass(frozen=True)
class Rungs:
    """Successive halving ([quality] rungs): the budgets, lowest first, each larger than the one before; the best
    1/`reduction` of each rung is promoted to the next (studies/halving.py)."""
    budgets: tuple[Budget, ...]
    reduction: int = 3
    seeds: tuple[int, ...] = ()  # seeds per rung; () = [quality] seeds at every rung
    # "asynchronous" (ASHA: a rung promotes whenever it holds `reduction` more finished candidates) or
    # "synchronous" (a rung promotes once, when it is closed: every candidate it will ever hold has finished)
    promotion: str = "asynchronous"
    candidates: int = 0  # the study's n_trials: how many candidates the first rung will hold

    @property
    def top(self) -> int:
        return len(self.budgets) - 1

    def min_candidates(self) -> int:
        """Candidates rung 0 needs so that at least one reaches the top rung."""
        return self.reduction ** self.top

    def label(self, rung: int) -> str:
        """The rung's budget as stored on its trials and printed beside them, e.g. "48steps"."""
        return str(self.budgets[rung])


@dataclass(frozen=True)
class QualityConfig:
    """[quality], typed: the evaluator and its options (parsed and checked by its declaration, defaults filled
    in), the rung schedule and the early-stop rule. Without an evaluator ("none") nothing is trained."""
    evaluator: str = "none"
    data: str | None = None
    budget: Budget | None = None  # the one budget of a study without rungs
    seeds: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # the evaluator's other options (n_samples, proxy, ...)
    rungs: Rungs | None = None
    early_stop: EarlyStop = EarlyStop()
    # The table as written (evaluator filled in): what a stored study's definition holds, so that studies
    # stored before keep matching their file.
    written: dict[str, Any] = field(default_factory=dict)

    def budget_at(self, rung: int) -> Budget | None:
        """The training budget of a rung (the one budget of a study without rungs)."""
        return self.rungs.budgets[rung] if self.rungs else self.budget

    def at_rung(self, rung: int) -> "QualityConfig":
        """This config with the rung's budget and seeds: what a trial at that rung evaluates with."""
        seeds = self.rungs.seeds[rung] if self.rungs and self.rungs.seeds else self.seeds
        return dataclasses.replace(self, budget=self.budget_at(rung), seeds=seeds)

    def evaluator_config(self) -> dict[str, Any]:
        """The options the evaluator's run gets (every one it declares)."""
        named = {"data": self.data, "budget": self.budget, "seeds": self.seeds, **self.options}
        return {k: named[k] for k in registry.get(self.evaluator).option_names()}


@dataclass(frozen=True)
class StudyConfig:
    name: str
    path: str
    space: SearchSpace
    storage: str
    sampler: str = "tpe"
    seed: int = 0
    n_trials: int | None = None
    timeout: float | None = None
    heartbeat_interval: int = 30
    grace_period: int = 90
    max_retry: int = 1
    # Worker processes `study run` starts on this host, one torch thread each (docs/studies.md): the CPU proxies
    # are too narrow for a second thread to speed a step, so two processes on two cores train twice as much.
    jobs: int = 1
    # [target]: the cheap evaluators' own defaults (tests/evaluators/test_registry.py holds them equal); the paper
    # measures latency and FLOPs at a 128x128 latent, 1024 px (docs/paper.md section 1)
    latent: int = 128
    device: str = "a17pro"
    quality: QualityConfig = QualityConfig()
    objectives: tuple[tuple[str, str], ...] = (("latency_ms", "minimize"),)
    constraints: dict[str, float] = field(default_factory=dict)
    enqueue: tuple[str, ...] = ()

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def quality_evaluator(self) -> str:
        """The quality evaluator's name ("none": no training); the same as `quality.evaluator`."""
        return self.quality.evaluator

    def at_rung(self, rung: int) -> "StudyConfig":
        """The study as a trial at `rung` evaluates it: [quality] with the rung's budget and seeds."""
        return dataclasses.replace(self, quality=self.quality.at_rung(rung))

    def fingerprint(self) -> dict:
        """What must match when a study of this name already exists in the storage: built from the file as
        written, as every stored study's definition was."""
        written = self.quality.written
        out = {"space": self.space.to_jsonable(), "objectives": [list(o) for o in self.objectives],
               "quality": {k: v for k, v in sorted(written.items()) if k == "evaluator" or k not in STUDY_QUALITY_KEYS},
               "latent": self.latent, "device": self.device}
        rungs = self.quality.rungs
        if rungs:  # only then, so single-budget studies stored before rungs existed still match
            out["rungs"] = {"budgets": list(written["rungs"]), "reduction": rungs.reduction}
            if rungs.seeds:
                out["rungs"]["seeds"] = list(rungs.seeds)
            if rungs.promotion != "asynchronous":  # only then, so studies stored before it still match
                out["rungs"]["promotion"] = rungs.promotion
        return out


_KNOWN = {
    "study": {"name", "storage", "sampler", "seed", "n_trials", "timeout", "heartbeat_interval", "grace_period",
              "max_retry", "jobs"},
    "target": {"latent", "device"},
    "constraints": {"max_latency_ms", "max_params_m"},
    "enqueue": {"presets"},
}
_TABLES = set(_KNOWN) | {"space", "quality", "objectives"}


def _err(path: str, msg: str) -> StudyFileError:
    return StudyFileError(f"{path}: {msg}")


MAX_JOBS = 256
# Upper limits of [study] numbers (the seed's is MAX_SEED, the samplers'): far above any use, inside what Optuna
# and the clock take (a heartbeat of 10**30 seconds overflows datetime).
STUDY_INT_LIMITS = {"n_trials": 10_000_000, "heartbeat_interval": 86_400, "grace_period": 7 * 86_400,
                    "max_retry": 100}
MAX_TIMEOUT = 365 * 86_400.0
MAX_CONSTRAINT = 1e12  # a latency in ms or params in millions past this constrains nothing


def check_jobs(value: Any, where: str) -> int:
    """A worker-process count: a whole number from 1 to MAX_JOBS."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_JOBS:
        raise StudyFileError(f"{where} = {value!r} must be a whole number of worker processes from 1 to {MAX_JOBS}")
    return value


def load_study_file(path: str | Path, storage: str | None = None) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise StudyFileError(f"study file {path} does not exist (shipped ones: studies/*.toml)")
    return parse_study(read_toml(path, "study file", StudyFileError), str(path), storage)


def parse_study(data: dict[str, Any], path: str = "<study>", storage: str | None = None) -> StudyConfig:
    unknown = set(data) - _TABLES
    if unknown:
        raise _err(path, f"unknown section(s) [{'], ['.join(sorted(unknown))}]; known: {', '.join(sorted(_TABLES))}")
    for section, keys in _KNOWN.items():
        bad = set(data.get(section, {})) - keys
        if bad:
            raise _err(path, f"[{section}] unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(keys))}")
    for section in _TABLES:
        if section in data and not isinstance(data[section], dict):
            raise _err(path, f"[{section}] must be a table, not {type(data[section]).__name__}")
    st = data.get("study", {})
    name = st.get("name")
    if not isinstance(name, str) or not name:
        raise _err(path, "[study] name must be a non-empty string")
    if not NAME_RE.fullmatch(name):
        raise _err(path, f"[study] name = {name!r} must be a simple name (letters, digits, '.', '_', '-'; no '/' "
                         f"or '..'): it names the study's folder under runs/")
    timeout = st.get("timeout")
    if timeout is not None and out_of_range(timeout, 0, MAX_TIMEOUT, low_open=True):
        raise _err(path, f"[study] timeout = {show(timeout)} must be a number of seconds > 0 and at most "
                         f"{MAX_TIMEOUT:g} (a year), e.g. timeout = 600")
    sampler = st.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _err(path, f"[study] sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
    if "space" not in data:
        raise _err(path, "[space] is missing: give at least base = \"<preset>\"")
    try:
        space = parse_space(data["space"])
    except SpecError as e:
        raise StudyFileError(f"{path}: {e}") from None
    if sampler == "grid" and space.grid() is None:
        raise _err(path, "[study] sampler='grid' needs every knob in [space] to be a list of choices")
    objectives = tuple((k, v) for k, v in data.get("objectives", {"latency_ms": "minimize"}).items())
    if not objectives:
        raise _err(path, "[objectives] is empty: name at least one metric")
    for metric, direction in objectives:
        if direction not in ("minimize", "maximize"):
            raise _err(path, f"[objectives] {metric} = {direction!r}: use \"minimize\" or \"maximize\"")
    from search_space import PRESETS
    base_kind = PRESETS[space.base].kind
    quality = parse_quality(path, data.get("quality", {}), base_kind, st.get("n_trials"))
    try:  # every metric named is produced by an evaluator the study runs
        registry.check_metrics(quality.evaluator, [("objectives", m) for m, _ in objectives]
                               + [("constraints", c.removeprefix("max_")) for c in data.get("constraints", {})])
    except registry.EvaluatorError as e:
        raise _err(path, str(e)) from None
    constraints = dict(data.get("constraints", {}))
    for k, v in constraints.items():
        problem = out_of_range(v, 0, MAX_CONSTRAINT, low_open=True)
        if problem:  # NaN or inf would compare false against every candidate: never or always feasible
            raise _err(path, f"[constraints] {k} = {show(v)} must be a positive number "
                             f"({problem.removeprefix('must be ')})")
    target = data.get("target", {})
    latent = target.get("latent")
    if "latent" in target:
        problem = out_of_range(latent, 1, MAX_LATENT, whole=True)
        if problem:
            raise _err(path, f"[target] latent = {show(latent)} {problem} (the full-size latent side the cheap "
                             f"objectives are measured at; 128 = 1024 px)")
    device = target.get("device")
    if "device" in target:
        try:
            from latency_models.devices import resolve_device
            if not isinstance(device, str):
                raise SpecError(f"must be a device name string like \"a17pro\", not {device!r}")
            resolve_device(device)
        except Exception as e:  # UnknownDevice lists the devices with a profile
            raise _err(path, f"[target] device = {device!r}: {str(e).splitlines()[0]}") from None
    presets = data.get("enqueue", {}).get("presets", [])
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        raise _err(path, f"[enqueue] presets = {presets!r} must be a list of preset names")
    presets = tuple(presets)
    for p in presets:
        if p not in PRESETS:
            raise _err(path, f"[enqueue] presets: unknown preset {p!r}")
        if PRESETS[p].kind != base_kind:
            raise _err(path, f"[enqueue] presets: {p!r} is a {PRESETS[p].kind} preset; this study searches "
                             f"{base_kind}s (base = {space.base!r})")
        choices = space.preset_choices
        if choices and p not in choices:
            raise _err(path, f"[enqueue] presets: {p!r} is not one of [space] preset's choices "
                             f"({', '.join(choices)})")
    for key in ("n_trials", "heartbeat_interval", "grace_period", "max_retry", "seed"):
        v = st.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise _err(path, f"[study] {key} = {v!r} must be a non-negative integer")
        if isinstance(v, int) and key in STUDY_INT_LIMITS and v > STUDY_INT_LIMITS[key]:
            raise _err(path, f"[study] {key} = {show(v)} must be at most {STUDY_INT_LIMITS[key]:,}")
    if isinstance(st.get("seed"), int) and st["seed"] > MAX_SEED:
        raise _err(path, f"[study] seed = {st['seed']} must be at most {MAX_SEED} (2**32 - 1): the samplers' limit")
    for key in ("heartbeat_interval", "grace_period"):  # Optuna refuses 0 deep inside the storage
        if st.get(key) == 0:
            raise _err(path, f"[study] {key} = 0 must be at least 1 (seconds)")
    if "jobs" in st:
        check_jobs(st["jobs"], f"{path}: [study] jobs")
    from .storage import StorageError, parse_url
    url = storage or st.get("storage") or f"sqlite:///{DEFAULT_STORAGE_DIR}/{name}/study.db"
    try:
        parse_url(url)
    except StorageError as e:
        raise StudyFileError(f"--storage: {e}" if storage else f"{path}: [study] storage: {e}") from None
    given = {k: v for k, v in {**st, **target}.items() if v is not None and k not in ("name", "storage")}
    return StudyConfig(name=name, path=path, space=space, storage=url, quality=quality, objectives=objectives,
                       constraints=constraints, enqueue=presets, **given)


def parse_quality(path: str, table: dict[str, Any], base_kind: str, n_trials: Any) -> QualityConfig:
    """[quality] into a QualityConfig: the evaluator scores this space's kind, its options are checked and typed
    by its declaration (evaluators/plugins/), rungs and early-stop values are sane."""
    written = {**table, "evaluator": table.get("evaluator", "none")}
    evaluator = written["evaluator"]
    if evaluator not in QUALITY_EVALUATORS:
        raise _err(path, f"[quality] evaluator={evaluator!r} is not one of {', '.join(QUALITY_EVALUATORS)}")
    options = {k: v for k, v in written.items() if k not in STUDY_QUALITY_KEYS}
    if evaluator == "none":
        if options:
            raise _err(path, f"[quality] {', '.join(sorted(options))} set without an evaluator: set [quality] "
                             f"evaluator (one of {', '.join(QUALITY_EVALUATORS[:-1])}) or remove it")
        typed: dict[str, Any] = {}
    else:
        declared = registry.get(evaluator)
        if base_kind not in declared.spec_kinds:
            raise _err(path, f"[quality] evaluator={evaluator!r} does not score a {base_kind} space (it scores "
                             f"{' and '.join(declared.spec_kinds)} specs)")
        try:
            typed = declared.check_config(options, "[quality]")
        except registry.EvaluatorError as e:
            raise _err(path, str(e)) from None
    rungs = _parse_rungs(path, written, n_trials, "seeds" in typed)
    es = written.get("early_stop", {})
    if not isinstance(es, dict):
        raise _err(path, "[quality] early_stop must be a table, e.g. early_stop = { quantile = 0.75 }")
    try:
        early_stop = EarlyStop(**es)
    except TypeError as e:
        raise _err(path, f"[quality.early_stop] {e}; known keys: "
                         f"{', '.join(f.name for f in dataclasses.fields(EarlyStop))}") from None
    _check_early_stop(early_stop, path)
    return QualityConfig(evaluator=evaluator, data=typed.pop("data", None), budget=typed.pop("budget", None),
                         seeds=typed.pop("seeds", 1), options=typed, rungs=rungs, early_stop=early_stop,
                         written=written)


def _check_early_stop(es: EarlyStop, path: str) -> None:
    if not isinstance(es.enabled, bool):
        raise _err(path, f"[quality.early_stop] enabled = {es.enabled!r} must be true or false")
    for key in ("quantile", "warmup_fraction"):
        v = getattr(es, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
            raise _err(path, f"[quality.early_stop] {key} = {v!r} must be a fraction strictly between 0 and 1")
    if not isinstance(es.min_trials, int) or isinstance(es.min_trials, bool) or es.min_trials < 1:
        raise _err(path, f"[quality.early_stop] min_trials = {es.min_trials!r} must be a whole number >= 1")


def check_runnable_here(cfg: StudyConfig) -> None:
    """What a study file cannot know but a run must: the data folder it names exists on this machine (a file
    like imagenet-256.toml is written for GPU workers that hold the data). Called before anything is stored."""
    data = cfg.quality.data
    if data is not None and ":" in data:
        where = data.partition(":")[2]
        if not Path(where).exists():
            raise _err(cfg.path, f"[quality] data = {data!r}: {Path(where).resolve()} does not exist on this "
                                 f"machine; encode or copy the data there first (pocketdiff data encode)")


def _budget_size(budget: Budget) -> tuple[tuple[str, ...], float]:
    """(kind, amount) of a budget: the fields it sets, and the first one's value; budgets of one kind compare by
    amount (works for any budget kind training/budget.py's Budget grows)."""
    set_fields = tuple(f.name for f in dataclasses.fields(budget) if getattr(budget, f.name) is not None)
    return set_fields, float(getattr(budget, set_fields[0])) if set_fields else 0.0


def _parse_rungs(path: str, quality: dict[str, Any], n_trials: Any, has_seeds: bool) -> Rungs | None:
    """`rungs` / `reduction` / `rung_seeds` of [quality]; a study that could never promote is refused here,
    before anything is stored."""
    if "rungs" not in quality:
        for key in ("reduction", "rung_seeds", "promotion"):
            if key in quality:
                raise _err(path, f"[quality] {key} is set without rungs: add rungs = [\"<low budget>\", "
                                 f"\"<high budget>\"] or remove {key}")
        return None
    rungs, reduction = quality["rungs"], quality.get("reduction", 3)
    rung_seeds = quality.get("rung_seeds")
    if quality["evaluator"] == "none":
        raise _err(path, "[quality] rungs need a quality evaluator: set [quality] evaluator")
    if not isinstance(rungs, list) or len(rungs) < 2 or not all(isinstance(r, str) for r in rungs):
        raise _err(path, f"[quality] rungs = {rungs!r} must list at least two budget strings, lowest first, "
                         f"e.g. [\"200steps\", \"800steps\"] (one budget: use budget = \"...\")")
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 2:
        raise _err(path, f"[quality] reduction = {reduction!r} must be an integer >= 2 (3 keeps the best third)")
    budget = next(o for o in registry.get(quality["evaluator"]).options if o.name == "budget")
    try:  # each rung is a budget of the evaluator's (the flow trainer's warm-up included)
        budgets = tuple(budget.check(r, "[quality] rungs:") for r in rungs)
    except registry.EvaluatorError as e:
        raise _err(path, str(e)) from None
    sizes = [_budget_size(b) for b in budgets]
    for (k0, a0), (k1, a1), b0, b1 in zip(sizes, sizes[1:], rungs, rungs[1:]):
        if k0 != k1:
            raise _err(path, f"[quality] rungs: {b0!r} and {b1!r} are budgets of different kinds; use one kind")
        if a1 <= a0:
            raise _err(path, f"[quality] rungs: {b1!r} is not larger than {b0!r}; list budgets lowest first, "
                             f"each larger than the one before")
    need = reduction ** (len(rungs) - 1)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < need:
        raise _err(path, f"[study] n_trials = {n_trials!r} cannot promote: {len(rungs)} rungs with reduction "
                         f"{reduction} need at least {need} candidates at the first rung for one to reach the top; "
                         f"set n_trials >= {need}, or use fewer rungs or a smaller reduction")
    if rung_seeds is not None:
        if (not isinstance(rung_seeds, list) or len(rung_seeds) != len(rungs)
                or any(out_of_range(x, 1, MAX_SEEDS, whole=True) for x in rung_seeds)):
            raise _err(path, f"[quality] rung_seeds = {rung_seeds!r} must give one whole number from 1 to "
                             f"{MAX_SEEDS} per rung "
                             f"({len(rungs)} rungs), e.g. {[1] * (len(rungs) - 1) + [3]}")
        if "seeds" in quality:
            raise _err(path, "[quality] give either seeds (every rung) or rung_seeds (per rung), not both")
        if not has_seeds:
            raise _err(path, f"[quality] rung_seeds: evaluator {quality['evaluator']!r} has no seeds option; "
                             f"remove rung_seeds")
    promotion = quality.get("promotion", "asynchronous")
    if promotion not in PROMOTIONS:
        raise _err(path, f"[quality] promotion = {promotion!r} must be \"asynchronous\" (promote whenever a rung "
                         f"holds `reduction` more finished candidates) or \"synchronous\" (promote once, when "
                         f"every candidate of the rung has finished)")
    return Rungs(budgets=budgets, reduction=reduction, seeds=tuple(rung_seeds or ()), promotion=promotion,
                 candidates=n_trials)
