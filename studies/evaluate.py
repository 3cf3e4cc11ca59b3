"""The evaluators a study calls, behind one small interface, and the on-disk evaluation cache.

- `cheap_metrics(spec, latent, device)`: params, MACs (meta device) and predicted Neural Engine latency of the
  full-size candidate; no weights are allocated.
- `quality_metrics(spec, cfg, out_dir, on_report)`: the quality evaluator (proxy flow-matching run + FD) at the
  study's one proxy width multiplier, over `seeds` seeds: each metric m is the seed mean, with m_ci_low and
  m_ci_high (95% t-interval) when seeds > 1.
- `evaluation_key` names an evaluation by (spec_id, evaluator, evaluator version, data, budget, seed): a
  duplicate spec is never trained twice within a study (looked up in the storage), and with a step budget not
  across studies on one machine either (the JSON cache under $POCKETDIFF_CACHE/evaluations). Results of
  wall-clock budgets depend on the machine's speed and load, so they are not shared across studies.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from search_space import Spec

from .config import QUALITY_METRICS, StudyConfig


DEFAULT_BUDGET = "500steps"  # a [quality] section without a budget: reproducible steps, not wall clock


def cache_root() -> Path:
    return Path(os.environ.get("POCKETDIFF_CACHE", Path.home() / ".cache" / "pocketdiff")) / "evaluations"


def cheap_metrics(spec: Spec, latent: int, device: str) -> dict[str, float]:
    from evaluators.cost import describe_cost
    from latency_models.api import predict

    cost = describe_cost(spec, latent, memory=False)
    pred = predict(spec, None, device, latent=latent)
    return {"params_m": cost["params"] / 1e6, "gmacs": cost["gmacs"], "latency_ms": float(pred.ms),
            "latency_low_ms": float(pred.low_ms), "latency_high_ms": float(pred.high_ms)}


def quality_version(evaluator: str) -> str:
    if evaluator == "decoder":
        from evaluators import decoder_quality
        return decoder_quality.EVALUATOR_VERSION
    from evaluators import quality
    return getattr(quality, "EVALUATOR_VERSION", "quality")


def evaluation_key(spec: Spec, cfg: StudyConfig) -> str:
    q = cfg.quality
    parts = {"spec_id": spec.spec_id, "evaluator": cfg.quality_evaluator, "version": quality_version(cfg.quality_evaluator),
             "data": q.get("data", "mnist5k"), "budget": str(q.get("budget", DEFAULT_BUDGET)), "seed": cfg.seed,
             "seeds": q.get("seeds", 1),
             "options": {k: v for k, v in sorted(q.items()) if k not in ("evaluator", "data", "budget", "seeds")}}
    if cfg.quality_evaluator == "flow":  # the proxy depends on the study's width multiplier, not the spec alone
        parts["width_mult"] = proxy_width_mult(cfg)
    return json.dumps(parts, sort_keys=True)


def proxy_width_mult(cfg: StudyConfig) -> float:
    """The study's one proxy width multiplier: [quality] proxy = {width_mult = ...}, else from the widest candidate
    of its search space (training.proxy.study_width_mult)."""
    from training.proxy import ProxyConfig, study_width_mult
    return study_width_mult(cfg.space, ProxyConfig(**cfg.quality.get("proxy", {})))


_NOTICED: set[str] = set()


def wall_clock_notice(cfg: StudyConfig, echo: Callable[[str], None] = print) -> None:
    """Say once per study and process that a wall-clock budget makes quality depend on the host."""
    from training.trainer import WALL_CLOCK_NOTICE, Budget
    if cfg.quality_evaluator != "none" and cfg.name not in _NOTICED \
            and Budget.parse(cfg.quality.get("budget", DEFAULT_BUDGET)).wall_clock:
        _NOTICED.add(cfg.name)
        echo(f"study {cfg.name}: {WALL_CLOCK_NOTICE}")


def portable(cfg: StudyConfig) -> bool:
    """Whether a result may be reused across studies: only step budgets give the same training on any machine
    and under any load; a wall-clock budget's result is reused only within its own study."""
    from training.trainer import Budget
    return Budget.parse(cfg.quality.get("budget", DEFAULT_BUDGET)).steps is not None


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
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "metrics": metrics, "user_attrs": user_attrs}, default=str))
    tmp.replace(path)


# study-file [quality] keys -> evaluate_quality keyword arguments
_FLOW_OPTIONS = {"n_samples": "num_samples", "sample_steps": "sample_steps", "guidance": "cfg_scale"}


def quality_metrics(spec: Spec, cfg: StudyConfig, out_dir: Path,
                    on_report: Callable[[float, dict], None]) -> dict[str, Any]:
    """Run the quality evaluator; returns float metrics plus `_user_attrs` (proxy mapping, paths) and
    `_evaluator_seconds` (the time spent training and sampling, for the overhead share)."""
    from training.trainer import Budget

    q = cfg.quality
    budget = Budget.parse(q.get("budget", DEFAULT_BUDGET))
    wall_clock_notice(cfg)

    def callback(report: dict) -> bool:
        fraction = report["fraction"] if "fraction" in report else budget.fraction(report["step"], report["seconds"])
        on_report(fraction, report)
        return False

    if cfg.quality_evaluator == "decoder":
        from evaluators.decoder_quality import evaluate_decoder_quality
        result = evaluate_decoder_quality(spec, q.get("data", "sample-images"), budget, cfg.seed, out_dir=out_dir,
                                          callback=callback, encoder=q.get("encoder", "tiny-ae"))
        busy = result["train_seconds"]
    else:
        from evaluators.quality import evaluate_quality_seeds
        from training.proxy import ProxyConfig
        options = {_FLOW_OPTIONS[k]: v for k, v in q.items() if k in _FLOW_OPTIONS}
        proxy = dict(q.get("proxy", {}))
        proxy["width_mult"] = proxy_width_mult(cfg)
        options["proxy_config"] = ProxyConfig(**proxy)
        result = evaluate_quality_seeds(spec, q.get("data", "mnist5k"), budget, cfg.seed, int(q.get("seeds", 1)),
                                        out_dir=out_dir, callback=callback, progress=False, **options)
        busy = result.get("seconds_train", 0.0) + result.get("seconds_sample", 0.0)
    metrics = {k: float(v) for k, v in result.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
    metrics["_evaluator_seconds"] = busy
    status = str(result.get("status", "ok"))
    if status.startswith("diverged"):
        metrics["diverged_at_step"] = float(status.split("step")[1].split()[0])
    # only the quality objectives come from here (params_m and the other cheap ones are measured before)
    withheld = [m for m in cfg.metric_names if m in QUALITY_METRICS and m not in metrics and "metrics_invalid" in result]
    if withheld:  # the trial fails with the reason instead of "missing objective"
        raise RuntimeError(f"no {withheld[0]} for this data: {result['metrics_invalid']}")
    metrics["_user_attrs"] = {k: result[k] for k in ("proxy", "status", "out_dir", "samples", "record",
                                                     "metrics_invalid", "seed_list") if k in result}
    return metrics
