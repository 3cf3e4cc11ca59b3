"""Trial table page: filters, varying knobs first, CSV download."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from studies import results as R

from ..figures import below_gate, frame_regimes

HIDDEN_COLUMNS = ("spec_json", "curve_json", "proxy_json", "has_constraints", "datetime_complete",
                  "stage_costs_json", "latency_breakdown_json")


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
    regimes = frame_regimes(frame)
    if any(not g.quality for g in regimes.values()):  # the rung's quality ranks noise (studies/halving.py)
        view = view.assign(below_gate=below_gate(view, regimes))
    metrics = R.metric_columns(frame, info)
    first = ["number", "state", "feasible", "below_gate"] + metrics + ["preset", "spec_id", "compact", "reason"]
    knobs = [c for c in frame.columns if c.startswith("knob:")]
    varying = [f"knob:{k}" for k in info.knobs]
    order = [c for c in first if c in view.columns] + varying + [k for k in knobs if k not in varying]
    order += [c for c in view.columns if c not in order and c not in HIDDEN_COLUMNS]
    table = view[order]
    st.caption(f"{len(table)} of {len(frame)} trials; click a column header to sort; varying knobs first")
    st.dataframe(table, hide_index=True, key="trial_table")
    st.download_button("CSV: trials", table.to_csv(index=False).encode(), file_name=f"{info.name}-trials.csv",
                       mime="text/csv", key="csv_trials")
