"""Study files (TOML): validated into a `StudyConfig`; every error names the key and how to fix it.

Sections:
    [study]       name, storage, sampler (tpe | nsga2 | gp | random | grid), seed, n_trials, timeout,
                  heartbeat_interval, grace_period, max_retry
    [target]      latent (full-size latent the cheap objectives are measured at), device (latency profile)
    [space]       base preset + knobs (search_space/sampling.py)
    [quality]     evaluator (flow | none), data, budget, proxy options, n_samples; early_stop options
    [objectives]  metric = "minimize" | "maximize", in order
    [constraints] max_latency_ms, max_params_m (hard: a candidate over them is never trained)
    [enqueue]     presets = [...] evaluated first
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_space.sampling import SearchSpace, parse_space
from search_space.spec import SpecError

SAMPLERS = ("tpe", "nsga2", "gp", "random", "grid")
QUALITY_EVALUATORS = ("flow", "decoder", "none")
# Metrics a study may optimise: cheap ones (known before training) and the quality evaluator's.
CHEAP_METRICS = ("latency_ms", "params_m", "gmacs", "host_ms")
QUALITY_METRICS = ("fd_domain", "fid", "kid", "val_loss", "precision", "recall", "psnr")
DEFAULT_STORAGE_DIR = "runs"


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
        return {"space": self.space.to_jsonable(), "objectives": [list(o) for o in self.objectives],
                "quality": {k: v for k, v in sorted(self.quality.items())}, "latent": self.latent,
                "device": self.device}


_KNOWN = {
    "study": {"name", "storage", "sampler", "seed", "n_trials", "timeout", "heartbeat_interval", "grace_period",
              "max_retry"},
    "target": {"latent", "device"},
    "quality": {"evaluator", "data", "budget", "n_samples", "proxy", "early_stop", "guidance", "sample_steps",
                "encoder", "seeds"},
    "constraints": {"max_latency_ms", "max_params_m"},
    "enqueue": {"presets"},
}


def _err(path: str, msg: str) -> StudyFileError:
    return StudyFileError(f"{path}: {msg}")


def _check_quality_keys(quality: dict[str, Any], path: str) -> None:
    """[quality] budget, seeds, n_samples and proxy: a bad value is one line naming the key and the fix."""
    from training.proxy import ProxyConfig, ProxyError
    from training.trainer import Budget, BudgetError

    if "budget" in quality:
        try:
            Budget.parse(quality["budget"])
        except BudgetError as e:
            raise _err(path, f"[quality] {e}") from None
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
    st = data.get("study", {})
    name = st.get("name")
    if not isinstance(name, str) or not name:
        raise _err(path, "[study] name must be a non-empty string")
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
        if metric not in CHEAP_METRICS + QUALITY_METRICS:
            raise _err(path, f"[objectives] unknown metric {metric!r}; known: "
                             f"{', '.join(CHEAP_METRICS + QUALITY_METRICS)}")
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
    needs_quality = [m for m, _ in objectives if m in QUALITY_METRICS]
    if needs_quality and evaluator == "none":
        raise _err(path, f"[objectives] {needs_quality[0]} needs a quality evaluator: set [quality] evaluator")
    _check_quality_keys(quality, path)
    es = quality.pop("early_stop", {})
    try:
        early_stop = EarlyStop(**es)
    except TypeError as e:
        raise _err(path, f"[quality.early_stop] {e}; known keys: "
                         f"{', '.join(f.name for f in dataclasses.fields(EarlyStop))}") from None
    constraints = dict(data.get("constraints", {}))
    for k, v in constraints.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise _err(path, f"[constraints] {k} = {v!r} must be a positive number")
    target = data.get("target", {})
    latent = target.get("latent", 128)
    if not isinstance(latent, int) or latent < 1:
        raise _err(path, f"[target] latent = {latent!r} must be a positive integer")
    presets = tuple(data.get("enqueue", {}).get("presets", ()))
    from search_space import PRESETS
    for p in presets:
        if p not in PRESETS:
            raise _err(path, f"[enqueue] presets: unknown preset {p!r}")
    for key in ("n_trials", "heartbeat_interval", "grace_period", "max_retry", "seed"):
        v = st.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise _err(path, f"[study] {key} = {v!r} must be a non-negative integer")
    return StudyConfig(
        name=name, path=path, space=space,
        storage=storage or st.get("storage") or f"sqlite:///{DEFAULT_STORAGE_DIR}/{name}/study.db",
        sampler=sampler, seed=st.get("seed", 0), n_trials=st.get("n_trials"), timeout=st.get("timeout"),
        heartbeat_interval=st.get("heartbeat_interval", 30), grace_period=st.get("grace_period", 90),
        max_retry=st.get("max_retry", 1), latent=latent, device=target.get("device", "a17pro"),
        quality=quality, early_stop=early_stop, objectives=objectives, constraints=constraints, enqueue=presets,
    )
