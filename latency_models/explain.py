"""Where predicted latency goes: per stage, per op kind, per block kind and per roofline term, and what changes
between two models (`pocketdiff latency explain NAME --device D [--compare B]`).

Computed from the same cached features and by the same formula as the prediction (api.predict_ms): the
roofline's per-op terms (roofline.op_terms) or the linear model's per-op shares (`linear_op_ms`). Every split
sums, with the protocol overhead, to the predicted total. Ops are placed by the module that ran them (the
trace's `module` field): stages via search_space.trace.stage_of, blocks via search_space.trace.block_kind.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from search_space.trace import block_kind, stage_of

from . import api, predictor, profiles, roofline
from .features import OP_CLASSES

TERMS = ("compute_ms", "memory_ms", "dispatch_ms")


def linear_op_ms(model: predictor.FittedModel, chip: str, ops: dict) -> np.ndarray:
    """Per-op milliseconds of the op-class linear model: its formula applied op by op (it is linear, so the
    shares sum exactly to `model.predict` minus the protocol overhead)."""
    th = dict(zip(predictor.COLUMNS, model.theta))
    cls = [OP_CLASSES[i] for i in ops["op_class"]]
    flops, act, w = (np.asarray(ops[k], float) for k in ("flops", "act_bytes", "weight_bytes"))
    per_flop = np.array([th["flops"] + th[f"{c}.flops"] for c in cls]) / 1e9
    per_byte = np.array([th[f"{c}.bytes"] for c in cls]) / 1e6
    per_op = np.array([th["ops"] + th[f"{c}.ops"] for c in cls])
    cost = per_flop * flops + th["act_bytes"] * act / 1e6 + th["weight_bytes"] * w / 1e6 + per_byte * (act + w) + per_op
    return model.scales[chip] * cost


def _n_stages(target) -> int | None:
    spec = getattr(target, "stages", None)
    if spec is not None:
        return len(spec)
    channels = getattr(target, "channels", None)
    return len(channels) if channels is not None else None


def breakdown(target, device: str, latent: int = 128, batch: int = 1, input_shape=None,
              weight_bits: int = 16, profile_dir=None) -> dict:
    """Predicted ms of `target` (as api.predict takes it) split every way; see the module docstring."""
    from search_space import load_spec
    from search_space.spec import Spec

    chip = profiles.resolve_device(device, profile_dir)
    profile = profiles.load_profile(chip, profile_dir)
    if input_shape is not None and not str(target).startswith(("timm:", "torchvision:")):
        batch, latent = input_shape[0], input_shape[-1]
    feats, cached, key, shape = api.model_features(target, input_shape, latent, batch, weight_bits)
    protocol = profile["model"]["default_protocol"]
    kind = profiles.adopted(profile, feats.totals)
    spec = target if isinstance(target, Spec) else None
    if spec is None and not str(target).startswith(("timm:", "torchvision:")):
        try:
            spec = load_spec(str(target))
        except Exception:  # a library model or module: stages are its top-level modules
            spec = None
    n_stages = _n_stages(spec) if spec is not None else None
    if kind == "roofline":
        model = profiles.roofline_from_profile(profile)
        terms = model.op_terms(feats.fused, chip)
        ms, modules = terms["ms"] * model.protocol_scale.get(protocol, 1.0), feats.fused.module
        kinds = [roofline.KINDS[k] for k in feats.fused.kind]
        overhead = model.overheads.get(protocol, 0.0)
    else:
        model = profiles.model_from_profile(profile)
        ms, modules = linear_op_ms(model, chip, feats.ops), feats.ops["module"]
        kinds = [OP_CLASSES[i] for i in feats.ops["op_class"]]
        terms = None
        overhead = model.overheads.get(protocol, 0.0)
    per_stage, per_kind, per_block = defaultdict(float), defaultdict(float), defaultdict(float)
    cells = defaultdict(float)
    per_term = {t: 0.0 for t in TERMS} if terms is not None else {}
    for i, (t, mod, k) in enumerate(zip(ms, modules, kinds)):
        st, bk = stage_of(mod, n_stages), block_kind(mod)
        per_stage[st] += t
        per_kind[k] += t
        per_block[bk] += t
        cells[(st, bk, k)] += t
    if terms is not None:
        # Split each op's time into its terms in proportion, so the terms sum to the total too.
        raw = np.stack([terms[t] for t in TERMS])
        share = raw / np.maximum(raw.sum(axis=0), 1e-30)
        for j, t in enumerate(TERMS):
            per_term[t] = float((share[j] * ms).sum())
    total = float(np.sum(ms)) + overhead
    evidence = (kind_evidence(feats.fused, ms, model, chip, profile["model"]["roofline"].get("calibrated_range"))
                if terms is not None else None)
    return {"model": api._label(target), "model_id": key.split("|")[0], "input_shape": shape, "chip": chip,
            "cost_model": kind, "protocol": protocol, "overhead_ms": overhead, "total_ms": total,
            "ops": int(len(ms)), "cached_features": cached,
            "per_stage_ms": dict(per_stage), "per_kind_ms": dict(per_kind), "per_block_ms": dict(per_block),
            "per_term_ms": per_term,
            "cells": [{"stage": s, "block": b, "kind": k, "ms": v} for (s, b, k), v in sorted(cells.items())],
            "evidence": evidence, "spill_share": (float(np.sum(ms[terms["spill"] > 0]) / max(np.sum(ms), 1e-30))
                            if terms is not None else None)}


def kind_evidence(fused: roofline.Fused, ms: np.ndarray, model: roofline.RooflineModel, chip: str,
                  calibrated: dict | None) -> dict:
    """Per MAC op kind: the TFLOP/s the prediction implies, the fitted efficiency against the chip's fitted
    peak, the rows that pinned it (profile `calibrated_range`), and the ops beyond anything calibrated: larger
    weights, a longer reduction or more output rows per slice (tokens, for attention) than any fitted row has."""
    peak = model.chip_terms(chip)[0]
    out = {}
    for kind in roofline.MAC_KINDS:
        mine = fused.kind == roofline.KINDS.index(kind)
        if not mine.any():
            continue
        t_ms = float(ms[mine].sum())
        flops = 2.0 * float(fused.macs[mine].sum())
        entry = {"ms": t_ms, "gflops": flops / 1e9, "tflops": flops / (t_ms * 1e-3) / 1e12 if t_ms > 0 else None,
                 "peak_tflops": peak / 1e12, "efficiency": model.shared[f"eff_{kind}"]}
        cal = (calibrated or {}).get(kind)
        if cal:
            rows = fused.rows / np.maximum(fused.slices, 1.0)
            beyond = {"weight_bytes": mine & (fused.weight_bytes > cal["max_weight_bytes"] * (1 + 1e-9)),
                      "k": mine & (fused.k > cal["max_k"] * (1 + 1e-9)),
                      "rows_per_slice": mine & (rows > cal["max_rows_per_slice"] * (1 + 1e-9))}
            outside = beyond["weight_bytes"] | beyond["k"] | beyond["rows_per_slice"]
            entry |= {"pinned_by": cal["pinned_by"], "outside_ops": int(outside.sum()),
                      "outside_share": float(ms[outside].sum() / t_ms) if t_ms > 0 else 0.0,
                      "outside_by": {k: {"ops": int(v.sum()), "largest": float(
                          {"weight_bytes": fused.weight_bytes, "k": fused.k, "rows_per_slice": rows}[k][v].max())
                          if v.any() else None, "calibrated_max": cal[f"max_{k}"]} for k, v in beyond.items()}}
        out[kind] = entry
    return out


def compare(a: dict, b: dict, top: int = 8) -> dict:
    """B minus A, per stage / op kind / block kind / term, and the (stage, block, kind) cells that move most."""
    def diff(key):
        keys = sorted(set(a[key]) | set(b[key]))
        return {k: b[key].get(k, 0.0) - a[key].get(k, 0.0) for k in keys}

    ca = {(c["stage"], c["block"], c["kind"]): c["ms"] for c in a["cells"]}
    cb = {(c["stage"], c["block"], c["kind"]): c["ms"] for c in b["cells"]}
    moves = sorted(((k, cb.get(k, 0.0) - ca.get(k, 0.0), ca.get(k, 0.0), cb.get(k, 0.0)) for k in set(ca) | set(cb)),
                   key=lambda x: -abs(x[1]))
    delta = b["total_ms"] - a["total_ms"]
    return {"a": a["model"], "b": b["model"], "chip": a["chip"], "a_ms": a["total_ms"], "b_ms": b["total_ms"],
            "delta_ms": delta, "delta_pct": 100 * delta / a["total_ms"] if a["total_ms"] else None,
            "per_stage_ms": diff("per_stage_ms"), "per_kind_ms": diff("per_kind_ms"),
            "per_block_ms": diff("per_block_ms"), "per_term_ms": diff("per_term_ms") if a["per_term_ms"] else {},
            "largest_changes": [{"stage": k[0], "block": k[1], "kind": k[2], "delta_ms": d, "a_ms": x, "b_ms": y}
                                for k, d, x, y in moves[:top]]}


def ratio_evidence(a: dict, b: dict, profile_dir=None) -> dict:
    """The predicted latency(B) / latency(A) without the protocol overhead (as ratio rows are stated), its 80%
    band from the fit's held-out ratio errors, and the published ratio when the chip's profile holds one
    for this pair at this input."""
    profile = profiles.load_profile(a["chip"], profile_dir)
    ratio = (b["total_ms"] - b["overhead_ms"]) / (a["total_ms"] - a["overhead_ms"])
    band = profile.get("ratio_band") or {}
    hw = band.get("log_half_width")
    shape = [int(s) for s in str(a["input_shape"]).split("x")]  # breakdown's "BxCxHxW"
    published = [x for x in profile.get("ratios", []) if x["before"] == a["model"] and x["after"] == b["model"]
                 and x["latent"] == shape[-1] and x["batch"] == shape[0]]
    return {"ratio": ratio, "low": None if hw is None else ratio * np.exp(-hw),
            "high": None if hw is None else ratio * np.exp(hw), "band_from": band.get("from"),
            "published": published[0] if published else None, "in_fit": bool(profile.get("ratios_in_fit"))}
