"""Study files (TOML): validated into a `StudyConfig`; every error names the key and how to fix it.

Sections:
    [study]       name, storage, sampler (tpe | nsga2 | gp | random | grid), seed, n_trials, timeout,
                  heartbeat_interval, grace_period, max_retry
    [target]      latent (full-size latent the cheap objectives are measured at), device (latency profile)
    [space]       base preset + knobs (search_space/sampling.py)
    [quality]     evaluator (flow | none), data, budget, proxy options, n_samples; early_stop options;
                  rungs = ["200steps", "800steps"] and reduction = 3: successive halving, the rungs set each
                  trial's budget (a `budget` beside them is not used, and `study run` says so)
                  (studies/halving.py); rung_seeds = [1, 3]: seeds per rung (default: `seeds` at every rung)
    [objectives]  metric = "minimize" | "maximize", in order
    [constraints] max_latency_ms, max_params_m (hard: a candidate over them is never trained)
    [enqueue]     presets = [...] evaluated first
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators import registry
from search_space.sampling import SearchSpace, parse_space
from search_space.errors import SpecError

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
QUALITY_EVALUATORS = ("flow", "decoder", "none")
# Metrics only a quality evaluator produces (the registry's answer; evaluators/registry.py).
QUALITY_METRICS = registry.quality_metrics()
DEFAULT_STORAGE_DIR = "runs"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT_DATA = {"flow": "mnist5k", "decoder": "sample-images"}


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
    latent: int = 128
    device: str = "a17pro"
    quality: dict[str, Any] = field(default_factory=dict)
    early_stop: EarlyStop = EarlyStop()
    objectives: tuple[tuple[str, str], ...] = (("latency_ms", "minimize"),)
    constraints: dict[str, float] = field(default_factory=dict)
    enqueue: tuple[str, ...] = ()
    rungs: tuple[str, ...] = ()  # successive-halving budgets, lowest first; () = one budget ([quality] budget)
    reduction: int = 3
    rung_seeds: tuple[int, ...] = ()  # seeds per rung; () = [quality] seeds at every rung

    @property
    def halving(self) -> "Rungs | None":
        """The rung schedule, or None for a single-budget study."""
        from .halving import Rungs
        return Rungs(self.rungs, self.reduction) if self.rungs else None

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def quality_evaluator(self) -> str:
        return self.quality.get("evaluator", "none")

    def fingerprint(self) -> dict:
        """What must match when a study of this name already exists in the storage."""
        out = {"space": self.space.to_jsonable(), "objectives": [list(o) for o in self.objectives],
               "quality": {k: v for k, v in sorted(self.quality.items())}, "latent": self.latent,
               "device": self.device}
        if self.rungs:  # only then, so single-budget studies stored before rungs existed still match
            out["rungs"] = {"budgets": list(self.rungs), "reduction": self.reduction}
            if self.rung_seeds:
                out["rungs"]["seeds"] = list(self.rung_seeds)
        return out


_KNOWN = {
    "study": {"name", "storage", "sampler", "seed", "n_trials", "timeout", "heartbeat_interval", "grace_period",
              "max_retry"},
    "target": {"latent", "device"},
    "quality": {"evaluator", "data", "budget", "n_samples", "proxy", "early_stop", "guidance", "sample_steps",
                "encoder", "seeds", "rungs", "reduction", "rung_seeds"},
    "constraints": {"max_latency_ms", "max_params_m"},
    "enqueue": {"presets"},
}


def _err(path: str, msg: str) -> StudyFileError:
    return StudyFileError(f"{path}: {msg}")


def _check_quality_keys(quality: dict[str, Any], path: str) -> None:
    """[quality] budget, seeds, n_samples and proxy: a bad value is one line naming the key and the fix."""
    from training.budget import WARMUP_STEPS, Budget, BudgetError
    from training.proxy import ProxyConfig, ProxyError

    budgets = [("budget", quality["budget"])] if "budget" in quality else []
    if isinstance(quality.get("rungs"), list):
        budgets += [("rungs", r) for r in quality["rungs"] if isinstance(r, str)]
    for key, text in budgets:
        try:
            b = Budget.parse(text)
            if quality.get("evaluator") == "flow" and b.steps is not None:  # the flow trainer's warm-up
                b.resolve(train_count=1, batch_size=1, warmup_steps=WARMUP_STEPS)
        except BudgetError as e:
            raise _err(path, f"[quality] {key}: {e}" if key == "rungs" else f"[quality] {e}") from None
    seeds = quality.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise _err(path, f"[quality] seeds = {seeds!r} must be a whole number >= 1 (3 gives a 95% interval)")
    n = quality.get("n_samples", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _err(path, f"[quality] n_samples = {n!r} must be a whole number >= 1")
    proxy = quality.get("proxy", {})
    if not isinstance(proxy, dict):
        raise _err(path, "[quality] proxy must be a table, e.g. proxy = { width_mult = 0.125 }")
    try:
        ProxyConfig(**proxy)
    except TypeError:
        raise _err(path, f"[quality] proxy: unknown key(s) {', '.join(sorted(proxy))}; known: width_mult, "
                         f"max_channels, norm_groups") from None
    except ProxyError as e:
        raise _err(path, f"[quality] {e}") from None


def load_study_file(path: str | Path, storage: str | None = None) -> StudyConfig:
    path = Path(path)
    if not path.is_file():
        raise StudyFileError(f"study file {path} does not exist (shipped ones: studies/*.toml)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise StudyFileError(f"{path}: not valid TOML: {e}") from None
    return parse_study(data, str(path), storage)


def parse_study(data: dict[str, Any], path: str = "<study>", storage: str | None = None) -> StudyConfig:
    unknown = set(data) - set(_KNOWN) - {"space", "objectives"}
    if unknown:
        raise _err(path, f"unknown section(s) [{'], ['.join(sorted(unknown))}]; known: "
                         f"{', '.join(sorted(set(_KNOWN) | {'space', 'objectives'}))}")
    for section, keys in _KNOWN.items():
        bad = set(data.get(section, {})) - keys
        if bad:
            raise _err(path, f"[{section}] unknown key(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(keys))}")
    for section in set(_KNOWN) | {"space", "objectives"}:
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
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise _err(path, f"[study] timeout = {timeout!r} must be a number of seconds > 0, e.g. timeout = 600")
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
    quality = dict(data.get("quality", {}))
    evaluator = quality.setdefault("evaluator", "none")
    if evaluator not in QUALITY_EVALUATORS:
        raise _err(path, f"[quality] evaluator={evaluator!r} is not one of {', '.join(QUALITY_EVALUATORS)}")
    from search_space import PRESETS as _PRESETS
    base_kind = _PRESETS[space.base].kind
    if evaluator == "decoder" and base_kind != "decoder" or evaluator == "flow" and base_kind != "unet":
        raise _err(path, f"[quality] evaluator={evaluator!r} does not score a {base_kind} space "
                         f"(flow scores UNets, decoder scores decoders)")
    _check_quality_keys(quality, path)
    _check_data(quality, evaluator, path)
    rungs, reduction, rung_seeds = _parse_rungs(path, quality, st, evaluator)
    es = quality.pop("early_stop", {})
    if not isinstance(es, dict):
        raise _err(path, "[quality] early_stop must be a table, e.g. early_stop = { quantile = 0.75 }")
    try:
        early_stop = EarlyStop(**es)
    except TypeError as e:
        raise _err(path, f"[quality.early_stop] {e}; known keys: "
                         f"{', '.join(f.name for f in dataclasses.fields(EarlyStop))}") from None
    try:  # every metric named is produced by an evaluator the study runs; its options are known and typed
        registry.check_study(evaluator, quality, [("objectives", m) for m, _ in objectives]
                             + [("constraints", c.removeprefix("max_")) for c in data.get("constraints", {})])
    except registry.EvaluatorError as e:
        raise _err(path, str(e)) from None
    _check_early_stop(early_stop, path)
    constraints = dict(data.get("constraints", {}))
    for k, v in constraints.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise _err(path, f"[constraints] {k} = {v!r} must be a positive number")
    target = data.get("target", {})
    latent = target.get("latent", 128)
    if not isinstance(latent, int) or isinstance(latent, bool) or latent < 1:
        raise _err(path, f"[target] latent = {latent!r} must be a positive integer")
    device = target.get("device", "a17pro")
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
    from search_space import PRESETS
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
    for key in ("heartbeat_interval", "grace_period"):  # Optuna refuses 0 deep inside the storage
        if st.get(key) == 0:
            raise _err(path, f"[study] {key} = 0 must be at least 1 (seconds)")
    from .storage import StorageError, parse_url
    url = storage or st.get("storage") or f"sqlite:///{DEFAULT_STORAGE_DIR}/{name}/study.db"
    try:
        parse_url(url)
    except StorageError as e:
        raise StudyFileError(f"--storage: {e}" if storage else f"{path}: [study] storage: {e}") from None
    return StudyConfig(
        name=name, path=path, space=space,
        storage=url,
        sampler=sampler, seed=st.get("seed", 0), n_trials=st.get("n_trials"), timeout=st.get("timeout"),
        heartbeat_interval=st.get("heartbeat_interval", 30), grace_period=st.get("grace_period", 90),
        max_retry=st.get("max_retry", 1), latent=latent, device=target.get("device", "a17pro"),
        quality=quality, early_stop=early_stop, objectives=objectives, constraints=constraints, enqueue=presets,
        rungs=rungs, reduction=reduction, rung_seeds=rung_seeds,
    )


def _check_early_stop(es: EarlyStop, path: str) -> None:
    if not isinstance(es.enabled, bool):
        raise _err(path, f"[quality.early_stop] enabled = {es.enabled!r} must be true or false")
    for key in ("quantile", "warmup_fraction"):
        v = getattr(es, key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
            raise _err(path, f"[quality.early_stop] {key} = {v!r} must be a fraction strictly between 0 and 1")
    if not isinstance(es.min_trials, int) or isinstance(es.min_trials, bool) or es.min_trials < 1:
        raise _err(path, f"[quality.early_stop] min_trials = {es.min_trials!r} must be a whole number >= 1")


def _check_data(quality: dict[str, Any], evaluator: str, path: str) -> None:
    """[quality] data names a source the evaluator can load; checked by form and, for a folder, that it exists
    (the data itself is loaded by the first trial)."""
    if evaluator not in DEFAULT_DATA:
        return
    data = quality.get("data", DEFAULT_DATA[evaluator])
    if not isinstance(data, str):
        raise _err(path, f"[quality] data = {data!r} must be a string")
    kind, _, where = data.partition(":")
    if evaluator == "flow":
        ok = data == "mnist5k" or data in (f"mnist5k-p{p}" for p in (1, 2, 4, 8)) \
            or (kind in ("imagenet", "folder", "latents") and where)
        known = "mnist5k, mnist5k-p1|p2|p4|p8, imagenet:PATH, folder:PATH or latents:PATH"
    else:
        ok = data == "sample-images" or (kind == "folder" and where)
        known = "sample-images or folder:PATH"
    if not ok:
        raise _err(path, f"[quality] data = {data!r} is not a {evaluator} data source; use {known}")


def check_runnable_here(cfg: "StudyConfig") -> None:
    """What a study file cannot know but a run must: the data folder it names exists on this machine (a file
    like imagenet-256.toml is written for GPU workers that hold the data). Called before anything is stored."""
    data = cfg.quality.get("data")
    if isinstance(data, str) and ":" in data:
        where = data.partition(":")[2]
        if not Path(where).exists():
            raise _err(cfg.path, f"[quality] data = {data!r}: {Path(where).resolve()} does not exist on this "
                                 f"machine; encode or copy the data there first (pocketdiff data encode)")


def _budget_size(budget: Any) -> tuple[tuple[str, ...], float]:
    """(kind, amount) of a parsed budget: the fields it sets, and the first one's value; budgets of one kind
    compare by amount (works for any budget kind training/trainer.py's Budget grows)."""
    set_fields = tuple(f.name for f in dataclasses.fields(budget) if getattr(budget, f.name) is not None)
    return set_fields, float(getattr(budget, set_fields[0])) if set_fields else 0.0


def _parse_rungs(path: str, quality: dict[str, Any], st: dict[str, Any],
                 evaluator: str) -> tuple[tuple[str, ...], int, tuple[int, ...]]:
    """Pop and check `rungs` / `reduction` / `rung_seeds` from [quality]; a study that could never promote is
    refused here, before anything is stored."""
    if "rungs" not in quality:
        for key in ("reduction", "rung_seeds"):
            if key in quality:
                raise _err(path, f"[quality] {key} is set without rungs: add rungs = [\"<low budget>\", "
                                 f"\"<high budget>\"] or remove {key}")
        return (), 3, ()
    rungs, reduction = quality.pop("rungs"), quality.pop("reduction", 3)
    rung_seeds = quality.pop("rung_seeds", None)
    if evaluator == "none":
        raise _err(path, "[quality] rungs need a quality evaluator: set [quality] evaluator")
    if not isinstance(rungs, list) or len(rungs) < 2 or not all(isinstance(r, str) for r in rungs):
        raise _err(path, f"[quality] rungs = {rungs!r} must list at least two budget strings, lowest first, "
                         f"e.g. [\"200steps\", \"800steps\"] (one budget: use budget = \"...\")")
    if not isinstance(reduction, int) or isinstance(reduction, bool) or reduction < 2:
        raise _err(path, f"[quality] reduction = {reduction!r} must be an integer >= 2 (3 keeps the best third)")
    from training.budget import Budget
    sizes = []
    for r in rungs:
        try:
            sizes.append(_budget_size(Budget.parse(r)))
        except ValueError as e:
            raise _err(path, f"[quality] rungs: {e}") from None
    for (k0, a0), (k1, a1), b0, b1 in zip(sizes, sizes[1:], rungs, rungs[1:]):
        if k0 != k1:
            raise _err(path, f"[quality] rungs: {b0!r} and {b1!r} are budgets of different kinds; use one kind")
        if a1 <= a0:
            raise _err(path, f"[quality] rungs: {b1!r} is not larger than {b0!r}; list budgets lowest first, "
                             f"each larger than the one before")
    n_trials, need = st.get("n_trials"), reduction ** (len(rungs) - 1)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < need:
        raise _err(path, f"[study] n_trials = {n_trials!r} cannot promote: {len(rungs)} rungs with reduction "
                         f"{reduction} need at least {need} candidates at the first rung for one to reach the top; "
                         f"set n_trials >= {need}, or use fewer rungs or a smaller reduction")
    if rung_seeds is not None:
        if (not isinstance(rung_seeds, list) or len(rung_seeds) != len(rungs)
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in rung_seeds)):
            raise _err(path, f"[quality] rung_seeds = {rung_seeds!r} must give one whole number >= 1 per rung "
                             f"({len(rungs)} rungs), e.g. {[1] * (len(rungs) - 1) + [3]}")
        if "seeds" in quality:
            raise _err(path, "[quality] give either seeds (every rung) or rung_seeds (per rung), not both")
    return tuple(rungs), reduction, tuple(rung_seeds or ())
