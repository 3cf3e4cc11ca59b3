"""Validation reports: the per-chip tables of `pocketdiff latency report` and the committed files in reports/.

Each chip's table puts the roofline model (roofline.py) and today's op-class linear model (predictor.py) next
to two baselines, each fitted per chip on that chip's training rows: latency linear in FLOPs, and latency
linear in parameter count. Two held-out schemes: leave-one-model-out (every row of an architecture, on every
chip, leaves the fit together) and leave-one-family-out (every row of a family: resnet, vgg, densenet,
mobilenet, mobilevit, fastvit, mobileone, sd-unet, segment-anything, depth-anything, distilbert,
conv-microbench). The chip's profile predicts with the model named by `adopted` (validation.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

SCHEMES = (("leave_one_model_out", "leave-one-model-out"), ("leave_one_family_out", "leave-one-family-out"))
METHODS = (("roofline", "roofline"), ("predictor", "today (linear)"), ("flops_linear", "FLOPs linear"),
           ("params_linear", "params linear"))


def _f(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:.3f}"


def verdict(validation: dict) -> str:
    """One line: does the adopted model beat FLOPs-only on leave-one-family-out Spearman, and if not, why."""
    if not validation["enough_data_for_ranks"]:
        return (f"not enough data for rank metrics: {validation['rows']} rows from "
                f"{len(validation['families'])} famil{'y' if len(validation['families']) == 1 else 'ies'} "
                f"({', '.join(validation['families'])}); the chip's scale is fitted, the structure is shared")
    lofo = validation["leave_one_family_out"]
    p, f = lofo["roofline"]["spearman"], lofo["flops_linear"]["spearman"]
    if p is None or f is None:
        return "rank metrics undefined (constant predictions or too few predicted rows)"
    if p > f:
        return f"roofline beats FLOPs-only on leave-one-family-out Spearman ({p:.3f} vs {f:.3f})"
    if p == f:
        return (f"roofline ties FLOPs-only on leave-one-family-out Spearman ({p:.3f}): with "
                f"{validation['rows']} rows both rank every held-out family the same")
    return (f"roofline does NOT beat FLOPs-only on leave-one-family-out Spearman ({p:.3f} vs {f:.3f}); "
            f"see reports/README.md for why")


def format_report(profile: dict) -> str:
    v = profile["validation"]
    lines = [f"{profile['chip']}: profile fit {profile['fit_id']} ({profile['fitted_on']}), {v['rows']} measurements, "
             f"families: {', '.join(v['families'])}",
             f"devices: {', '.join(profile['devices'])}; features: {profile['feature_source']}",
             "",
             f"{'scheme':<22} {'method':<14} {'n':>3} {'Spearman':>9} {'Kendall':>8} {'MAPE':>7} "
             f"{'±10%':>5} {'±25%':>5}"]
    for key, name in SCHEMES:
        for mkey, mname in METHODS:
            r = v[key][mkey]
            lines.append(f"{name if mkey == 'roofline' else '':<22} {mname:<14} {r['n']:>3} {_f(r['spearman']):>9} "
                         f"{_f(r['kendall_tau']):>8} {_f(r['mape'], True):>7} {_f(r['within_10'], True):>5} "
                         f"{_f(r['within_25'], True):>5}")
    b = profile["band"]
    lines += ["", f"verdict: {verdict(v)}"]
    for reg, what in (("small", "small models"), ("large", f"from {profile['model']['regime_gmacs']:g} GMACs")):
        lines += [f"{what}: predicts with {v['adopted'][reg]} ({v['adopted_because'][reg]})",
                  f"  band: x{math.exp(b[reg]['log_low']):.2f} .. x{math.exp(b[reg]['log_high']):.2f}, the central "
                  f"{b.get('quantile_level', b['coverage']):.0%} of {b[reg]['from']}"]
    c = b.get("leave_one_family_out_coverage")
    if c and c["rows"]:
        lines.append(f"band coverage, each row against the band rebuilt without its family: {c['covered']}/{c['rows']}"
                     f" ({_f(c['share'], True)}; the band aims at {int(b['coverage'] * 100)}% over all chips; level: "
                     f"{b.get('quantile_level_why', 'n/a')})"
                     + ("" if "without_protocol_rule" not in c else
                        f"; {c['without_protocol_rule']}/{c['rows']} without the unfitted-protocol widening"))
    return "\n".join(lines)


def _rows_table(report: dict, chip: str) -> list[str]:
    keys = ("lomo_roofline_ms", "lofo_roofline_ms", "lomo_predictor_ms", "lofo_predictor_ms", "lofo_flops_linear_ms")
    out = ["| model | family | protocol | measured ms | roofline LOMO | roofline LOFO | today LOMO | today LOFO "
           "| FLOPs-linear LOFO |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if r["chip"] == chip:
            cells = [r["model"], r["family"], r["protocol"], f"{r['measured_ms']:g}"] + \
                    ["n/a" if r[k] is None else f"{r[k]:.3g}" for k in keys]
            out.append("| " + " | ".join(cells) + " |")
    return out


# Every fit is deterministic; said in each per-chip report so no reader looks for a seed-to-seed spread.
DETERMINISTIC = ("Deterministic fit: no random seed (penalised least squares from fixed priors; a rerun on the "
                 "same rows gives the same numbers).")
SEEDLESS_NOTE = DETERMINISTIC + " Chance level and how far to read Spearman on few rows: reports/README.md."


def write_reports(profiles: dict[str, dict], report: dict, out_dir: Path) -> list[Path]:
    """One markdown file per chip, plus validation.json with every number."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for chip, profile in profiles.items():
        text = [f"# Latency profile {chip}: validation", "", SEEDLESS_NOTE, "",
                "```", format_report(profile), "```", "",
                "Held-out predictions per measurement:", ""] + _rows_table(report, chip)
        path = out_dir / f"{chip}.md"
        path.write_text("\n".join(text) + "\n")
        paths.append(path)
    if report.get("ratios", {}).get("rows"):
        path = out_dir / "ratios.md"
        path.write_text("\n".join(format_ratios(report["ratios"], report["fit_id"])) + "\n")
        paths.append(path)
    path = out_dir / "validation.json"
    path.write_text(json.dumps({"fit_id": report["fit_id"], "roofline_shared": report.get("roofline_shared"),
                                "regimes": report.get("regimes"), "chips": report["chips"], "rows": report["rows"],
                                "ratios": report.get("ratios")}, indent=1) + "\n")
    paths.append(path)
    return paths


def change_text(r: float | None, digits: int = 1) -> str:
    """A latency ratio after / before as a signed change: 0.38 -> "-62.0%"."""
    return "n/a" if r is None else f"{100 * (r - 1):+.{digits}f}%"


def format_ratios(ratios: dict, fit_id: str) -> list[str]:
    """The ratio rows' table and the decision accuracy of the roofline against FLOPs-only and params-only."""
    acc, band = ratios["decision_accuracy"], ratios["band"]
    if ratios.get("in_fit"):
        how = ("Regenerate: `pocketdiff latency fit --fit-ratios`. The roofline was fitted on these rows. *fitted*: "
               "in-sample; *held out*: refitted without that ratio row (leave-one-ratio-out), on all latency rows "
               "and the other ratio rows.")
    else:
        how = ("Regenerate: `pocketdiff latency fit`. The roofline was NOT fitted on these rows (`--fit-ratios` "
               "fits them; docs/latency.md says what that costs), so *fitted* and *held out* are the same "
               "out-of-fit prediction.")
    out = [f"# Design changes: published vs predicted (fit {fit_id})", "",
           "Each row is latency(after) / latency(before) on one chip, without the protocol overhead, written as a "
           "change. " + how + " *FLOPs-only* and *params-only*: the change in multiply-accumulates or parameters, "
           "what a cost-blind search would use.",
           "", "| before -> after | chip | input | published | fitted | held out | FLOPs-only | params-only |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
    for x in ratios["rows"]:
        out.append(f"| {x['before']} -> {x['after']} | {x['chip']} | {x['batch']}x{x['latent']}x{x['latent']} "
                   f"| {change_text(x['published'])} | {change_text(x['fitted'])} | {change_text(x['held_out'])} "
                   f"| {change_text(x['flops_only'])} | {change_text(x['params_only'])} |")
    out += ["", f"Decision accuracy (right sign and within {ratios['decision_points']:g} percentage points of the "
            f"published change), over {len(ratios['rows'])} single-change pairs:", "",
            "| method | right | share |", "|---|---:|---:|"]
    for k, a in acc.items():
        out.append(f"| {k.replace('_', '-')} | {a['right']}/{a['n']} | {_f(a['share'], True)} |")
    n = len(ratios["rows"])
    out += ["", f"{DETERMINISTIC} Chance level: with {n} pairs one pair is "
            f"{100 / max(n, 1):.0f} points of the share, and a sign test over {n} pairs that all favour one "
            f"method reaches only p = {min(1.0, 2 * 0.5 ** n):.2f} (two-sided), so no difference between the "
            f"methods above is significant; they are reported, not ranked."]
    if band["log_rms"] is not None:
        hw = band["log_half_width"]
        out += ["", f"Band of a predicted change (`latency explain --compare`): x{math.exp(-hw):.2f}"
                f" .. x{math.exp(hw):.2f} on the ratio, 80% of a normal with the "
                f"{band['from']} (log RMS {band['log_rms']:.3f}). With {band['n']} rows this is a rough width, "
                f"not a calibrated one."]
        out += ["", "Rows: " + "; ".join(f"{x['before']} -> {x['after']}: {x['source']}" for x in ratios["rows"])]
    return out
