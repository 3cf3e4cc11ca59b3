"""The explorer's loaders: launch flags and Streamlit-cached reads of the storage (keyed on storage, study and
the refresh counter). Everything here reads; the per-trial breakdowns come from what the evaluators stored on
each trial (studies/evaluate.py), never from building a model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import pandas as pd
import streamlit as st

from studies import results as R

DEFAULT_STORAGE = "sqlite:///runs/quick/study.db"  # `pocketdiff study run studies/quick.toml` writes it
STORAGE_ENV = "POCKETDIFF_STORAGE"


def launch_args() -> argparse.Namespace:
    """Flags after `--` on the streamlit command line (what `pocketdiff app` passes)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)
    p.add_argument("--study", default=None)
    return p.parse_known_args(sys.argv[1:])[0]


@st.cache_data(show_spinner=False, max_entries=32)
def cached_names(storage: str, refresh: int) -> list[str]:
    return R.study_names(storage)


@st.cache_data(show_spinner="Loading trials ...", max_entries=8)
def cached_frame(storage: str, study: str, refresh: int) -> tuple[pd.DataFrame, R.StudyInfo]:
    return R.load_frame(storage, study)


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


def stored_breakdown(row: pd.Series, column: str) -> dict | None:
    """A breakdown the evaluators stored on the trial (`stage_costs`, `latency_breakdown`), or None when the
    trial was evaluated before they were stored (or failed before the cheap checks)."""
    text = row.get(column)
    return json.loads(text) if isinstance(text, str) and text else None
