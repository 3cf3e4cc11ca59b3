"""Held-out comparison of the roofline model, today's op-class linear model and the FLOPs / params baselines.

Both schemes refit every model without the held-out rows: leave-one-model-out (every row of one architecture,
on every chip) and leave-one-family-out (every row of a family, large families included: sd-unet,
segment-anything, depth-anything, distilbert, conv-microbench). Per chip the report gives Spearman, Kendall,
MAPE and the share within 10% / 25% for each method.

Which model a chip predicts with is decided per size regime, because the two models are built for different
regimes and the data of each chip are thin: `small` (under LARGE_GMACS multiply-accumulates per inference:
the 224 px classifiers) and `large` (diffusion UNets and decoders, SAM 2, the conv microbenchmarks). In each
regime the roofline is adopted where its leave-one-family-out MAPE is lower than today's model's (or today's
model cannot predict the rows at all); Spearman is reported beside it, not used to decide. The decision uses
the chip's own rows of that regime when it has at least MIN_ROWS_FOR_RANKS of them from two families, else
the rows of that regime pooled over all chips (the structure of both models is shared across chips).
"""
from __future__ import annotations

import math

import numpy as np

from . import predictor, roofline

METHODS = ("roofline", "predictor", "flops_linear", "params_linear")
ADOPTABLE = {"roofline": "roofline", "predictor": "op-class-linear"}
REGIMES = ("small", "large")
# Diffusion scale: the smallest workbench UNet or decoder at a 64x64 latent is above it, VGG-19 (19.6 G) below.
LARGE_GMACS = 20.0


def regime_of(totals: dict) -> str:
    """'large' from LARGE_GMACS multiply-accumulates per inference (conv, linear, attention products) up."""
    macs = sum(totals.get(f"{c}.flops", 0.0) for c in ("conv", "dwconv", "linear", "attn_matmul")) / 2
    return "large" if macs >= LARGE_GMACS * 1e9 else "small"


def compare(measurements, features, ratios=(), ratio_features=()) -> dict:
    """Held-out predictions and per-chip metrics of every method; `features` are predictor.ModelFeatures.

    Ratio rows (ratios.RatioMeasurement, with the features of their two models) stay in every roofline refit;
    they are checked by `ratio_report`.
    """
    y = np.array([m.latency_ms for m in measurements])
    totals = [f.totals for f in features]
    fused = [f.fused for f in features]
    rfused = [(a.fused, b.fused) for a, b in ratio_features]
    schemes = {"leave_one_model_out": lambda m: m.model_key, "leave_one_family_out": lambda m: m.family}
    held = {}
    for name, group in schemes.items():
        lin, fl, pa = predictor.held_out_predictions(measurements, totals, group)
        held[name] = {"roofline": roofline.held_out_roofline(measurements, fused, group, ratios, rfused),
                      "predictor": lin, "flops_linear": fl, "params_linear": pa}
    report: dict = {"chips": {}, "rows": [], "regimes": {}}
    regime = [regime_of(t) for t in totals]
    lofo_all = held["leave_one_family_out"]
    for reg in REGIMES:
        idx = np.array([i for i in range(len(measurements)) if regime[i] == reg])
        report["regimes"][reg] = {"rows": int(len(idx)), "pooled_leave_one_family_out": {
            k: predictor.metrics(y[idx], lofo_all[k][idx]) for k in METHODS} if len(idx) else {}}
        report["regimes"][reg]["adopted"], report["regimes"][reg]["adopted_because"] = (
            _adopt(_common(y, lofo_all, idx), "pooled over all chips") if len(idx) else ("op-class-linear", "no rows"))
    for chip in sorted({m.chip for m in measurements}):
        idx = np.array([i for i, m in enumerate(measurements) if m.chip == chip])
        families = sorted({measurements[i].family for i in idx})
        enough = len(idx) >= predictor.MIN_ROWS_FOR_RANKS and len(families) >= predictor.MIN_FAMILIES_FOR_RANKS
        entry = {"rows": int(len(idx)), "families": families, "enough_data_for_ranks": enough}
        for scheme in schemes:
            entry[scheme] = {k: predictor.metrics(y[idx], held[scheme][k][idx]) for k in METHODS}
        entry["adopted"], entry["adopted_because"] = {}, {}
        for reg in REGIMES:
            own = np.array([i for i in idx if regime[i] == reg])
            fams = {measurements[i].family for i in own}
            if len(own) >= predictor.MIN_ROWS_FOR_RANKS and len(fams) >= predictor.MIN_FAMILIES_FOR_RANKS:
                entry["adopted"][reg], entry["adopted_because"][reg] = _adopt(_common(y, lofo_all, own),
                                                                              f"{chip}'s {len(own)} rows")
            else:
                entry["adopted"][reg] = report["regimes"][reg]["adopted"]
                entry["adopted_because"][reg] = (f"{chip} has {len(own)} {reg} rows: "
                                                 + report["regimes"][reg]["adopted_because"])
        report["chips"][chip] = entry
    lofo = held["leave_one_family_out"]
    for i, m in enumerate(measurements):
        row = {"model": m.model, "arch": m.arch, "chip": m.chip, "family": m.family, "protocol": m.protocol,
               "regime": regime[i], "measured_ms": m.latency_ms}
        for k in METHODS:
            row[f"lofo_{k}_ms"] = _num(lofo[k][i])
        row["lomo_roofline_ms"] = _num(held["leave_one_model_out"]["roofline"][i])
        row["lomo_predictor_ms"] = _num(held["leave_one_model_out"]["predictor"][i])
        report["rows"].append(row)
    # log(measured / predicted) of the leave-one-family-out predictions, per method, for the bands
    report["residuals"] = {k: {residual_key(regime[i], m, i): float(math.log(y[i] / lofo[k][i]))
                               for i, m in enumerate(measurements) if np.isfinite(lofo[k][i]) and lofo[k][i] > 0}
                           for k in ADOPTABLE}
    return report


# A design decision is read right when the predicted change has the published sign and lies within this many
# percentage points of the published change (the paper rounds its changes to whole percents).
DECISION_POINTS = 10.0
Z80 = 1.2816  # the normal quantile that puts 80% of a Gaussian between -z and z


def ratio_report(ratios, ratio_features, model: roofline.RooflineModel, held: np.ndarray) -> dict:
    """Per ratio row: the published change, the fit's (in-sample), the fit's without that row (held out), and
    the FLOPs-only and parameters-only changes; then the share of rows each reads right (DECISION_POINTS), and
    the 80% band of a predicted change from the held-out log errors."""
    rows = []
    for r, (a, b), h in zip(ratios, ratio_features, held):
        rows.append({"before": r.model_before, "after": r.model_after, "chip": r.chip, "device": r.device,
                     "latent": r.latent, "batch": r.batch, "attention": r.attention, "source": r.source,
                     "published": r.ratio, "sigma_log": r.sigma_log,
                     "fitted": roofline.predicted_ratio(model, a.fused, b.fused, r.chip),
                     "held_out": _num(h), "flops_only": b.totals["flops"] / a.totals["flops"],
                     "params_only": b.totals["params"] / a.totals["params"]})
    methods = ("fitted", "held_out", "flops_only", "params_only")
    accuracy = {}
    for k in methods:
        ok = [_decided(x["published"], x[k]) for x in rows if x[k] is not None]
        accuracy[k] = {"n": len(ok), "right": int(sum(ok)), "share": (sum(ok) / len(ok)) if ok else None}
    errs = [math.log(x["held_out"] / x["published"]) for x in rows if x["held_out"] is not None]
    rms = math.sqrt(sum(e * e for e in errs) / len(errs)) if errs else None
    band = {"log_rms": rms, "n": len(errs), "coverage": 0.8,
            "log_half_width": None if rms is None else Z80 * rms,
            "from": f"root-mean-square log error of {len(errs)} held-out ratio predictions"}
    return {"rows": rows, "decision_accuracy": accuracy, "decision_points": DECISION_POINTS, "band": band}


def _decided(published: float, predicted: float) -> bool:
    """Right sign of the change and within DECISION_POINTS percentage points of the published one."""
    same_sign = (published - 1.0) * (predicted - 1.0) > 0 or published == predicted == 1.0
    return bool(same_sign and abs(100 * (predicted - published)) <= DECISION_POINTS)


def residual_key(regime: str, m, row: int) -> str:
    """How residuals are keyed: regime|chip|model|protocol|row, one per measurement row (so the counts a band
    states are rows, as everywhere else)."""
    return f"{regime}|{m.chip}|{m.model}|{m.protocol}|{row}"


def _common(y, lofo: dict, idx) -> dict:
    """Metrics of both adoptable models on the rows both predict (today's model cannot predict a chip whose
    rows are all held out), plus the roofline's count of all rows, so the two are compared like for like."""
    idx = np.asarray(idx, int)
    both = idx[np.isfinite(lofo["roofline"][idx]) & np.isfinite(lofo["predictor"][idx])]
    out = {k: predictor.metrics(y[both], lofo[k][both]) for k in ADOPTABLE}
    if not len(both):
        out["roofline"] = predictor.metrics(y[idx], lofo["roofline"][idx])
    return out


def _adopt(mets: dict, where: str) -> tuple[str, str]:
    """Roofline if its leave-one-family-out MAPE is lower (or today's model has no prediction)."""
    r, p = mets["roofline"], mets["predictor"]
    rho = ("" if r.get("spearman") is None or p.get("spearman") is None else
           f"; Spearman {r['spearman']:.3f} vs {p['spearman']:.3f}")
    if r["n"] and not p["n"]:
        return "roofline", f"today's model cannot predict these rows once their family is held out ({where})"
    if not r["n"]:
        return "op-class-linear", f"the roofline has no prediction here ({where})"
    text = (f"leave-one-family-out MAPE {100 * r['mape']:.0f}% roofline vs {100 * p['mape']:.0f}% today{rho} on the "
            f"{r['n']} rows both predict ({where})")
    return ("roofline", text) if r["mape"] < p["mape"] else ("op-class-linear", "the roofline does not win: " + text)


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
