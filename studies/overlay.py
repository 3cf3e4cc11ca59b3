"""The latency overlay of a re-ranked study (rerank.py): the trials as the current latency profile ranks them.

Kept apart from rerank.py (which predicts, and reads the front) so the front, the winner and the explorer's
frames can read trials through it without importing the predictors.
"""
from __future__ import annotations

import copy

from optuna.trial import FrozenTrial

from .record import metric_names

REFIT = "latency_refit"  # the study attribute rerank.py writes
LATENCY_METRICS = ("latency_ms", "latency_low_ms", "latency_high_ms")
_CONSTRAINT_PREFIX = "constraints:"  # how Optuna stores a named constraint among a trial's system attributes


def refit_note(study) -> str | None:
    """One line on the overlay in force, or None: printed beside a front so a reader knows which fit ranks it."""
    refit = study.user_attrs.get(REFIT)
    if not refit:
        return None
    return (f"latency re-ranked with {refit['chip']}'s profile fit {refit['fit_id']} ({len(refit['trials'])} "
            f"trials; `pocketdiff study rerank` again after another refit)")


def current_trials(study, trials: list[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """`trials` (default: all of the study's) with the latency overlay applied; the stored trials when there is
    none. Overlaid trials are copies: nothing stored changes."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    refit = study.user_attrs.get(REFIT)
    if not refit:
        return trials
    names = metric_names(study)
    return [_overlaid(t, refit, names) if str(t.number) in refit["trials"] else t for t in trials]


def _overlaid(t: FrozenTrial, refit: dict, names: list[str]) -> FrozenTrial:
    new = refit["trials"][str(t.number)]
    c = copy.copy(t)
    c.user_attrs = {**t.user_attrs, **new, "latency_ms_at_run": t.user_attrs.get("latency_ms"),
                    "latency_fit": refit["fit_id"]}
    if t.values is not None:
        c.values = [new.get(n, v) for n, v in zip(names, t.values)]
    system = dict(t.system_attrs)
    for name, limit in refit["limits"].items():
        metric = name.removeprefix("max_")
        if _CONSTRAINT_PREFIX + name in system:
            system[_CONSTRAINT_PREFIX + name] = float(new[metric] - limit)
    c.system_attrs = system
    return c
