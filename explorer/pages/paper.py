"""Paper figures page: SnapGen Figure 3 (from the paper-fig3 study) and Table 2 (decoders)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from studies import results as R

from ..commands import study_run
from ..figures import fig3_figure, table2_figure
from ..loaders import cached_frame, cached_table2
from ..widgets import export_buttons


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
        st.info(f"{e}. Run `{study_run('paper-fig3')}` to evaluate the chain.")
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
                   + f". The {R.fig3_rule(orderings)}. Seeds share data order, noise and timesteps (common "
                     "random numbers), so the differences are paired per seed; without per-seed values or with "
                     "one seed there is no verdict.")

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
    # the presets' own costs are not stored on any trial: built on the meta device, on request only, so
    # rendering the page never builds a model
    if st.button("Compute Table 2 (builds each decoder preset on the meta device, a few seconds)",
                 key="table2_button"):
        st.session_state["table2_requested"] = True
    if not st.session_state.get("table2_requested"):
        st.info("Table 2 compares the registry's decoder presets with the paper: press the button to compute it")
        return
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
