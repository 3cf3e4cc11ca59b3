"""A study's calls into the evaluator registry (evaluators/registry.py), and the on-disk evaluation cache.

- `cheap_metrics(spec, latent, device)`: every cheap evaluator of the registry (cost: params and MACs on the
  meta device; latency: predicted Neural Engine latency) on the full-size candidate; no weights are allocated,
  and both are views of one op trace of the candidate (cached in memory and on disk, so a promoted or
  re-proposed spec is not walked again). Beside the metrics it returns what they store on the trial for the explorer (`stage_costs`,
  `latency_breakdown`), so no page has to build a model.
- `quality_metrics(spec, cfg, out_dir, on_report)`: the study's quality evaluator, by name from the registry,
  with the study's [quality] options, typed at load (studies/config.py: QualityConfig; at the study's one proxy
  width multiplier where the evaluator trains a proxy).
- `evaluation_key` names an evaluation by (spec_id, evaluator, its version, the fingerprint of the code that
  builds the model and its features, data, budget, seed, options): a duplicate spec is never trained twice
  within a study (looked up in the storage), and with a step budget not across studies on one machine either
  (the JSON cache under the one cache root, search_space/cache.py). An entry written by an older evaluator version
  or older builder code has another key, so it is never served: the evaluation runs again. Results of
  wall-clock budgets depend on the machine's speed and load, so they are not shared across studies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from evaluators import registry
from search_space import Spec
from search_space.cache import cache_dir
from search_space.outputs import atomic_write

from .config import STUDY_QUALITY_KEYS, StudyConfig


def cache_root() -> Path:
    return cache_dir("evaluations")


def cheap_metrics(spec: Spec, latent: int, device: str) -> dict[str, Any]:
    """Every cheap evaluator's metrics (floats), plus the breakdowns they store on the trial (dicts)."""
    out: dict[str, Any] = {}
    for evaluator in registry.cheap_evaluators():
        config = {k: v for k, v in {"latent": latent, "device": device}.items()
                  if k in evaluator.option_names()}
        result = evaluator.evaluate(spec, config, 0)
        out.update(result.pop("_user_attrs", {}))
        out.update(result)
    return out


def evaluation_key(spec: Spec, cfg: StudyConfig) -> str:
    """The name of one evaluation: the spec, the evaluator (version and code fingerprint) and every [quality]
    value that changes its result."""
    q = cfg.quality
    options = {k: v for k, v in sorted(q.written.items())
               if k not in STUDY_QUALITY_KEYS and k not in ("data", "budget", "seeds")}
    parts = {"spec_id": spec.spec_id, **registry.cache_tag(q.evaluator), "data": q.data, "budget": str(q.budget),
             "seed": cfg.seed, "seeds": q.seeds, "options": options}
    if "proxy" in q.options:  # the proxy depends on the study's width multiplier, not the spec alone
        parts["width_mult"] = proxy_width_mult(cfg)
    return json.dumps(parts, sort_keys=True)


def proxy_width_mult(cfg: StudyConfig) -> float:
    """The study's one proxy width multiplier: [quality] proxy = {width_mult = ...}, else from the widest candidate
    of its search space (training.proxy.study_width_mult)."""
    from training.proxy import study_width_mult
    return study_width_mult(cfg.space, cfg.quality.options["proxy"])


_NOTICED: set[str] = set()


def wall_clock_notice(cfg: StudyConfig, echo: Callable[[str], None] = print) -> None:
    """Say once per study and process that a wall-clock budget makes quality depend on the host."""
    from training.budget import WALL_CLOCK_NOTICE
    q = cfg.quality
    if q.evaluator != "none" and cfg.name not in _NOTICED and q.budget.wall_clock:
        _NOTICED.add(cfg.name)
        echo(f"study {cfg.name}: {WALL_CLOCK_NOTICE}")


def portable(cfg: StudyConfig) -> bool:
    """Whether a result may be reused across studies: only step budgets give the same training on any machine
    and under any load; a wall-clock budget's result is reused only within its own study."""
    return cfg.quality.budget.steps is not None


def _cache_file(key: str) -> Path:
    return cache_root() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def load_cache(key: str) -> dict | None:
    path = _cache_file(key)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("key") != key:
        return None
    return {"metrics": record["metrics"], "user_attrs": record.get("user_attrs", {}), "source": str(path)}


def store_cache(key: str, metrics: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    path = _cache_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"key": key, "metrics": metrics, "user_attrs": user_attrs}, default=str))


def quality_metrics(spec: Spec, cfg: StudyConfig, out_dir: Path,
                    on_report: Callable[[float, dict], None]) -> dict[str, Any]:
    """Run the study's quality evaluator through the registry; returns float metrics plus `_user_attrs` (proxy
    mapping, paths) and `_evaluator_seconds` (the time spent training, sampling and scoring, for the overhead
    share)."""
    wall_clock_notice(cfg)
    evaluator = registry.get(cfg.quality.evaluator)
    config = cfg.quality.evaluator_config()
    if "proxy" in config:  # the study's one width multiplier, not the spec's own
        config["proxy"] = dataclasses.replace(config["proxy"], width_mult=proxy_width_mult(cfg))
    metrics = evaluator.evaluate(spec, config, cfg.seed, on_report, out_dir)
    invalid = metrics.get("_user_attrs", {}).get("metrics_invalid")
    # only the quality objectives come from here (params_m and the other cheap ones are measured before)
    withheld = [m for m in cfg.metric_names if registry.is_quality_metric(m) and m not in metrics and invalid]
    if withheld:  # the trial fails with the reason instead of "missing objective"
        raise RuntimeError(f"no {withheld[0]} for this data: {invalid}")
    return metrics
