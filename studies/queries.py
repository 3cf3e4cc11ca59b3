"""The read side of a stored study, without pandas: find it in a storage, its rungs, trial counts, the rung its
Pareto front comes from and the front itself (what `study status|best|export` print; studies/results.py builds
the explorer's frames on the same rules). Nothing here writes: storages are opened read-only.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluators import registry

from . import record as R
from . import storage as S
from .halving import LEARNED_FRACTION_GATE, nondominated_ranks, rung_candidates, rung_regime
from .overlay import current_trials
from .record import FINISHED, TrialRecord, feasible, metric_names
from .storage import StudyError


def resolve_study(storage_url: str, name: str | None) -> optuna.Study:
    """Load a study from a storage; `name` may be omitted when the storage holds exactly one."""
    try:
        storage = S.open_readonly(storage_url)  # a reader never creates or migrates anything
    except S.StorageError as e:
        raise StudyError(str(e)) from None
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name is None:
        if len(names) != 1:
            raise StudyError(f"storage {storage_url} holds {len(names)} studies "
                             f"({', '.join(names) or 'none'}); pick one with --study NAME")
        name = names[0]
    if name not in names:
        raise StudyError(f"storage {storage_url} has no study {name!r}; it has: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def study_rungs(study: optuna.Study) -> list[str]:
    """The rung budgets of a stored study, lowest first (one entry for a single-budget study: its budget as the
    file wrote it, or "" when it wrote none)."""
    rungs = study.user_attrs.get(R.RUNGS)
    if rungs:
        return list(rungs)
    quality = (study.user_attrs.get(R.DEFINITION) or {}).get("quality") or {}
    return [str(quality["budget"])] if "budget" in quality else [""]


def finished_count(study: optuna.Study) -> int:
    """What counts towards n_trials: the distinct designs finished (COMPLETE or PRUNED) at the first rung. A
    re-proposed design whose result was reused, or a re-sampled duplicate, adds none."""
    return len(rung_candidates(study.get_trials(deepcopy=False), 0))


def presets_without_result(study: optuna.Study, presets: Iterable[str]) -> dict[str, list[str]]:
    """The enqueued presets (the file's [enqueue] presets) that failed at the first rung with no finished trial
    and none waiting or running: each with its trials' failure reasons. A study that silently lacks a preset
    has lost the reference its front is read against."""
    trials = study.get_trials(deepcopy=False)
    out: dict[str, list[str]] = {}
    for preset in dict.fromkeys(presets):
        mine = [(t, rec) for t in trials if (rec := TrialRecord.of(t)).enqueued_preset == preset and rec.rung == 0]
        if any(t.state in (*FINISHED, TrialState.WAITING, TrialState.RUNNING) for t, _ in mine):
            continue
        if mine:  # only failures; a preset never enqueued (an older study) is no failure of this run
            out[preset] = [f"trial {t.number}: {rec.reason or 'no reason recorded'}" for t, rec in mine]
    return out


def front_rung(rungs: Iterable[int]) -> int | None:
    """The rung the Pareto front (and the winner) comes from, given the `rungs` of the COMPLETE trials: the highest,
    which is the top rung once a trial finished there; None when nothing completed. A lower rung's quality is
    over a shorter budget, so it never competes with a higher one (studies/results.py applies the same rule to
    the explorer's frames)."""
    return max(rungs, default=None)


def complete_rungs(trials: Iterable[FrozenTrial]) -> list[int]:
    """The rung of each COMPLETE trial (the input of `front_rung`)."""
    return [TrialRecord.of(t).rung for t in trials if t.state == TrialState.COMPLETE and t.values is not None]


def rung_counts(trials: Sequence[FrozenTrial], n_rungs: int) -> list[dict[str, int]]:
    """Per rung: trials by state (for `study status`)."""
    rungs = [TrialRecord.of(t).rung for t in trials]
    out = []
    for r in range(max(n_rungs, 1 + max(rungs, default=0))):
        at = [t for t, rung in zip(trials, rungs) if rung == r]
        out.append({s.name: sum(t.state == s for t in at) for s in TrialState if any(t.state == s for t in at)})
    return out


def front_note(study: optuna.Study) -> str:
    """Which rung the Pareto front comes from, in words (printed beside every front)."""
    rungs = study_rungs(study)
    r = front_rung(complete_rungs(study.get_trials(deepcopy=False)))
    if len(rungs) < 2:
        return "Pareto front over every finished trial (one budget" + (f": {rungs[0]})" if rungs[0] else ")")
    top = len(rungs) - 1
    if r is None:
        return f"no trial finished yet; the front will come from the top rung ({rungs[top]})"
    if r == top:
        return f"Pareto front from the top rung only (rung {top}, {rungs[top]}); lower rungs rank, never enter"
    return (f"the top rung ({rungs[top]}) has no finished trial yet: provisional front from rung {r} "
            f"({rungs[r]})")


def regimes(study: optuna.Study) -> list[dict[str, Any]]:
    """Per rung, what its finished candidates learned (studies/halving.py, the regime gate): the mean of their
    learned fractions, how many recorded one, and whether the rung ranks quality."""
    rungs = study_rungs(study)
    trials = study.get_trials(deepcopy=False)
    out = []
    for r in range(max(len(rungs), 1 + max((TrialRecord.of(t).rung for t in trials), default=0))):
        found = rung_regime(trials, r)
        out.append({"rung": r, "budget": rungs[r] if r < len(rungs) else "", "learned_fraction": found.learned,
                    "candidates": found.n, "quality": found.quality})
    return out


def regime_note(study: optuna.Study) -> str | None:
    """The regime gate in one line (printed at the end of `study run` and by `study status`); None when no trial
    recorded a learned fraction (no flow evaluator)."""
    found = [g for g in regimes(study) if g["learned_fraction"] is not None]
    if not found:
        return None
    several = len(study_rungs(study)) > 1
    top = len(study_rungs(study)) - 1
    parts = []
    for g in found:
        where = f"rung {g['rung']} ({g['budget']}) " if several else ""
        if g["quality"]:
            verdict = "a quality rung" if several else "quality ranks designs"
        elif several and g["rung"] < top:
            cheap = [n for n in metric_names(study) if not registry.is_quality_metric(n)]
            verdict = "NOT a quality rung: " + (f"promoted by {', '.join(cheap)} only" if cheap else
                                                "promoted by every objective (the study has no cheap one)")
        else:
            verdict = ("NOT a quality rung" if several else "not a quality regime") + \
                ": its quality differences are initialisation noise; read its front by the cheap objectives"
        parts.append(f"{where}{g['learned_fraction']:.2f} over {g['candidates']} candidate(s): {verdict}")
    return (f"regime gate (mean learned fraction >= {LEARNED_FRACTION_GATE:g}, 0 = the constant predictor, "
            f"1 = the linear-Gaussian optimum): " + "; ".join(parts))


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Feasible Pareto-optimal trials of the front rung (the top rung; see `front_note`) as flat rows: metrics,
    their seed intervals where the evaluator gave them (`<metric>_ci_low/_high`), the learned fraction where
    recorded, the rung, and the spec's identity; one row per spec."""
    names = metric_names(study)
    directions = [d.name.lower() for d in study.directions]
    trials = current_trials(study)  # latency as the current profile predicts it, once a study is re-ranked
    r = front_rung(complete_rungs(trials))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                   and TrialRecord.of(t).rung == r and feasible(t)), key=lambda t: t.number)
    if not done:
        return []
    on_front = nondominated_ranks(np.array([t.values for t in done]), directions) == 0
    rows = []
    seen: set[str] = set()
    for t, keep in zip(done, on_front):
        rec = TrialRecord.of(t)
        if not keep or rec.spec_id in seen:
            continue  # a re-proposed spec (served from the evaluation cache) is the same design
        seen.add(rec.spec_id)
        row = {"number": t.number, **dict(zip(names, t.values))}
        if R.LEARNED_FRACTION not in row and rec.learned_fraction is not None:
            row[R.LEARNED_FRACTION] = rec.learned_fraction
        for n in [n for n in names if n != R.LEARNED_FRACTION] + [R.LEARNED_FRACTION]:
            for bound in ("_ci_low", "_ci_high"):
                if n + bound in rec.attrs:
                    row[n + bound] = rec.attrs[n + bound]
        row.update({"rung": rec.rung, "budget": rec.budget, "spec_id": rec.spec_id, "preset": rec.get(R.PRESET, ""),
                    "compact": rec.compact})
        rows.append(row)
    return sorted(rows, key=lambda r: r[names[0]])
