"""Compare page: two trials side by side (knob diff, metric deltas)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from studies import results as R

from ..widgets import default_trial, trial_picker


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
