"""The evaluators a study calls, behind one small interface, and the on-disk evaluation cache.

- `cheap_metrics(spec, latent, device)`: params, MACs (meta device) and predicted Neural Engine latency of the
  full-size candidate; no weights are allocated.
- `quality_metrics(spec, cfg, out_dir, on_report)`: the quality evaluator (proxy flow-matching run + FD).
- `evaluation_key` names an evaluation by (spec_id, evaluator, evaluator version, data, budget, seed): a
  duplicate spec is never trained twice, within a study (looked up in the storage) or across studies on
  one machine (the JSON cache under $POCKETDIFF_CACHE/evaluations).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from search_space import Spec

from .config import StudyConfig


def cache_root() -> Path:
    return Path(os.environ.get("POCKETDIFF_CACHE", Path.home() / ".cache" / "pocketdiff")) / "evaluations"


def cheap_metrics(spec: Spec, latent: int, device: str) -> dict[str, float]:
    from evaluators.cost import describe_cost
    from latency_models.api import predict

    cost = describe_cost(spec, latent, memory=False)
    pred = predict(spec, None, device, latent=latent)
    return {"params_m": cost["params"] / 1e6, "gmacs": cost["gmacs"], "latency_ms": float(pred.ms),
            "latency_low_ms": float(pred.low_ms), "latency_high_ms": float(pred.high_ms)}


def quality_version() -> str:
    from evaluators import quality
    return getattr(quality, "EVALUATOR_VERSION", "quality")


def evaluation_key(spec: Spec, cfg: StudyConfig) -> str:
    q = cfg.quality
    parts = {"spec_id": spec.spec_id, "evaluator": cfg.quality_evaluator, "version": quality_version(),
             "data": q.get("data", "mnist5k"), "budget": str(q.get("budget", "60s")), "seed": cfg.seed,
             "options": {k: v for k, v in sorted(q.items()) if k not in ("evaluator", "data", "budget")}}
    return json.dumps(parts, sort_keys=True)


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


def quality_metrics(spec: Spec, cfg: StudyConfig, out_dir: Path,
                    on_step: Callable[[int, int, dict[str, float]], None]) -> dict[str, Any]:
    """Run the quality evaluator; returns float metrics plus `_user_attrs` (proxy mapping, paths)."""
    from evaluators.quality import evaluate_quality

    q = cfg.quality
    t0 = time.perf_counter()
    options = {k: v for k, v in q.items() if k not in ("evaluator", "data", "budget")}
    result = evaluate_quality(spec, q.get("data", "mnist5k"), q.get("budget", "60s"), cfg.seed,
                              out_dir=out_dir, callback=on_step, progress=False, **options)
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["_evaluator_seconds"] = time.perf_counter() - t0
    user_attrs = {k: v for k, v in result.items() if k in ("proxy", "samples", "record", "status")}
    if isinstance(result.get("status"), str) and result["status"].startswith("diverged"):
        metrics["diverged_at_step"] = float(result["status"].split()[-1])
    metrics["_user_attrs"] = user_attrs
    return metrics
