"""The explorer's figures: plain plotly from frames and stored breakdowns (no Streamlit, no models)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CHROMIUM = "/usr/bin/chromium"  # Debian's package; kaleido renders PNGs with it (no browser download)
SVG_POINTS = 2000  # more points than this are drawn with WebGL (Scattergl)
COLORS = {"front": "#d62728", "feasible": "#1f77b4", "infeasible": "#9e9e9e", "unfinished": "#ff9f1c",
          "preset": "#2ca02c", "closest": "#9467bd", "paper": "#7f7f7f"}


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
