"""Pareto front page: any two objectives (or three in 3D), feasibility, presets, a latency budget; seed intervals as
error bars, the regime's baselines as reference lines, points of rungs below the regime gate ringed."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from studies import results as R
from studies.halving import LEARNED_FRACTION_GATE
from training.baselines import LEARNED_FRACTION

from ..figures import COLORS, SVG_POINTS, add_reference_lines, below_gate, error_bars, frame_regimes, hover_text


def on_pareto_select() -> None:
    """A clicked point opens its trial on the detail page."""
    state = st.session_state.get("pareto_plot")
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    for p in points:
        data = p.get("customdata")
        if data is not None:
            number = data[0] if isinstance(data, (list, tuple)) else data
            st.session_state["trial_number"] = int(number)
            st.session_state.pop("trial_number_box", None)  # the picker re-reads trial_number
            st.session_state["page"] = "Trial detail"
            return


def page_pareto(frame: pd.DataFrame, info: R.StudyInfo) -> None:
    st.header(f"Pareto front: {info.name}")
    metrics = R.metric_columns(frame, info)
    if len(metrics) < 2:
        st.warning(f"this study records fewer than two numeric metrics ({', '.join(metrics) or 'none'}); "
                   f"nothing to plot yet")
        return
    objectives = [m for m in info.metric_names if m in metrics]
    x_default = "latency_ms" if "latency_ms" in objectives else (objectives + metrics)[min(1, len(objectives))]
    y_default = next((m for m in objectives if m != x_default), next(m for m in metrics if m != x_default))
    c1, c2, c3 = st.columns(3)
    x = c1.selectbox("x axis", metrics, index=metrics.index(x_default), key="axis_x")
    y = c2.selectbox("y axis", metrics, index=metrics.index(y_default), key="axis_y")
    z = c3.selectbox("z axis (3D)", ["(none)"] + metrics, index=0, key="axis_z")
    axes = [x, y] + ([z] if z != "(none)" else [])
    if len(set(axes)) < len(axes):
        st.warning("pick different metrics for the axes")
        return

    view = frame
    if "latency_ms" in frame.columns and frame["latency_ms"].notna().any():
        lo, hi = float(frame["latency_ms"].min()), float(frame["latency_ms"].max())
        if hi > lo:
            budget = st.slider("latency budget (ms, predicted on the target device)", lo, hi, hi,
                               key="latency_budget")
            view = frame[(frame["latency_ms"] <= budget) | frame["latency_ms"].isna()]
            st.caption(f"{len(view)} of {len(frame)} trials at or under {budget:.4g} ms")
    plotted = view.dropna(subset=axes)
    missing = len(view) - len(plotted)
    if missing:
        lacking = [a for a in axes if view[a].isna().any()]
        st.caption(f"{missing} trial(s) have no value for {', '.join(lacking)} and are not plotted "
                   f"(infeasible candidates are not trained; failed trials stop early)")
    if plotted.empty:
        st.warning(f"no trial has values for {', '.join(axes)}")
        return

    feas = R.front(plotted, axes, info)
    on_front = feas[feas["pareto"]]
    if len(axes) == 2 and not on_front.empty:
        on_front = on_front.sort_values(x)
    rest = feas[~feas["pareto"]]
    infeasible = plotted[~plotted["feasible"]]
    unfinished = plotted[plotted["feasible"] & (plotted["state"] != "COMPLETE")]
    # successive halving: complete trials of lower rungs were scored on shorter budgets; shown, never on the front
    lower = plotted[plotted["feasible"] & (plotted["state"] == "COMPLETE") & ~plotted["number"].isin(feas["number"])]
    st.caption(R.front_caption(frame, info))
    closest = pd.DataFrame()
    if feas.empty:
        closest = R.least_violating(plotted)
        st.warning("no trial is feasible on these axes: showing the "
                   f"{len(closest)} least-violating trial(s) (smallest summed constraint violation) in purple"
                   if not closest.empty else "no trial is feasible and none records constraints")
    hover_metrics = list(dict.fromkeys(axes + objectives + ([LEARNED_FRACTION] if LEARNED_FRACTION in frame.columns
                                                            else [])))
    regimes = frame_regimes(frame)
    gated = plotted[below_gate(plotted, regimes) & (plotted["state"] == "COMPLETE")]
    groups = [("infeasible", infeasible, "x", 6), ("not finished (pruned / failed)", unfinished, "diamond-open", 7),
              ("lower rung (shorter budget)", lower, "circle-open", 6),
              ("feasible", rest, "circle", 7), ("Pareto front", on_front, "circle", 11),
              ("least violating", closest, "circle-open", 13)]
    color = {"infeasible": COLORS["infeasible"], "not finished (pruned / failed)": COLORS["unfinished"],
             "lower rung (shorter budget)": COLORS["infeasible"],
             "feasible": COLORS["feasible"], "Pareto front": COLORS["front"], "least violating": COLORS["closest"]}
    fig = go.Figure()
    with_bars = 0
    for name, df, symbol, size in groups:
        if df.empty:
            continue
        common = dict(name=f"{name} ({len(df)})", customdata=df[["number"]].to_numpy().tolist(),
                      hovertext=hover_text(df, hover_metrics), hoverinfo="text")
        marker = dict(color=color[name], symbol=symbol, size=size if len(axes) == 2 else max(3, size - 3))
        if len(axes) == 2:
            mode = "lines+markers" if name == "Pareto front" else "markers"
            line = dict(shape="hv" if info.direction(y) == "minimize" else "vh", color=color[name])
            # SVG up to a few thousand points (crisp, testable); WebGL beyond that to stay responsive
            trace = go.Scatter if len(plotted) <= SVG_POINTS else go.Scattergl
            bars = {f"error_{a}": b for a, m in (("x", x), ("y", y)) if (b := error_bars(df, m)) is not None}
            with_bars += bool(bars)
            fig.add_trace(trace(x=df[x], y=df[y], mode=mode, marker=marker, line=line, **bars, **common))
        else:
            fig.add_trace(go.Scatter3d(x=df[x], y=df[y], z=df[z], mode="markers", marker=marker, **common))
    presets = plotted[plotted.get("preset", pd.Series("", index=plotted.index)).fillna("") != ""] \
        if "preset" in plotted.columns else plotted.iloc[0:0]
    if not presets.empty:
        presets = presets.drop_duplicates("preset", keep="last")
        common = dict(name=f"presets ({len(presets)})", text=presets["preset"], customdata=presets[["number"]]
                      .to_numpy().tolist(), hovertext=hover_text(presets, hover_metrics), hoverinfo="text",
                      mode="markers+text", textposition="top center",
                      marker=dict(symbol="star", size=14, color=COLORS["preset"], line=dict(width=1, color="black")))
        if len(axes) == 2:
            fig.add_trace(go.Scatter(x=presets[x], y=presets[y], **common))
        else:
            fig.add_trace(go.Scatter3d(x=presets[x], y=presets[y], z=presets[z], **common))
    if not gated.empty:  # a ring around each point whose rung learned too little for its quality to rank designs
        common = dict(name=f"below the regime gate ({len(gated)})", customdata=gated[["number"]].to_numpy().tolist(),
                      hovertext=hover_text(gated, hover_metrics), hoverinfo="text", mode="markers",
                      marker=dict(symbol="circle-open", size=17, color=COLORS["below_gate"], line=dict(width=2)))
        if len(axes) == 2:
            fig.add_trace(go.Scatter(x=gated[x], y=gated[y], **common))
        else:
            fig.add_trace(go.Scatter3d(x=gated[x], y=gated[y], z=gated[z], **common))
    for r, g in sorted(regimes.items()):
        if not g.quality:
            budget = f" ({info.rungs[r]})" if r < len(info.rungs) else ""
            then = ("promotions from it ranked by the cheap objectives" if r < len(info.rungs) - 1
                    else "read its points by the cheap objectives")
            st.caption(f"rung {r}{budget}: mean learned fraction {g.learned:.2f} over {g.n} candidate(s), below "
                       f"the regime gate {LEARNED_FRACTION_GATE:g}: not a quality rung (its quality differences are "
                       f"initialisation noise; {then}). Its points are ringed in black.")
    if len(axes) == 2:
        drawn = add_reference_lines(fig, frame, {"x": x, "y": y})
        if drawn:
            st.caption("reference lines: " + ", ".join(drawn) + " (the data regime's baselines, docs/quality.md)")
        if with_bars:
            st.caption("error bars: each point's 95% interval over its seeds")
        fig.update_layout(xaxis_title=x, yaxis_title=y, height=560, legend=dict(orientation="h", y=-0.15),
                          margin=dict(t=30))
        st.plotly_chart(fig, key="pareto_plot", on_select=on_pareto_select, selection_mode="points")
        st.caption(f"front over {x} ({info.direction(x)}) and {y} ({info.direction(y)}); "
                   "click a point to open its trial")
    else:
        fig.update_layout(scene=dict(xaxis_title=x, yaxis_title=y, zaxis_title=z), height=650,
                          margin=dict(t=30))
        st.plotly_chart(fig, key="pareto_plot_3d")
        st.caption("3D front over " + ", ".join(f"{a} ({info.direction(a)})" for a in axes))
    intervals = [f"{m}{b}" for m in hover_metrics for b in ("_ci_low", "_ci_high") if f"{m}{b}" in on_front.columns]
    cols = ["number", "preset", "spec_id", "rung", "budget"] + hover_metrics + intervals + ["compact"]
    table = on_front[[c for c in cols if c in on_front.columns]]
    st.subheader(f"Front: {len(table)} trial(s)")
    st.dataframe(table, hide_index=True)
    st.download_button("CSV: front", table.to_csv(index=False).encode(), file_name=f"{info.name}-front.csv",
                       mime="text/csv", key="csv_front")
