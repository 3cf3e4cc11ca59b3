"""Streamlit explorer: a read-only view over Optuna storage and the artifacts the evaluators wrote.

Pages: Pareto front, trial table, trial detail, compare two trials, the paper's figures (SnapGen Figure 3 and
Table 2, SNAPGEN.md sections 1-2) and study health. Launch with `pocketdiff app [--storage URL] [--port N]`
or `streamlit run app.py -- --storage URL [--study NAME]`. Trials are loaded into one pandas frame per
refresh (cached on storage, study and the refresh counter), so a 5,000-trial study stays responsive; nothing
here writes to storage (SQLite files are opened read-only, see studies/results.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from studies import results as R

DEFAULT_STORAGE = "sqlite:///runs/quick/study.db"  # `pocketdiff study run studies/quick.toml` writes it
STORAGE_ENV = "POCKETDIFF_STORAGE"
PAGES = ("Pareto front", "Trials", "Trial detail", "Compare", "Paper figures", "Study health")
CHROMIUM = "/usr/bin/chromium"  # Debian's package; kaleido renders PNGs with it (no browser download)
SVG_POINTS = 2000  # more points than this are drawn with WebGL (Scattergl)
HIDDEN_COLUMNS = ("spec_json", "curve_json", "proxy_json", "has_constraints", "datetime_complete")
COLORS = {"front": "#d62728", "feasible": "#1f77b4", "infeasible": "#9e9e9e", "unfinished": "#ff9f1c",
          "preset": "#2ca02c", "closest": "#9467bd", "paper": "#7f7f7f"}


def launch_args() -> argparse.Namespace:
    """Flags after `--` on the streamlit command line (what `pocketdiff app` passes)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)
    p.add_argument("--study", default=None)
    return p.parse_known_args(sys.argv[1:])[0]


# --- cached loaders (keyed on storage, study and the refresh counter) --------------------------------------

@st.cache_data(show_spinner=False, max_entries=32)
def cached_names(storage: str, refresh: int) -> list[str]:
    return R.study_names(storage)


@st.cache_data(show_spinner="Loading trials ...", max_entries=8)
def cached_frame(storage: str, study: str, refresh: int) -> tuple[pd.DataFrame, R.StudyInfo]:
    return R.load_frame(storage, study)


@st.cache_data(show_spinner="Counting params and MACs per stage ...", max_entries=64)
def cached_stage_costs(spec_json: str, latent: int) -> dict:
    from search_space import spec_from_dict
    return R.stage_costs(spec_from_dict(json.loads(spec_json)), latent)


@st.cache_data(show_spinner="Splitting the predicted latency by stage and op class ...", max_entries=64)
def cached_latency(spec_json: str, latent: int, device: str) -> dict:
    from search_space import spec_from_dict
    return R.latency_breakdown(spec_from_dict(json.loads(spec_json)), latent, device)


@st.cache_data(show_spinner="Describing the decoder presets ...", max_entries=8)
def cached_table2(latent: int, device: str, psnr: tuple[tuple[str, float], ...]) -> pd.DataFrame:
    return R.table2(latent, device, dict(psnr))


@st.cache_data(show_spinner="Computing parameter importances ...", max_entries=16)
def cached_importances(storage: str, study: str, refresh: int, objective: int) -> pd.DataFrame:
    import optuna

    s = R.load_study(storage, study)
    imp = optuna.importance.get_param_importances(
        s, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
        target=lambda t: t.values[objective])
    return pd.DataFrame({"parameter": list(imp), "importance": list(imp.values())})


@st.cache_data(show_spinner="Computing the hypervolume history ...", max_entries=8)
def cached_hypervolume(storage: str, study: str, refresh: int) -> pd.DataFrame:
    frame, info = cached_frame(storage, study, refresh)
    return R.hypervolume_history(frame, info)


@st.cache_resource
def cli_commands() -> set[str]:
    """`group command` pairs the installed CLI offers, so the detail page only suggests commands that exist."""
    from pocketdiff.cli import build_parser

    out = set()
    for action in build_parser()._subparsers._group_actions:  # argparse keeps subparsers here
        for group, parser in action.choices.items():
            sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            out.update(f"{group} {c}" for a in sub for c in a.choices) if sub else out.add(group)
    return out


# --- small helpers -----------------------------------------------------------------------------------------

def png_of(fig: go.Figure) -> bytes:
    """PNG through kaleido, which drives a Chrome: Debian's chromium (never a downloaded one)."""
    if not os.environ.get("BROWSER_PATH") and Path(CHROMIUM).is_file():
        os.environ["BROWSER_PATH"] = CHROMIUM
    return fig.to_image(format="png", width=1200, height=520, scale=1)


def export_buttons(fig: go.Figure, table: pd.DataFrame, name: str) -> None:
    """CSV download of the table, and a PNG of the figure rendered on request (kaleido takes seconds)."""
    c1, c2, c3 = st.columns(3)
    c1.download_button(f"CSV: {name}", table.to_csv(index=False).encode(), file_name=f"{name}.csv",
                       mime="text/csv", key=f"csv_{name}")
    if c2.button(f"Render PNG: {name}", key=f"render_{name}"):
        try:
            st.session_state[f"png_{name}"] = png_of(fig)
        except Exception as e:  # no Chrome, or kaleido failed: say so, keep the page
            st.session_state.pop(f"png_{name}", None)
            c3.warning(f"PNG export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                       f"install Debian's `chromium` or set BROWSER_PATH to a Chrome binary")
    if st.session_state.get(f"png_{name}"):
        c3.download_button(f"PNG: {name}", st.session_state[f"png_{name}"], file_name=f"{name}.png",
                           mime="image/png", key=f"png_dl_{name}")


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


def select_trial(number: int) -> None:
    st.session_state["trial_number"] = int(number)


def trial_picker(frame: pd.DataFrame, label: str, key: str, default: int | None) -> pd.Series:
    """A selectbox over trials; the choice survives page switches through `st.session_state[key]`."""
    numbers = frame["number"].astype(int).tolist()
    labels = {int(r["number"]): R.trial_label(r) for _, r in frame.iterrows()}
    current = st.session_state.get(key, default)
    index = numbers.index(current) if current in numbers else 0
    choice = st.selectbox(label, numbers, index=index, format_func=lambda n: labels[n], key=f"{key}_box")
    st.session_state[key] = choice
    return frame[frame["number"] == choice].iloc[0]


def default_trial(frame: pd.DataFrame, info: R.StudyInfo) -> int | None:
    """The first Pareto-optimal trial on the study's objectives, else the lowest-numbered trial."""
    axes = [m for m in info.metric_names if m in frame.columns]
    if axes:
        f = R.front(frame, axes, info)
        if f["pareto"].any():
            return int(f[f["pareto"]]["number"].iloc[0])
    return int(frame["number"].iloc[0]) if len(frame) else None


# --- pages --------------------------------------------------------------------------------------------------

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
    hover_metrics = list(dict.fromkeys(axes + objectives))
    groups = [("infeasible", infeasible, "x", 6), ("not finished (pruned / failed)", unfinished, "diamond-open", 7),
              ("lower rung (shorter budget)", lower, "circle-open", 6),
              ("feasible", rest, "circle", 7), ("Pareto front", on_front, "circle", 11),
              ("least violating", closest, "circle-open", 13)]
    color = {"infeasible": COLORS["infeasible"], "not finished (pruned / failed)": COLORS["unfinished"],
             "lower rung (shorter budget)": COLORS["infeasible"],
             "feasible": COLORS["feasible"], "Pareto front": COLORS["front"], "least violating": COLORS["closest"]}
    fig = go.Figure()
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
            fig.add_trace(trace(x=df[x], y=df[y], mode=mode, marker=marker, line=line, **common))
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
    if len(axes) == 2:
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


def page_trials(frame: pd.DataFrame, info: R.StudyInfo) -> None:
    st.header(f"Trials: {info.name}")
    c1, c2, c3 = st.columns([2, 1, 2])
    states = sorted(frame["state"].unique())
    chosen = c1.multiselect("states", states, default=states, key="trial_states")
    feasible_only = c2.checkbox("feasible only", key="trial_feasible")
    text = c3.text_input("search spec_id / preset / compact / reason", key="trial_search")
    view = frame[frame["state"].isin(chosen)]
    if feasible_only:
        view = view[view["feasible"]]
    if text:
        hay = pd.Series("", index=view.index)
        for c in ("spec_id", "preset", "compact", "reason"):
            if c in view.columns:
                hay = hay + " " + view[c].fillna("").astype(str)
        view = view[hay.str.contains(text, case=False, regex=False)]
    metrics = R.metric_columns(frame, info)
    first = ["number", "state", "feasible"] + metrics + ["preset", "spec_id", "compact", "reason"]
    knobs = [c for c in frame.columns if c.startswith("knob:")]
    varying = [f"knob:{k}" for k in info.knobs]
    order = [c for c in first if c in view.columns] + varying + [k for k in knobs if k not in varying]
    order += [c for c in view.columns if c not in order and c not in HIDDEN_COLUMNS]
    table = view[order]
    st.caption(f"{len(table)} of {len(frame)} trials; click a column header to sort; varying knobs first")
    st.dataframe(table, hide_index=True, key="trial_table")
    st.download_button("CSV: trials", table.to_csv(index=False).encode(), file_name=f"{info.name}-trials.csv",
                       mime="text/csv", key="csv_trials")


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


def page_detail(frame: pd.DataFrame, info: R.StudyInfo) -> None:
    st.header("Trial detail")
    row = trial_picker(frame, "trial", "trial_number", default_trial(frame, info))
    spec_id = row.get("spec_id") if isinstance(row.get("spec_id"), str) else None
    st.subheader(f"Trial {int(row['number'])} · {spec_id or 'no spec'} · {row['state']}"
                 + (f" · preset {row['preset']}" if isinstance(row.get("preset"), str) and row["preset"] else ""))
    if row.get("reason"):
        st.warning(row["reason"])
    if isinstance(row.get("compact"), str):
        st.code(row["compact"], language=None)
    metrics = R.metric_columns(frame, info)
    vals = pd.DataFrame([{"metric": m, "value": row[m]} for m in metrics if not pd.isna(row.get(m))])
    missing = [m for m in info.metric_names if pd.isna(row.get(m))]
    c1, c2 = st.columns([1, 2])
    with c1:
        st.dataframe(vals, hide_index=True)
        if missing:
            st.caption(f"not recorded for this trial: {', '.join(missing)}")
    if not row.get("spec_json"):
        st.info("this trial has no spec (it failed before a spec was sampled): nothing more to show")
        return
    try:
        spec = R.spec_of(row)
    except Exception as e:  # a spec stored by an older schema
        st.error(f"the stored spec cannot be read with this version of search_space: {e}")
        return
    latent = int(info.latent or 128)
    device = info.device or "a17pro"
    with c2:
        try:
            costs = cached_stage_costs(row["spec_json"], latent)
        except Exception as e:
            st.error(f"cost breakdown failed: {type(e).__name__}: {e}")
            costs = None
        if costs:
            table = pd.DataFrame(costs["stages"])
            table["params (M)"] = table.pop("params") / 1e6
            table["GMACs"] = table.pop("macs") / 1e9
            st.dataframe(table, hide_index=True)
            st.caption(f"at a {latent}x{latent} latent: {costs['params'] / 1e6:.2f}M params, "
                       f"{costs['gmacs']:.2f} GMACs ({costs['gmacs_no_attention']:.2f} without attention products)")
    latency = None
    try:
        latency = cached_latency(row["spec_json"], latent, device)
    except Exception as e:  # profile missing or features changed: show what we have
        st.info(f"latency breakdown unavailable ({type(e).__name__}: {e}); the trial's stored prediction: "
                f"{fmt(row.get('latency_ms'))} ms")
    if costs:
        st.plotly_chart(stage_bars(costs, latency), key="stage_bars")
        if latency:
            stored = row.get("latency_ms")
            st.caption(f"predicted {latency['total_ms']:.4g} ms on {latency['chip']} ({latency['ops']} ops, "
                       f"{latency['overhead_ms']:.3g} ms protocol overhead not in the bars); stored on the trial: "
                       f"{fmt(stored)} ms" + (f" [{fmt(row.get('latency_low_ms'))}-{fmt(row.get('latency_high_ms'))}]"
                                             if not pd.isna(row.get("latency_low_ms")) else ""))
        kinds = costs["params_per_kind"]
        ops = {k: v / 1e9 for k, v in sorted(costs["macs_per_op"].items(), key=lambda kv: -kv[1])}
        fig = make_subplots(rows=1, cols=2, subplot_titles=["params (M) per block kind", "GMACs per op"])
        fig.add_trace(go.Bar(x=list(kinds), y=[v / 1e6 for v in kinds.values()]), 1, 1)
        fig.add_trace(go.Bar(x=list(ops), y=list(ops.values())), 1, 2)
        fig.update_layout(showlegend=False, height=320, margin=dict(t=40))
        st.plotly_chart(fig, key="kind_bars")

    st.subheader("Proxy run")
    if row.get("curve_json"):
        curve = R.curve_frame(row["curve_json"])
        fig = go.Figure(go.Scatter(x=curve["step"], y=curve["val_loss"], mode="lines+markers"))
        fig.update_layout(xaxis_title="step", yaxis_title="validation loss", height=300, margin=dict(t=20))
        st.plotly_chart(fig, key="curve")
    else:
        st.info("no learning curve recorded (no quality run for this trial"
                + (f": {row['reason']}" if row.get("reason") else "") + ")")
    art = R.artifact_files(row.get("artifacts") if isinstance(row.get("artifacts"), str) else None)
    if "missing" in art:
        st.warning(art["missing"])
    else:
        for image in art["images"][:2]:
            st.image(image, caption=image, width=520)
        if not art["images"]:
            st.info(f"no sample grid in {art['path']} (files: {', '.join(art['files']) or 'none'})")
        if "record" in art:
            with st.expander("quality record (record.json)"):
                st.json(art["record"])
        if "record_error" in art:
            st.warning(f"record.json unreadable: {art['record_error']}")
    if row.get("proxy_json"):
        with st.expander("proxy mapping"):
            st.json(json.loads(row["proxy_json"]))

    st.subheader("Use this design")
    spec_text = json.dumps(json.loads(row["spec_json"]), indent=1)
    st.download_button("spec JSON", spec_text.encode(), file_name=f"{spec_id}.json", mime="application/json",
                       key="spec_download")
    available = cli_commands()
    lines = [f"# save the spec above as {spec_id}.json, then:"]
    wanted = [("describe", f"pocketdiff describe {spec_id}.json --latent {latent}"),
              ("export coreml", f"pocketdiff export coreml {spec_id}.json --latent {latent} -o {spec_id}.mlpackage"),
              ("latency predict", f"pocketdiff latency predict {spec_id}.json --latent {latent} --device {device}"),
              ("train run", f"pocketdiff train run {spec_id}.json")]
    if spec.kind == "unet":  # the quality evaluator trains UNets; the study's own data and budget when known
        try:
            key = json.loads(row["eval_key"]) if isinstance(row.get("eval_key"), str) else {}
        except json.JSONDecodeError:
            key = {}
        wanted.append(("eval quality", f"pocketdiff eval quality {spec_id}.json --data {key.get('data', 'mnist5k')} "
                                       f"--budget {key.get('budget', '60s')} --out runs/{spec_id}"))
    lines += [cmd for name, cmd in wanted if name in available]
    st.code("\n".join(lines), language="bash")


def page_compare(frame: pd.DataFrame, info: R.StudyInfo) -> None:
    st.header("Compare two trials")
    if len(frame) < 2:
        st.info("the study has fewer than two trials")
        return
    first = default_trial(frame, info)
    others = [int(n) for n in frame["number"] if int(n) != first]
    c1, c2 = st.columns(2)
    with c1:
        a = trial_picker(frame, "A", "compare_a", first)
    with c2:
        b = trial_picker(frame, "B", "compare_b", others[0] if others else first)
    for label, r in (("A", a), ("B", b)):
        st.caption(f"{label}: {r.get('compact') if isinstance(r.get('compact'), str) else 'no spec'}")
    st.subheader("Knobs that differ")
    diff = R.knob_diff(a, b)
    if diff.empty:
        st.info("same spec" if a.get("spec_json") and b.get("spec_json") else "a trial has no spec to compare")
    else:
        st.dataframe(diff, hide_index=True)
    st.subheader("Metric deltas")
    st.dataframe(R.metric_deltas(a, b, R.metric_columns(frame, info)), hide_index=True)


def fig3_figure(table: pd.DataFrame) -> go.Figure:
    """Ours per chain step (bars labelled with the change vs the parent step and the paper's published change),
    then the paper's ImageNet FIDs where it gives numbers (SNAPGEN.md section 1)."""
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


def page_paper(storage: str, names: list[str], refresh: int) -> None:
    st.header("Paper figures")
    st.subheader("Figure 3: the design chain a -> g")
    if R.FIG3_STUDY in names:
        fig3_storage = storage
        st.caption(f"study {R.FIG3_STUDY!r} in {storage}")
    else:
        st.session_state.setdefault("fig3_storage", R.FIG3_DEFAULT_STORAGE)
        fig3_storage = st.text_input(f"storage holding the {R.FIG3_STUDY!r} study", key="fig3_storage")
    table = pd.DataFrame()
    try:
        frame, info = cached_frame(fig3_storage, R.FIG3_STUDY, refresh)
        table = R.fig3_table(frame)
        if table.empty:
            st.info(f"study {R.FIG3_STUDY!r} has no trial of a fig3-* preset yet")
    except R.ResultsError as e:
        info = None
        st.info(f"{e}. Run `pocketdiff study run studies/paper-fig3.toml` to evaluate the chain.")
    if not table.empty:
        if info and info.latent and info.latent != 128:
            st.caption(f"this study measured params, MACs and latency at a {info.latent}x{info.latent} latent; "
                       f"the paper's FLOPs are at 128x128, relative changes are comparable")
        if "fd_domain" not in table.columns:
            st.caption("no proxy FD recorded (the study ran without a quality evaluator, or trials did not finish)")
        missing = [s for s in R.fig3_steps() if s not in set(table["step"])]
        if missing:
            st.caption(f"steps without a trial yet: {', '.join(missing)}")
        fig = fig3_figure(table)
        st.plotly_chart(fig, key="fig3_plot")
        st.dataframe(table, hide_index=True)
        export_buttons(fig, table, "figure3")
        st.markdown("**Does the proxy reproduce the paper's quality ordering?** Each step against the step "
                    "before it: the paper's ImageNet FIDs beside our difference (step minus parent, lower is "
                    "better) with its interval across seeds.")
        orderings = R.fig3_orderings(frame)
        st.dataframe(orderings, hide_index=True)
        counts = orderings["verdict"].value_counts()
        st.caption("; ".join(f"{v}: {n}" for v, n in counts.items())
                   + ". Seeds share data order, noise and timesteps (common random numbers), so the paired "
                     "interval is the tight one; one seed gives no verdict.")

    st.subheader("Table 2: decoders")
    device = (info.device if info and info.device else None) or "a17pro"
    psnr: dict[str, float] = {}
    sources = []
    candidates = [(storage, n) for n in names if "decoder" in n]
    if Path(R.DECODER_DEFAULT_STORAGE[len("sqlite:///"):]).is_file() and R.DECODER_DEFAULT_STORAGE != storage:
        candidates.append((R.DECODER_DEFAULT_STORAGE, R.DECODER_STUDY))
    for where, n in candidates:
        try:
            f, _ = cached_frame(where, n, refresh)
        except R.ResultsError:
            continue
        found = R.decoder_psnr(f)
        if found:
            sources.append(f"{n} ({where})")
            for k, v in found.items():
                psnr[k] = max(v, psnr.get(k, v))
    try:
        t2 = cached_table2(128, device, tuple(sorted(psnr.items())))
    except Exception as e:
        st.error(f"Table 2 could not be computed: {type(e).__name__}: {e}")
        return
    st.caption(f"ours: params and MACs from the cost evaluator (GMACs without attention products, the paper's "
               f"convention), latency predicted for {device}; PSNR "
               + (f"from study {', '.join(sources)}" if sources else "not measured by any decoder study in this "
                                                                      "storage"))
    fig = table2_figure(t2)
    st.plotly_chart(fig, key="table2_plot")
    st.dataframe(t2, hide_index=True)
    export_buttons(fig, t2, "table2")


def page_health(frame: pd.DataFrame, info: R.StudyInfo, storage: str, refresh: int) -> None:
    st.header(f"Study health: {info.name}")
    c1, c2 = st.columns(2)
    counts = R.state_counts(frame)
    with c1:
        st.subheader("Trial states")
        st.dataframe(counts, hide_index=True)
    with c2:
        fig = go.Figure(go.Bar(x=counts["state"], y=counts["trials"]))
        fig.update_layout(height=260, margin=dict(t=20))
        st.plotly_chart(fig, key="state_bars")
    st.subheader("Failure and pruning reasons")
    reasons = R.failure_reasons(frame)
    if reasons.empty:
        st.info("every trial completed")
    else:
        st.dataframe(reasons, hide_index=True)
    st.subheader("Hypervolume history")
    hv = cached_hypervolume(storage, info.name, refresh)
    if hv.empty:
        st.info("no feasible completed trial with every objective yet")
    else:
        fig = go.Figure(go.Scatter(x=hv["number"], y=hv["hypervolume"], mode="lines+markers"))
        fig.update_layout(xaxis_title="trial", yaxis_title="hypervolume (normalised objectives, ref 1.1)",
                          height=320, margin=dict(t=20))
        st.plotly_chart(fig, key="hv_plot")
    st.subheader("Parameter importances")
    objective = st.selectbox("objective", list(range(len(info.metric_names))),
                             format_func=lambda i: info.metric_names[i], key="importance_objective")
    if st.button("Compute importances (PED-ANOVA)", key="importance_button"):
        st.session_state["importance_for"] = (storage, info.name, refresh, objective)
    if st.session_state.get("importance_for") == (storage, info.name, refresh, objective):
        try:
            imp = cached_importances(storage, info.name, refresh, objective)
            st.dataframe(imp, hide_index=True)
        except Exception as e:  # too few completed trials, or no sampled parameters
            st.info(f"importances unavailable: {type(e).__name__}: {e}")


# --- layout ---------------------------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="pocketdiff explorer", layout="wide")
    args = launch_args()
    ss = st.session_state
    ss.setdefault("storage_url", args.storage)
    ss.setdefault("refresh", 0)
    ss.setdefault("page", PAGES[0])
    with st.sidebar:
        st.title("pocketdiff")
        storage = st.text_input("Optuna storage URL", key="storage_url").strip()
        if st.button("Refresh", key="refresh_button", help="reload trials from storage"):
            ss["refresh"] += 1
        page = st.radio("page", PAGES, key="page")
    refresh = ss["refresh"]
    try:
        names = cached_names(storage, refresh)
        storage_error = None
    except R.ResultsError as e:
        names, storage_error = [], str(e)
    study = None
    with st.sidebar:
        if names:
            preferred = args.study if args.study in names else ("quick" if "quick" in names else names[0])
            if ss.get("study_name") not in names:
                ss["study_name"] = preferred
            study = st.selectbox("study", names, key="study_name")
        elif storage_error:
            st.error(storage_error)
        else:
            st.warning("this storage holds no study yet")

    if page == "Paper figures":
        page_paper(storage, names, refresh)
        return
    if storage_error:
        st.error(f"{storage_error}")
        st.info("Fix the storage URL in the sidebar (e.g. sqlite:///runs/quick/study.db after "
                "`pocketdiff study run studies/quick.toml`). The Paper figures page still shows Table 2.")
        return
    if study is None:
        st.info(f"storage {storage} holds no study: run `pocketdiff study run studies/quick.toml`")
        return
    try:
        frame, info = cached_frame(storage, study, refresh)
    except R.ResultsError as e:
        st.error(str(e))
        return
    if frame.empty:
        st.info(f"study {study!r} has no trials yet (metrics: {', '.join(info.metric_names)})")
        return
    st.sidebar.caption(f"{len(frame)} trials · objectives: " + ", ".join(
        f"{m} ({d[:3]})" for m, d in zip(info.metric_names, info.directions)))
    if page == "Pareto front":
        page_pareto(frame, info)
    elif page == "Trials":
        page_trials(frame, info)
    elif page == "Trial detail":
        page_detail(frame, info)
    elif page == "Compare":
        page_compare(frame, info)
    else:
        page_health(frame, info, storage, refresh)


main()
