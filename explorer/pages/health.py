"""Study health page: trial states, failure reasons, hypervolume history, parameter importances."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from studies import results as R

from ..loaders import cached_hypervolume, cached_importances


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
