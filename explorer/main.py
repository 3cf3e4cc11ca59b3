"""The explorer's layout: sidebar (storage, refresh, page, study) and the page router. `app.py` runs `main()`."""
from __future__ import annotations

import streamlit as st

from studies import results as R

from .commands import study_run
from .loaders import cached_frame, cached_names, launch_args
from .pages.compare import page_compare
from .pages.detail import page_detail
from .pages.health import page_health
from .pages.paper import page_paper
from .pages.pareto import page_pareto
from .pages.trials import page_trials

PAGES = ("Pareto front", "Trials", "Trial detail", "Compare", "Paper figures", "Study health")



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
        st.info(f"Fix the storage URL in the sidebar (e.g. sqlite:///runs/quick/study.db after "
                f"`{study_run('quick')}`). The Paper figures page still shows Table 2.")
        return
    if study is None:
        st.info(f"storage {storage} holds no study: run `{study_run('quick')}`")
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
