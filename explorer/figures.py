"""The explorer's figures: plain plotly from frames and stored breakdowns (no Streamlit, no models), and what they
mark: seed intervals as error bars, the data regime's baselines as reference lines, rungs below the regime gate."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from studies.halving import LEARNED_FRACTION_GATE, Regime, regime
from training.baselines import CONSTANT, LEARNED_FRACTION, LINEAR

CHROMIUM = "/usr/bin/chromium"  # Debian's package; kaleido renders PNGs with it (no browser download)
SVG_POINTS = 2000  # more points than this are drawn with WebGL (Scattergl)
COLORS = {"front": "#d62728", "feasible": "#1f77b4", "infeasible": "#9e9e9e", "unfinished": "#ff9f1c",
          "preset": "#2ca02c", "closest": "#9467bd", "paper": "#7f7f7f", "below_gate": "#000000",
          "baseline": "#8c564b"}
# the regime's reference lines on a val_loss axis, and on a learned_fraction axis (where they sit at 0 and 1)
REFERENCE_LINES = ((CONSTANT, "constant predictor", "dash"), (LINEAR, "linear-Gaussian optimum", "dot"))


def frame_regimes(frame: pd.DataFrame) -> dict[int, Regime]:
    """Each rung's regime (studies/halving.py) from the frame: the mean learned fraction of its COMPLETE
    candidates (a re-proposed spec counted once), as the study's promotions computed it."""
    if LEARNED_FRACTION not in frame.columns or "rung" not in frame.columns:
        return {}
    done = frame[frame["state"] == "COMPLETE"].sort_values("number")
    if "candidate" in done.columns:
        done = done.drop_duplicates(["rung", "candidate"])
    return {int(r): regime(group[LEARNED_FRACTION].tolist()) for r, group in done.groupby("rung")}


def below_gate(df: pd.DataFrame, regimes: dict[int, Regime]) -> pd.Series:
    """Rows of a rung below the regime gate (its quality objectives rank noise)."""
    gated = {r for r, g in regimes.items() if not g.quality}
    if not gated or "rung" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["rung"].astype(int).isin(gated)


def error_bars(df: pd.DataFrame, metric: str) -> dict | None:
    """A plotly error_x / error_y from the seed interval `<metric>_ci_low/_ci_high`; None when no row has one."""
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in df.columns or high not in df.columns or df[[low, high]].isna().all().all():
        return None
    value = df[metric].astype(float)
    return dict(type="data", symmetric=False, array=(df[high].astype(float) - value).fillna(0).tolist(),
                arrayminus=(value - df[low].astype(float)).fillna(0).tolist(), thickness=1, width=3)


def add_reference_lines(fig: go.Figure, frame: pd.DataFrame, axes: dict[str, str]) -> list[str]:
    """On each axis ("x" or "y") that shows val_loss, a line at the regime's constant predictor and linear-Gaussian
    optimum; on a learned_fraction axis, lines at 0 (the constant), the gate and 1 (the linear-Gaussian). Returns
    what was drawn, in words."""
    drawn = []
    for axis, metric in axes.items():
        lines = []
        if metric == "val_loss":
            for column, name, dash in REFERENCE_LINES:
                values = frame[column].dropna().unique() if column in frame.columns else []
                lines += [(float(v), f"{name} {float(v):.4g}", dash) for v in values]
        elif metric == LEARNED_FRACTION:
            lines = [(0.0, "constant predictor (0)", "dash"), (1.0, "linear-Gaussian optimum (1)", "dot"),
                     (LEARNED_FRACTION_GATE, f"regime gate ({LEARNED_FRACTION_GATE:g})", "dashdot")]
        for value, text, dash in lines:
            line = dict(color=COLORS["baseline"], dash=dash, width=1)
            if axis == "y":
                fig.add_hline(y=value, line=line, annotation_text=text, annotation_position="top right")
            else:
                fig.add_vline(x=value, line=line, annotation_text=text, annotation_position="top left")
            drawn.append(text)
    return drawn


def png_of(fig: go.Figure) -> bytes:
    """PNG through kaleido, which drives a Chrome: Debian's chromium (never a downloaded one)."""
    if not os.environ.get("BROWSER_PATH") and Path(CHROMIUM).is_file():
        os.environ["BROWSER_PATH"] = CHROMIUM
    return fig.to_image(format="png", width=1200, height=520, scale=1)


def fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def hover_text(df: pd.DataFrame, metrics: list[str]) -> list[str]:
    lines = []
    for _, r in df.iterrows():
        head = f"<b>#{int(r['number'])}</b> {r.get('preset') or ''} {r.get('spec_id', '')}"
        vals = "<br>".join(f"{m} = {fmt(r.get(m))}" for m in metrics if m in df.columns)
        compact = str(r.get("compact") or "")
        compact = "<br>".join(compact[i:i + 70] for i in range(0, len(compact), 70))
        lines.append(f"{head}<br>{vals}<br>{compact}")
    return lines


def stage_bars(costs: dict, latency: dict | None) -> go.Figure:
    stages = [r["stage"] for r in costs["stages"]]
    panels = ["params (M) per stage", "GMACs per stage"] + (
        ["predicted ms per stage", "predicted ms per op class"] if latency else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels)
    fig.add_trace(go.Bar(x=stages, y=[r["params"] / 1e6 for r in costs["stages"]], name="params"), 1, 1)
    fig.add_trace(go.Bar(x=stages, y=[r["macs"] / 1e9 for r in costs["stages"]], name="GMACs"), 1, 2)
    if latency:
        fig.add_trace(go.Bar(x=stages, y=[latency["per_stage_ms"].get(s, 0.0) for s in stages], name="ms"), 1, 3)
        cls = latency["per_class_ms"]
        fig.add_trace(go.Bar(x=list(cls), y=list(cls.values()), name="ms by op class"), 1, 4)
    fig.update_layout(showlegend=False, height=360, margin=dict(t=40))
    return fig


def fig3_figure(table: pd.DataFrame) -> go.Figure:
    """Ours per chain step (bars labelled with the change vs the parent step and the paper's published change),
    then the paper's ImageNet FIDs where it gives numbers (docs/paper.md section 1)."""
    panels = [(m, t) for m, t in (("params_m", "params (M)"), ("gmacs", "GMACs"), ("latency_ms", "predicted ms"),
                                  ("fd_domain", "proxy FD (domain)")) if m in table.columns]
    fids = pd.to_numeric(table["paper ImageNet FID"], errors="coerce")
    titles = [t for _, t in panels] + ["paper ImageNet FID"]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    paper_col = {"params_m": "paper params change", "gmacs": "paper FLOPs change"}
    delta_col = {"params_m": "params change (%)", "gmacs": "GMACs change (%)", "latency_ms": "latency change (%)",
                 "fd_domain": "FD change (%)"}
    for i, (m, _) in enumerate(panels, start=1):
        text = []
        for _, r in table.iterrows():
            ours = r.get(delta_col[m])
            t = "" if pd.isna(ours) else f"{ours:+.0f}%"
            if m in paper_col and r.get(paper_col[m]) not in ("", "-", None):
                t += f"<br>({r[paper_col[m]].split(' ')[0]})"
            text.append(t)
        fig.add_trace(go.Bar(x=table["label"], y=table[m], text=text, textposition="outside", textfont_size=11,
                             marker_color=COLORS["feasible"], cliponaxis=False), 1, i)
        fig.update_yaxes(range=[0, float(table[m].max()) * 1.3], row=1, col=i)
    fig.add_trace(go.Bar(x=table["label"], y=fids, text=[f"{v:.2f}" if not pd.isna(v) else "" for v in fids],
                         textposition="outside", marker_color=COLORS["paper"], cliponaxis=False), 1, len(titles))
    fig.update_yaxes(range=[0, 4.5], row=1, col=len(titles))
    fig.update_layout(showlegend=False, height=520, margin=dict(t=80, b=40), uniformtext=dict(minsize=10, mode="show"),
                      title="SnapGen Figure 3 chain, ours: bars labelled with our change vs the parent step "
                            "and (the paper's change)")
    return fig


def table2_figure(table: pd.DataFrame) -> go.Figure:
    """Ours (blue) beside the paper (grey) per decoder: params, GMACs (log), predicted latency, PSNR."""
    panels = [("params (M)", "params (M)", "paper params (M)"),
              ("GMACs, no attention products (log)", "GMACs (no attention products)", "paper GFLOPs"),
              ("predicted ms", "predicted latency (ms)", None), ("PSNR (dB)", "PSNR (ours)", "paper PSNR")]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels])
    for i, (_, ours, paper) in enumerate(panels, start=1):
        fig.add_trace(go.Bar(x=table["decoder"], y=table[ours], name="ours", marker_color=COLORS["feasible"],
                             showlegend=i == 1), 1, i)
        if paper:
            fig.add_trace(go.Bar(x=table["decoder"], y=table[paper], name="paper", marker_color=COLORS["paper"],
                                 showlegend=i == 1), 1, i)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(barmode="group", height=420, margin=dict(t=80),
                      title="SnapGen Table 2: decoders at a 128x128 latent (1024 px), ours beside the paper")
    return fig
