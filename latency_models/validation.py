"""Held-out comparison of the roofline model, today's op-class linear model and the FLOPs / params baselines.

Both schemes refit every model without the held-out rows: leave-one-model-out (every row of one architecture,
on every chip) and leave-one-family-out (every row of a family, large families included: sd-unet,
segment-anything, depth-anything, distilbert, conv-microbench). Per chip the report gives Spearman, Kendall,
MAPE and the share within 10% / 25% for each method, and `adopted` names the model the chip's profile
predicts with: the roofline where it wins on that chip's leave-one-family-out rows (lower MAPE and a Spearman
that is not lower, or today's model cannot predict the chip at all without its own rows), else today's model.
"""
from __future__ import annotations

import math

import numpy as np

from . import predictor, roofline

METHODS = ("roofline", "predictor", "flops_linear", "params_linear")
ADOPTABLE = {"roofline": "roofline", "predictor": "op-class-linear"}


def compare(measurements, features) -> dict:
    """Held-out predictions and per-chip metrics of every method; `features` are predictor.ModelFeatures."""
    y = np.array([m.latency_ms for m in measurements])
    totals = [f.totals for f in features]
    fused = [f.fused for f in features]
    schemes = {"leave_one_model_out": lambda m: m.model_key, "leave_one_family_out": lambda m: m.family}
    held = {}
    for name, group in schemes.items():
        lin, fl, pa = predictor.held_out_predictions(measurements, totals, group)
        held[name] = {"roofline": roofline.held_out_roofline(measurements, fused, group), "predictor": lin,
                      "flops_linear": fl, "params_linear": pa}
    report: dict = {"chips": {}, "rows": []}
    for chip in sorted({m.chip for m in measurements}):
        idx = np.array([i for i, m in enumerate(measurements) if m.chip == chip])
        families = sorted({measurements[i].family for i in idx})
        enough = len(idx) >= predictor.MIN_ROWS_FOR_RANKS and len(families) >= predictor.MIN_FAMILIES_FOR_RANKS
        entry = {"rows": int(len(idx)), "families": families, "enough_data_for_ranks": enough}
        for scheme in schemes:
            entry[scheme] = {k: predictor.metrics(y[idx], held[scheme][k][idx]) for k in METHODS}
        entry["adopted"], entry["adopted_because"] = _adopt(entry)
        report["chips"][chip] = entry
    lofo = held["leave_one_family_out"]
    for i, m in enumerate(measurements):
        row = {"model": m.model, "arch": m.arch, "chip": m.chip, "family": m.family, "protocol": m.protocol,
               "measured_ms": m.latency_ms}
        for k in METHODS:
            row[f"lofo_{k}_ms"] = _num(lofo[k][i])
        row["lomo_roofline_ms"] = _num(held["leave_one_model_out"]["roofline"][i])
        row["lomo_predictor_ms"] = _num(held["leave_one_model_out"]["predictor"][i])
        report["rows"].append(row)
    # log(measured / predicted) of the leave-one-family-out predictions, per method, for the bands
    report["residuals"] = {k: {f"{m.chip}|{m.model}|{m.protocol}": float(math.log(y[i] / lofo[k][i]))
                               for i, m in enumerate(measurements) if np.isfinite(lofo[k][i]) and lofo[k][i] > 0}
                           for k in ADOPTABLE}
    return report


def _adopt(entry: dict) -> tuple[str, str]:
    r = entry["leave_one_family_out"]["roofline"]
    p = entry["leave_one_family_out"]["predictor"]
    if r["n"] and not p["n"]:
        return "roofline", "today's model cannot predict this chip once its only families are held out"
    if not r["n"]:
        return "op-class-linear", "the roofline has no prediction here"
    better_mape = r["mape"] < p["mape"]
    rho_ok = r["spearman"] is None or p["spearman"] is None or r["spearman"] >= p["spearman"]
    if better_mape and rho_ok:
        return "roofline", (f"lower leave-one-family-out MAPE ({100 * r['mape']:.0f}% vs {100 * p['mape']:.0f}%)"
                            + ("" if r["spearman"] is None or p["spearman"] is None else
                               f", Spearman {r['spearman']:.3f} vs {p['spearman']:.3f}"))
    why = []
    if not better_mape:
        why.append(f"MAPE {100 * r['mape']:.0f}% vs today's {100 * p['mape']:.0f}%")
    if not rho_ok:
        why.append(f"Spearman {r['spearman']:.3f} vs today's {p['spearman']:.3f}")
    return "op-class-linear", "the roofline does not win here: " + ", ".join(why)


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
