"""Small Streamlit widgets the pages share: export buttons and the trial picker."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from studies import results as R

from .figures import png_of


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
