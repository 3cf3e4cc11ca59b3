"""Read-only views of a study for the explorer (app.py): trials as one pandas frame, Pareto fronts (from the
top rung of a successive-halving study), hypervolume history, and the paper's Figure 3 (with the proxy's verdict on each published quality ordering) / Table 2.

Nothing here writes to Optuna storage: SQLite files are opened with SQLite's read-only URI mode, so even a
bug cannot change a study, and a missing file is reported instead of created. Trials are read through their
record (studies/record.py); a frame's columns are the record's attribute names. Paper numbers are quoted in
studies/paper.py (docs/paper.md section 1, Figure 3; section 2, Table 2).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluators.stats import LEVEL, paired_verdicts
from search_space.errors import UserError
from training.baselines import BASELINES, LEARNED_FRACTION

from . import record as R
from .paper import (FIG3_MARGINS, FIG3_PAPER, FIG3_PAPER_ORDER, FIG3_PARENT, TABLE2_PAPER,  # noqa: F401
                    fig3_pair_possible)
from .overlay import current_trials
from .queries import front_rung
from .record import TrialRecord

# Text attributes, kept out of the numeric metric columns: the record's, and the quality evaluators' own.
TEXT_ATTRS = (*R.TEXT, "samples", "record", "status")
# Numeric columns that describe the run, not the design (kept in the table, left off the axes): the frame's own,
# the record's, and what the quality evaluator records about its run.
BOOKKEEPING = {"number", "violation", "duration_s", *R.NUMERIC_BOOKKEEPING, "seed", "steps", "num_samples",
               "sample_steps", "cfg_scale", "train_images", "train_images_per_s", "train_seconds", "train_share",
               "params_proxy", "domain_classifier_val_accuracy", "train_flops_per_step",
               "train_step_seconds", "train_flops_per_s", "matmul_peak_flops_per_s", "roofline_ratio",
               *BASELINES}  # the regime's baselines: one value per study, reference lines (explorer), not axes
# Metrics where larger is better when a metric is plotted that is not one of the study's objectives.
MAXIMIZE_METRICS = ("psnr", "precision", "recall", "precision_domain", "recall_domain", LEARNED_FRACTION)

IMAGE_NAMES = ("samples.png", "reconstructions.png")
FIG3_STUDY = "paper-fig3"
FIG3_DEFAULT_STORAGE = "sqlite:///runs/paper-fig3/study.db"
DECODER_STUDY, DECODER_DEFAULT_STORAGE = "decoder", "sqlite:///runs/decoder/study.db"  # studies/decoder.toml


class ResultsError(UserError):
    """The storage or study cannot be read; the message says what is missing."""


# --- storage ---------------------------------------------------------------------------------------------

def readonly_url(url: str) -> str:
    """The same storage, opened so that nothing can be written (studies/storage.py: strict URL, SQLite
    read-only URI mode; a missing SQLite file is a ResultsError, since opening it normally would create it)."""
    from .storage import StorageError
    from .storage import readonly_url as _readonly_url
    try:
        return _readonly_url(url)
    except StorageError as e:
        raise ResultsError(str(e)) from None


def open_storage(url: str):
    """A storage the explorer reads: never creates tables or migrates (a database without Optuna's tables is a
    ResultsError naming it)."""
    from .storage import StorageError, open_readonly
    try:
        return open_readonly(url)
    except StorageError as e:
        raise ResultsError(str(e)) from None


def study_names(url: str) -> list[str]:
    import optuna

    storage = open_storage(url)
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    except Exception as e:
        raise ResultsError(f"cannot list the studies in {url}: {str(e).splitlines()[0]}") from None


def load_study(url: str, name: str):
    import optuna

    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ResultsError(f"storage {url} has no study {name!r}") from None


# --- trials as a frame -------------------------------------------------------------------------------------

@dataclass
class StudyInfo:
    name: str
    storage: str
    metric_names: list[str]
    directions: list[str]  # "minimize" / "maximize", per metric name
    constraint_names: list[str]
    latent: int | None
    device: str | None
    study_file: str | None
    knobs: list[str] = field(default_factory=list)  # flattened spec keys that vary between trials
    quality_metrics: list[str] = field(default_factory=list)
    rungs: list[str] = field(default_factory=list)  # successive-halving budgets, lowest first ([] = one budget)

    def direction(self, metric: str) -> str:
        if metric in self.metric_names:
            return self.directions[self.metric_names.index(metric)]
        return "maximize" if metric in MAXIMIZE_METRICS else "minimize"


def flatten_spec(spec: dict) -> dict[str, Any]:
    """{"stages": [{"channels": 256}]} -> {"stages.0.channels": 256} (search_space/paths.py: the knob paths of
    study files and --set); lists of values become JSON text, one table cell each."""
    from search_space import paths
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in paths.flatten(spec).items()}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def trials_frame(study) -> tuple[pd.DataFrame, StudyInfo]:
    """One row per trial: state, objectives, feasibility, every numeric metric, every knob of the spec."""
    from optuna.trial import TrialState

    from .queries import metric_names

    attrs = study.user_attrs
    names = metric_names(study)
    directions = [d.name.lower() for d in study.directions]
    definition = attrs.get(R.DEFINITION) or {}
    trials = current_trials(study)  # latency as the current profile predicts it, once a study is re-ranked
    rows, knob_rows, constraint_names = [], [], []
    for t in trials:
        rec = TrialRecord.of(t)
        a = rec.attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for k in TEXT_ATTRS:
            if k in a and not isinstance(a[k], (dict, list)):
                row[k] = str(a[k])
        for k, v in a.items():
            if _is_number(v) and k not in TEXT_ATTRS:
                row[k] = float(v)
        if t.state == TrialState.COMPLETE and t.values is not None:
            for n, v in zip(names, t.values):
                row[n] = float(v)
        constraints = t.constraints or {}
        if isinstance(constraints, dict):
            items = list(constraints.items())
        else:  # older optuna: a plain sequence
            items = [(f"constraint_{i}", v) for i, v in enumerate(constraints)]
        for cname, v in items:
            row[f"violation:{cname}"] = float(v)
            if cname not in constraint_names:
                constraint_names.append(cname)
        row["violation"] = float(sum(max(0.0, float(v)) for _, v in items)) if items else 0.0
        row["has_constraints"] = bool(items)
        row["reason"] = rec.reason
        row["duration_s"] = ((t.datetime_complete - t.datetime_start).total_seconds()
                             if t.datetime_complete and t.datetime_start else np.nan)
        row["datetime_complete"] = t.datetime_complete
        spec = rec.spec
        row["spec_json"] = json.dumps(spec, sort_keys=True) if spec is not None else ""
        row["curve_json"] = json.dumps(rec.curve) if rec.curve else ""
        if isinstance(a.get("proxy"), dict):
            row["proxy_json"] = json.dumps(a["proxy"], sort_keys=True)
        for attr in ("stage_costs", "latency_breakdown"):  # stored by the cheap evaluators at evaluation
            if isinstance(a.get(attr), dict):
                row[f"{attr}_json"] = json.dumps(a[attr])
        if isinstance(a.get("per_seed"), dict):  # per-seed metric values, for paired differences
            row["per_seed_json"] = json.dumps(a["per_seed"], sort_keys=True)
        row["rung"] = float(rec.rung)
        rows.append(row)
        knob_rows.append(flatten_spec(spec) if spec is not None else {})
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["number", "state", "violation", "reason", "spec_json", "curve_json"])
    knobs = pd.DataFrame(knob_rows, index=frame.index)
    varying = [c for c in knobs.columns if knobs[c].astype(str).nunique(dropna=False) > 1]
    knobs = knobs.add_prefix("knob:")
    frame = pd.concat([frame, knobs], axis=1)
    # Feasible: every constraint <= 0 and not pruned as infeasible before training. In a study with
    # constraints, a trial that recorded none (it failed before the cheap checks) is not known to be feasible.
    if not frame.empty:
        pruned_infeasible = frame.get("infeasible", pd.Series("", index=frame.index)).fillna("") != ""
        known = frame["has_constraints"] | (not constraint_names)
        frame["feasible"] = known & (frame["violation"] <= 0) & ~pruned_infeasible
    else:
        frame["feasible"] = pd.Series(dtype=bool)
    from .config import QUALITY_METRICS
    info = StudyInfo(
        name=study.study_name, storage="", metric_names=names, directions=directions,
        constraint_names=constraint_names, latent=definition.get("latent"), device=definition.get("device"),
        study_file=attrs.get(R.STUDY_FILE), knobs=varying,
        quality_metrics=[m for m in frame.columns if m in QUALITY_METRICS or m.endswith("_domain")],
        rungs=list(attrs.get(R.RUNGS) or []))
    return frame, info


def load_frame(url: str, name: str) -> tuple[pd.DataFrame, StudyInfo]:
    study = load_study(url, name)
    frame, info = trials_frame(study)
    info.storage = url
    return frame, info


def metric_columns(frame: pd.DataFrame, info: StudyInfo) -> list[str]:
    """Objectives first, then every other numeric metric a trial recorded."""
    others = [c for c in frame.columns if c not in BOOKKEEPING and not c.startswith("seconds_")
              and c not in info.metric_names
              and not c.startswith(("violation:", "knob:")) and pd.api.types.is_numeric_dtype(frame[c])
              and not pd.api.types.is_bool_dtype(frame[c])]
    return [m for m in info.metric_names if m in frame.columns] + sorted(others)


def trial_label(row: pd.Series | dict) -> str:
    name = row.get("preset") if isinstance(row.get("preset"), str) and row.get("preset") else ""
    sid = row.get("spec_id") if isinstance(row.get("spec_id"), str) else "no spec"
    return f"#{int(row['number'])} {row['state'].lower()} {name + ' ' if name else ''}{sid}"


# --- Pareto fronts and hypervolume --------------------------------------------------------------------------

def _as_minimized(values: np.ndarray, directions: list[str]) -> np.ndarray:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return values * signs


def pareto_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """True for the rows no other row dominates (ties: duplicates are all kept). O(n^2 / chunk) in numpy."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=bool)
    v = _as_minimized(np.asarray(values, dtype=float), directions)
    mask = np.ones(n, dtype=bool)
    chunk = max(1, 4_000_000 // max(n, 1))
    for start in range(0, n, chunk):
        block = v[start:start + chunk]  # (b, d) against all (n, d)
        le = (v[None, :, :] <= block[:, None, :]).all(-1)
        lt = (v[None, :, :] < block[:, None, :]).any(-1)
        mask[start:start + chunk] = ~(le & lt).any(1)
    return mask


def frame_front_rung(frame: pd.DataFrame) -> int | None:
    """The rung a frame's front is built from: studies/queries.py's `front_rung` over the frame's COMPLETE rows
    (single-budget studies: rung 0; None when nothing completed)."""
    done = frame[frame["state"] == "COMPLETE"] if "state" in frame.columns else frame.iloc[0:0]
    return front_rung(int(r) for r in (done["rung"] if "rung" in done.columns else [0] * len(done)))


def front_caption(frame: pd.DataFrame, info: StudyInfo) -> str:
    """Which rung the front comes from, in words."""
    if len(info.rungs) < 2:
        return "front over every finished trial (one training budget)"
    r, top = frame_front_rung(frame), len(info.rungs) - 1
    if r is None:
        return f"no trial finished yet; the front will come from the top rung ({info.rungs[top]})"
    if r >= top:
        return (f"front from the top rung only ({info.rungs[top]}); trials of lower rungs "
                f"({', '.join(info.rungs[:top])}) were scored on shorter budgets and are shown apart")
    return f"the top rung ({info.rungs[top]}) has no finished trial yet: provisional front from rung {r} ({info.rungs[r]})"


def front(frame: pd.DataFrame, axes: list[str], info: StudyInfo) -> pd.DataFrame:
    """Feasible trials of the front rung with every axis value, marked `pareto` on those axes (the front of
    the plot). A lower rung's quality is over a shorter budget, so it never competes with the top rung."""
    have = frame.dropna(subset=axes) if all(a in frame.columns for a in axes) else frame.iloc[0:0]
    if "rung" in have.columns and len(have):
        have = have[have["rung"] == frame_front_rung(frame)]
    feasible = have[have["feasible"] & (have["state"] == "COMPLETE")].copy()
    feasible["pareto"] = pareto_mask(feasible[axes].to_numpy(float), [info.direction(a) for a in axes])
    return feasible


def least_violating(frame: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """When nothing is feasible: the trials closest to feasibility (smallest summed constraint violation)."""
    cand = frame[frame["has_constraints"]] if "has_constraints" in frame else frame.iloc[0:0]
    return cand.nsmallest(k, "violation")


def hypervolume_history(frame: pd.DataFrame, info: StudyInfo, points: int = 200) -> pd.DataFrame:
    """Hypervolume of the feasible front after each finished trial, over the study's objectives.

    Objectives are normalised to [0, 1] by the range of feasible complete trials (maximised ones flipped), and
    the reference point is 1.1 in every objective, so the number is comparable within one study only.
    """
    from optuna._hypervolume import compute_hypervolume

    names = [m for m in info.metric_names if m in frame.columns]
    done = frame[(frame["state"] == "COMPLETE") & frame["feasible"]].dropna(subset=names).sort_values("number")
    if "rung" in done.columns and len(done):
        done = done[done["rung"] == frame_front_rung(frame)]
    if done.empty or len(names) != len(info.metric_names):
        return pd.DataFrame(columns=["number", "hypervolume"])
    v = _as_minimized(done[names].to_numpy(float), info.directions)
    lo, hi = v.min(0), v.max(0)
    v = (v - lo) / np.where(hi > lo, hi - lo, 1.0)
    ref = np.full(v.shape[1], 1.1)
    numbers = done["number"].to_numpy()
    cut = sorted(set(np.linspace(1, len(v), min(points, len(v))).round().astype(int)))
    rows = []
    for i in cut:
        sub = v[:i]
        rows.append({"number": int(numbers[i - 1]),
                     "hypervolume": float(compute_hypervolume(sub[pareto_mask(sub, ['minimize'] * v.shape[1])],
                                                              ref))})
    return pd.DataFrame(rows)


def state_counts(frame: pd.DataFrame) -> pd.DataFrame:
    counts = frame.groupby("state").size().rename("trials").reset_index()
    return counts.sort_values("trials", ascending=False)


def failure_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """Unfinished-business trials grouped by state and reason (first 160 characters)."""
    bad = frame[frame["state"] != "COMPLETE"].copy()
    if bad.empty:
        return pd.DataFrame(columns=["state", "reason", "trials", "example trial"])
    bad["reason"] = bad["reason"].fillna("").str.slice(0, 160).replace("", "(no reason recorded)")
    out = bad.groupby(["state", "reason"]).agg(trials=("number", "size"), example=("number", "min")).reset_index()
    return out.rename(columns={"example": "example trial"}).sort_values("trials", ascending=False)


# --- one trial -------------------------------------------------------------------------------------------

def spec_of(row: pd.Series | dict):
    from search_space import spec_from_dict

    text = row.get("spec_json") or ""
    if not text:
        return None
    return spec_from_dict(json.loads(text))


def knob_diff(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Spec fields that differ between two trials (flattened knob paths)."""
    sa = flatten_spec(json.loads(a["spec_json"])) if a.get("spec_json") else {}
    sb = flatten_spec(json.loads(b["spec_json"])) if b.get("spec_json") else {}
    rows = [{"knob": k, "A": sa.get(k, "(absent)"), "B": sb.get(k, "(absent)")}
            for k in sorted(set(sa) | set(sb)) if sa.get(k, "(absent)") != sb.get(k, "(absent)")]
    return pd.DataFrame(rows, columns=["knob", "A", "B"]).astype(str)


def metric_deltas(a: pd.Series, b: pd.Series, metrics: list[str]) -> pd.DataFrame:
    rows = []
    for m in metrics:
        va, vb = a.get(m), b.get(m)
        ok_a = va is not None and not pd.isna(va)
        ok_b = vb is not None and not pd.isna(vb)
        delta = float(vb) - float(va) if ok_a and ok_b else np.nan
        rel = delta / abs(float(va)) * 100 if ok_a and ok_b and float(va) != 0 else np.nan
        rows.append({"metric": m, "A": float(va) if ok_a else np.nan, "B": float(vb) if ok_b else np.nan,
                     "B - A": delta, "B vs A (%)": rel})
    return pd.DataFrame(rows)


def artifact_files(folder: str | None) -> dict[str, Any]:
    """What the quality evaluator left in a trial's artifact folder (evaluators/quality.py writes samples.png,
    record.json and checkpoints/, the safetensors checkpoint every consumer reads; evaluators/decoder_quality.py
    writes reconstructions.png and record.json); `missing` says why nothing can be shown."""
    if not folder:
        return {"missing": "this trial has no artifact folder (no quality run, or cached from another trial)"}
    path = Path(folder)
    if not path.is_dir():
        return {"missing": f"artifact folder {path} was deleted or is not on this machine", "path": str(path)}
    out: dict[str, Any] = {"path": str(path)}
    # samples.png (flow quality evaluator), reconstructions.png (decoder evaluator), then any other image
    images = [path / n for n in IMAGE_NAMES if (path / n).is_file()]
    images += sorted(p for p in path.glob("*.png") if p not in images)
    out["images"] = [str(p) for p in images]
    record = path / "record.json"
    if record.is_file():
        try:
            out["record"] = json.loads(record.read_text())
        except (json.JSONDecodeError, OSError) as e:
            out["record_error"] = f"{record}: {e}"
    out["files"] = sorted(p.name for p in path.iterdir())
    return out


# --- paper figures -------------------------------------------------------------------------------------------

def fig3_steps() -> list[str]:
    """Figure 3 chain steps, from the preset registry (`fig3-a`, ... in registration order)."""
    from search_space import PRESETS
    return [n.removeprefix("fig3-") for n in PRESETS if n.startswith("fig3-")]


def _pct(new: float, old: float) -> float:
    return (new - old) / old * 100 if old else np.nan


def _readings(frame: pd.DataFrame) -> pd.Series:
    """The separable-block reading of each trial's spec (`sep_block`; specs stored before it existed built
    "per_conv"). Figure 3 steps are compared within one reading: a step's parent is the same reading's."""
    col = frame["knob:sep_block"] if "knob:sep_block" in frame.columns else pd.Series(np.nan, index=frame.index)
    return col.fillna("per_conv").astype(str)


def _chain_presets(frame: pd.DataFrame) -> pd.Series:
    """The Figure 3 preset each trial stands for: the grid's `preset` choice it started from (`base_preset`;
    under the other block reading the spec equals no registered preset), else the preset its spec equals."""
    exact = frame["preset"] if "preset" in frame.columns else pd.Series(np.nan, index=frame.index)
    base = frame["base_preset"] if "base_preset" in frame.columns else pd.Series(np.nan, index=frame.index)
    return base.where(base.notna() & (base != ""), exact).fillna("").astype(str)


def fig3_readings(frame: pd.DataFrame) -> list[str]:
    """Readings with at least one fig3-* trial, "per_conv" (the presets' reading) first."""
    found = set(_readings(frame)[_chain_presets(frame).str.startswith("fig3-")])
    return sorted(found, key=lambda r: (r != "per_conv", r))


def fig3_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per chain step and separable-block reading the study evaluated: ours (params, GMACs, predicted
    latency, proxy FD) with the change vs the parent step of the same reading, beside the paper's published
    change and ImageNet FID. `label` names the bar: the step, with the reading when there are several."""
    metrics = [m for m in ("params_m", "gmacs", "latency_ms", "fd_domain", "fid") if m in frame.columns]
    preset_col = _chain_presets(frame)
    readings = _readings(frame)
    several = len(fig3_readings(frame)) > 1
    by_reading: dict[str, dict[str, dict]] = {}
    for reading in fig3_readings(frame):
        rows = by_reading.setdefault(reading, {})
        for step in fig3_steps():
            sel = frame[(preset_col == f"fig3-{step}") & (readings == reading)]
            if sel.empty:
                continue
            done = sel[sel["state"] == "COMPLETE"]
            r = (done if not done.empty else sel).sort_values("number").iloc[-1]
            rows[step] = {"step": step, "trial": int(r["number"]), "state": r["state"],
                          **{m: (float(r[m]) if not pd.isna(r.get(m)) else np.nan) for m in metrics}}
    out = []
    for reading, rows in by_reading.items():
        for step, row in rows.items():
            parent = FIG3_PARENT.get(step)
            # Steps without separable convs (a, b) are one model under every reading, stored as "per_conv".
            parent_row = rows.get(parent) or by_reading.get("per_conv", {}).get(parent)
            change, p_params, p_flops, p_fid = FIG3_PAPER.get(step, ("", "", "", ""))
            row = {"step": step, "reading": reading, "label": f"{step} ({reading})" if several else step,
                   "change": change, **{k: v for k, v in row.items() if k != "step"}}
            for m, label in (("params_m", "params"), ("gmacs", "GMACs"), ("latency_ms", "latency"),
                             ("fd_domain", "FD")):
                if m not in metrics:
                    continue
                row[f"{label} change (%)"] = (_pct(row[m], parent_row[m])
                                              if parent_row is not None and not pd.isna(row[m]) else np.nan)
            row["relative to"] = parent or "-"
            row["paper params change"] = p_params
            row["paper FLOPs change"] = p_flops
            row["paper ImageNet FID"] = p_fid
            out.append(row)
    return pd.DataFrame(out)


FIG3_LEVEL = LEVEL  # the level of the difference intervals; the verdicts test at 1 - FIG3_LEVEL


def _step_row(frame: pd.DataFrame, step: str, reading: str = "per_conv") -> pd.Series | None:
    """The trial that stands for a chain step under one separable-block reading: COMPLETE, highest rung,
    latest."""
    chain = (_chain_presets(frame) == f"fig3-{step}") & (frame["state"] == "COMPLETE")
    sel = frame[chain & (_readings(frame) == reading)]
    if sel.empty:  # a step without separable convs (a, b) is one model in every reading, stored as "per_conv"
        sel = frame[chain & (_readings(frame) == "per_conv")]
    if sel.empty:
        return None
    return sel.sort_values(["rung", "number"] if "rung" in sel.columns else ["number"]).iloc[-1]


def fig3_orderings(frame: pd.DataFrame, metric: str | None = None, level: float = FIG3_LEVEL,
                   margins: dict[str, float] | None = None) -> pd.DataFrame:
    """For each Figure 3 step: does the proxy reproduce the published FID ordering against the parent step?

    The difference is ours(step) - ours(parent) of a lower-is-better quality metric (fd_domain by default),
    paired over seeds (the trials' `per_seed` values: each seed sees the same data, noise and timesteps for both
    specs, so seed-to-seed noise cancels), with its t-interval and paired t-test. The table is decided as one
    family (evaluators/stats.py `paired_verdicts`): Holm's correction runs over every test of the table, the
    difference tests of all steps and readings and the equivalence tests of the paper's "comparable" steps.
    Verdicts: "reproduced" / "reversed" (the difference resolved on the paper's / the other side),
    "not resolved at proxy scale"; for "comparable" steps, "consistent with the paper's 'comparable'" when TOST
    puts the difference within +-margin (`FIG3_MARGINS`, or `margins`), "differs: ours better / worse" when the
    difference is resolved, else "not resolved at proxy scale". Without per-seed values the two trials' own
    seed intervals give an unpaired interval (treated as independent) and no verdict: the tests need the seeds;
    with one seed there is no interval and no verdict.
    """
    if metric is None:
        metric = next((m for m in ("fd_domain", "fid", "val_loss") if m in frame.columns), "fd_domain")
    margin = {**FIG3_MARGINS, **(margins or {})}.get(metric)
    rows, tests = [], {}
    for reading, step, parent in [(r, s, p) for r in (fig3_readings(frame) or ["per_conv"])
                                  for s, p in FIG3_PARENT.items()]:
        paper = FIG3_PAPER_ORDER.get(step, "")
        a, b = _step_row(frame, parent, reading), _step_row(frame, step, reading)
        row: dict[str, Any] = {"step": step, "vs": parent, "reading": reading, "paper FID": FIG3_PAPER[step][3],
                               "paper FID (vs)": FIG3_PAPER[parent][3], "paper ordering": paper,
                               "metric": metric, "ours": np.nan, "ours (vs)": np.nan, "difference": np.nan,
                               "ci_low": np.nan, "ci_high": np.nan, "interval": "", "p": np.nan,
                               "p (Holm)": np.nan, "margin": margin if paper == "comparable" else np.nan,
                               "TOST p": np.nan, "TOST p (Holm)": np.nan, "verdict": "not measured"}
        rows.append(row)
        if a is None or b is None or pd.isna(a.get(metric)) or pd.isna(b.get(metric)):
            continue
        row.update({"ours": float(b[metric]), "ours (vs)": float(a[metric]),
                    "difference": float(b[metric]) - float(a[metric])})
        seeds_a = json.loads(a["per_seed_json"]).get(metric) if isinstance(a.get("per_seed_json"), str) else None
        seeds_b = json.loads(b["per_seed_json"]).get(metric) if isinstance(b.get("per_seed_json"), str) else None
        n = min(len(seeds_a or []), len(seeds_b or []))  # seeds seed, seed+1, ...: the first n are shared
        lo_k, hi_k = f"{metric}_ci_low", f"{metric}_ci_high"
        if n >= 2:
            tests[len(rows) - 1] = (seeds_b[:n], seeds_a[:n], margin if paper == "comparable" else None)
            row["interval"] = f"paired over {n} seeds, {level:.0%}"
        elif all(k in frame.columns and not pd.isna(r.get(k)) for k in (lo_k, hi_k) for r in (a, b)):
            half = float(np.hypot((a[hi_k] - a[lo_k]) / 2, (b[hi_k] - b[lo_k]) / 2))
            row["ci_low"], row["ci_high"] = row["difference"] - half, row["difference"] + half
            row["interval"] = "from the two seed intervals (unpaired, wider)"
            row["verdict"] = "no verdict (no per-seed values to test)"
        else:
            row["interval"] = "one seed: no interval"
            row["verdict"] = "no verdict (one seed)"
    for i, v in paired_verdicts(tests, level).items():  # one family: the whole table
        row, d, eq = rows[i], v.difference, v.equivalence
        row.update({"difference": d.mean, "ci_low": d.low, "ci_high": d.high, "p": d.p, "p (Holm)": v.p_holm})
        if eq is not None:
            row.update({"TOST p": eq.p, "TOST p (Holm)": v.tost_p_holm})
        if row["paper ordering"] == "comparable":
            side = "better" if v.sign < 0 else "worse"
            row["verdict"] = (f"consistent with the paper's 'comparable' (within +-{margin:g}"
                              + (f"; ours resolved {side}, by less than that)" if v.sign else ")") if v.equivalent
                              else f"differs: ours {side}" if v.sign
                              else "not resolved at proxy scale" if margin is not None
                              else f"not resolved (no margin for {metric}: 'comparable' is not tested)")
        else:
            want = -1 if row["paper ordering"] == "better" else 1
            row["verdict"] = ("reproduced" if v.sign == want else "reversed" if v.sign == -want
                              else "not resolved at proxy scale")
    return pd.DataFrame(rows)


def fig3_orderings_of(study) -> pd.DataFrame | None:
    """`fig3_orderings` of a study that evaluated a Figure 3 step and the step before it (both COMPLETE);
    None for any other study (a search that met one fig3 preset on its way has no ordering to report)."""
    if not fig3_pair_possible(study.get_trials(deepcopy=False)):
        return None  # decided without building the frame: `study status` of any other study needs no pandas
    frame, _ = trials_frame(study)
    if not any(_step_row(frame, step, r) is not None and _step_row(frame, parent, r) is not None
               for step, parent in FIG3_PARENT.items() for r in fig3_readings(frame)):
        return None
    return fig3_orderings(frame)


def fig3_rule(table: pd.DataFrame, level: float = FIG3_LEVEL) -> str:
    """How the ordering table's verdicts were reached: the family Holm corrected over and the margin."""
    metric = table["metric"].iloc[0] if len(table) else "fd_domain"
    tests = int(table["p"].notna().sum() + table["TOST p"].notna().sum()) if len(table) else 0
    margin = table["margin"].dropna() if len(table) else pd.Series(dtype=float)
    return (f"verdicts at alpha {1 - level:.2g}, Holm-corrected over the {tests} test{'s' * (tests != 1)} of this "
            f"table; "
            + (f"'comparable' steps: TOST within +-{margin.iloc[0]:g} {metric} (studies/paper.py FIG3_MARGINS)"
               if len(margin) else f"no equivalence margin for {metric}, so no step is found 'comparable'"))


def fig3_orderings_text(table: pd.DataFrame, level: float = FIG3_LEVEL) -> str:
    """The ordering table as text for `study status` (one line per step), after the rule its verdicts follow."""
    metric = table["metric"].iloc[0] if len(table) else "fd_domain"
    lines = [f"Figure 3 quality orderings, paper (ImageNet FID) vs ours ({metric}, step minus the step before; "
             f"lower is better):", " " + fig3_rule(table, level)]
    several = "reading" in table.columns and table["reading"].nunique() > 1
    for i, r in enumerate(table.to_dict("records")):
        if several and (i == 0 or r["reading"] != table["reading"].iloc[i - 1]):
            lines.append(f" separable block {r['reading']}:")
        ours = "not measured" if pd.isna(r["difference"]) else f"{r['difference']:+.4g}"
        if not pd.isna(r["ci_low"]):
            ours += f" [{r['ci_low']:+.4g}, {r['ci_high']:+.4g}] ({r['interval']})"
        if not pd.isna(r["p"]):
            ours += f" p {r['p']:.2g}, Holm {r['p (Holm)']:.2g}"
        if not pd.isna(r["TOST p"]):
            ours += f"; TOST p {r['TOST p']:.2g}, Holm {r['TOST p (Holm)']:.2g}"
        lines.append(f"  {r['step']:>2} vs {r['vs']:<2}  paper {r['paper FID']} vs {r['paper FID (vs)']}: "
                     f"{r['paper ordering']:<10}  ours {ours}  -> {r['verdict']}")
    return "\n".join(lines)


def table2(latent: int = 128, device: str = "a17pro", psnr: dict[str, float] | None = None) -> pd.DataFrame:
    """Table 2: the registry's decoder presets at `latent`, cost evaluator + predicted latency, with the
    paper's numbers; PSNR where a decoder study measured it (`psnr`: preset -> dB)."""
    from evaluators.cost import describe_cost
    from latency_models.api import predict
    from search_space import PRESETS

    rows = []
    for name, spec in PRESETS.items():
        if spec.kind != "decoder" or name.startswith("tiny-"):
            continue
        d = describe_cost(spec, latent, memory=False)
        p = predict(spec, None, device, latent=latent)
        paper = TABLE2_PAPER.get(name)
        rows.append({
            "decoder": name, "latent ch": spec.latent_channels, "params (M)": d["params"] / 1e6,
            "GMACs (no attention products)": d["gmacs_no_attention"], "GMACs (all)": d["gmacs"],
            "predicted latency (ms)": p.ms, "latency band (ms)": f"{p.low_ms:.1f}-{p.high_ms:.1f}",
            "PSNR (ours)": (psnr or {}).get(name, np.nan),
            "paper params (M)": paper[2] if paper else np.nan, "paper GFLOPs": paper[3] if paper else np.nan,
            "paper PSNR": paper[1] if paper else np.nan,
        })
    return pd.DataFrame(rows)


def curve_frame(curve_json: str) -> pd.DataFrame:
    """A trial's `curve` attr as a frame: points are [step, val_loss] or [step, val_loss, budget fraction]."""
    points = json.loads(curve_json) if curve_json else []
    rows = [{"step": p[0], "val_loss": p[1], "budget fraction": p[2] if len(p) > 2 else np.nan}
            for p in points if isinstance(p, (list, tuple)) and len(p) >= 2]
    return pd.DataFrame(rows, columns=["step", "val_loss", "budget fraction"])


def decoder_psnr(frame: pd.DataFrame) -> dict[str, float]:
    """Best measured PSNR per decoder preset in a study's frame (empty when none was measured)."""
    if "psnr" not in frame.columns or "preset" not in frame.columns:
        return {}
    done = frame[(frame["state"] == "COMPLETE") & frame["preset"].notna() & frame["psnr"].notna()]
    return {str(k): float(v) for k, v in done.groupby("preset")["psnr"].max().items()}
