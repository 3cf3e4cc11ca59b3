"""Trial detail page: stored metrics, per-stage costs and latency split (stored at evaluation), the proxy run, commands."""
from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
import streamlit as st

from studies import results as R
from studies.halving import LEARNED_FRACTION_GATE
from training.baselines import CLASS_MEAN, CONSTANT, LEARNED_FRACTION, LINEAR

from ..commands import design_commands
from ..figures import add_reference_lines, below_gate, fmt, frame_regimes, stage_bars
from ..loaders import stored_breakdown
from ..widgets import default_trial, trial_picker


def regime_caption(frame: pd.DataFrame, row: pd.Series) -> None:
    """The trial's val loss against its data regime's baselines, its learned fraction, and its rung's gate."""
    if pd.isna(row.get(CONSTANT)) or pd.isna(row.get(LINEAR)):
        return
    text = (f"baselines of this data regime (val loss without learning): constant {fmt(row[CONSTANT])}, class mean "
            f"{fmt(row.get(CLASS_MEAN))}, linear-Gaussian {fmt(row[LINEAR])}")
    if not pd.isna(row.get(LEARNED_FRACTION)):
        text += f"; learned fraction {fmt(row[LEARNED_FRACTION], 3)} (0 = constant, 1 = linear-Gaussian)"
    st.caption(text)
    if bool(below_gate(frame[frame["number"] == row["number"]], frame_regimes(frame)).any()):
        st.warning(f"rung {int(row['rung'])} is below the regime gate (its candidates' mean learned fraction < "
                   f"{LEARNED_FRACTION_GATE:g}): its quality differences are initialisation noise")


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
        regime_caption(frame, row)
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
    costs = stored_breakdown(row, "stage_costs_json")
    latency = stored_breakdown(row, "latency_breakdown_json")
    with c2:
        if costs:
            table = pd.DataFrame(costs["stages"])
            table["params (M)"] = table.pop("params") / 1e6
            table["GMACs"] = table.pop("macs") / 1e9
            st.dataframe(table, hide_index=True)
            st.caption(f"at a {latent}x{latent} latent: {costs['params'] / 1e6:.2f}M params, "
                       f"{costs['gmacs']:.2f} GMACs ({costs['gmacs_no_attention']:.2f} without attention products)")
        elif row.get("state") != "FAIL":
            st.info(f"no per-stage breakdown stored on this trial (evaluated before breakdowns were stored); "
                    f"`pocketdiff describe {spec_id}.json --latent {latent}` computes it")
    if latency is None and not pd.isna(row.get("latency_ms")):
        st.info(f"no latency split stored on this trial; its stored prediction: {fmt(row.get('latency_ms'))} ms")
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
        add_reference_lines(fig, frame[frame["number"] == row["number"]], {"y": "val_loss"})
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
    lines = [f"# save the spec above as {spec_id}.json, then:"]
    lines += design_commands(spec_id, spec.kind, latent, device,
                             row["eval_key"] if isinstance(row.get("eval_key"), str) else None)
    st.code("\n".join(lines), language="bash")
