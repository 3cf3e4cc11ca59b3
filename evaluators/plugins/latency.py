"""The latency evaluator: the predicted Neural Engine latency of the full-size model (latency_models/), with its
band from held-out residuals and the split of the prediction by stage and op kind.

A wrapper over `latency_models.api.predict` and `latency_models.explain.breakdown` (one cached op trace feeds
both). The breakdown is stored on each study trial, so the explorer reads it back instead of walking the model
while a page renders (docs/latency.md).
"""
from __future__ import annotations

from ..registry import Evaluator, Option, register


def latency_breakdown(spec, latent: int, device: str) -> dict:
    """Predicted Neural Engine latency split by op kind and by stage (latency_models.explain.breakdown: the
    predictor's own formula on its cached features; the shares plus the protocol overhead sum to the
    prediction). `per_class_ms` is the op-kind split under its older name."""
    from latency_models.explain import breakdown

    b = breakdown(spec, device, latent=latent, batch=1)
    b = {k: v for k, v in b.items() if k != "cells"}  # the per-op grid: 6 kB a trial, and no page shows it
    return b | {"per_class_ms": {k: v for k, v in b["per_kind_ms"].items() if v > 0}}


def run(spec, config: dict, seed: int, report, out_dir) -> dict:
    from latency_models.api import predict

    pred = predict(spec, None, config["device"], latent=config["latent"])
    return {"latency_ms": float(pred.ms), "latency_low_ms": float(pred.low_ms), "latency_high_ms": float(pred.high_ms),
            "_user_attrs": {"latency_breakdown": latency_breakdown(spec, config["latent"], config["device"]),
                            # the profile fit that predicted it: `pocketdiff study rerank` after a refit
                            "latency_fit": pred.profile_fit_id}}


# Bump the version when a change makes old predictions incomparable (the profiles carry their own fitted ones).
EVALUATOR = register(Evaluator(
    name="latency", version="latency-1", cheap=True, run=run,
    metrics={"latency_ms": "minimize", "latency_low_ms": "minimize", "latency_high_ms": "minimize"},
    options=(Option("latent", int, 128, "full-size latent side the latency is predicted at"),
             Option("device", str, "a17pro", "latency profile, e.g. a17pro (latency_models/profiles/)")),
    doc="predicted Neural Engine latency of the full-size model, with its band and per-stage split"))
