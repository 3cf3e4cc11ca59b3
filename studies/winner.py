"""The winner of a study: the feasible trial of the front rung that is best on one metric, by that metric's
direction (the design `pocketdiff study best` hands to training).

Rules, in order:
- only COMPLETE trials with every constraint <= 0 (Optuna's feasibility) compete;
- only trials of the front rung compete (studies/queries.py's `front_rung`: the top rung of a successive-halving
  study once a trial finished there); a lower rung's score is over a shorter budget and is not comparable;
- an optional latency budget drops candidates predicted above it (or with no predicted latency);
- the best value of the metric wins: the smallest for a minimized metric, the largest for a maximized one
  (the study's own direction for an objective, the producing evaluator's direction otherwise); ties go to the
  earlier trial.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search_space.errors import UserError

from .overlay import current_trials
from .queries import complete_rungs, front_rung, metric_names
from .record import TrialRecord, feasible


class NoWinner(UserError):
    """No trial can win as asked; the message says which filter left none."""


@dataclass(frozen=True)
class Winner:
    trial: FrozenTrial
    metric: str
    direction: str  # "minimize" | "maximize"
    value: float
    rung: int
    record: dict[str, Any]  # what winner.json holds: the spec, its identity, the study, the metrics

    @property
    def line(self) -> str:
        latency = TrialRecord.of(self.trial).get("latency_ms", float("nan"))
        return (f"trial {self.trial.number}: {self.metric}={self.value:.4g} ({self.direction}d), "
                f"latency {latency:.2f} ms, spec_id {self.record['spec_id']}")


def objectives_of(study) -> list[tuple[str, str]]:
    """(metric, direction) per objective of a stored study, in order."""
    return list(zip(metric_names(study), (d.name.lower() for d in study.directions)))


def default_metric(study) -> str:
    """The study's first quality objective (the one a winner is usually picked by), else its first objective."""
    from evaluators.registry import is_quality_metric
    objectives = objectives_of(study)
    return next((m for m, _ in objectives if is_quality_metric(m)), objectives[0][0])


def metric_direction(study, metric: str) -> str:
    """The study's direction for an objective; the producing evaluator's direction for any other metric."""
    from evaluators.registry import direction_of
    return dict(objectives_of(study)).get(metric) or direction_of(metric)


def _value(trial: FrozenTrial, names: list[str], metric: str) -> float | None:
    values = dict(zip(names, trial.values or ()))
    v = values.get(metric, TrialRecord.of(trial).get(metric))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def select_winner(study, metric: str | None = None, max_latency_ms: float | None = None) -> Winner:
    """The winning trial of `study` (see the module docstring); raises NoWinner naming the filter that left none."""
    names = [m for m, _ in objectives_of(study)]
    metric = metric or default_metric(study)
    direction = metric_direction(study, metric)
    trials = current_trials(study)  # latency as the current profile predicts it, once a study is re-ranked
    rung = front_rung(complete_rungs(trials))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not done:
        raise NoWinner(f"study {study.study_name!r} has no complete trial yet; run it first (pocketdiff study run)")
    pool = [t for t in done if TrialRecord.of(t).rung == rung and feasible(t)]
    if not pool:
        raise NoWinner(f"no complete trial of study {study.study_name!r} meets its constraints")
    scored = [(v, t) for t in pool if (v := _value(t, names, metric)) is not None]
    if not scored:
        raise NoWinner(f"no feasible trial recorded {metric!r}; the study's objectives are {', '.join(names)} "
                       f"(pick one with --metric)")
    if max_latency_ms is not None:
        scored = [(v, t) for v, t in scored
                  if isinstance(latency := TrialRecord.of(t).get("latency_ms"), (int, float))
                  and latency <= max_latency_ms]
        if not scored:
            raise NoWinner(f"no complete, feasible trial with a predicted latency at or under "
                           f"{max_latency_ms:g} ms; "
                           f"raise --max-latency-ms")
    sign = -1.0 if direction == "maximize" else 1.0
    value, t = min(scored, key=lambda c: (sign * c[0], c[1].number))
    rec = TrialRecord.of(t)
    record = {"spec": rec.spec, "spec_id": rec.spec_id, "compact": rec.compact, "study": study.study_name,
              "trial": t.number, "rung": rec.rung, "budget": rec.budget,
              "metric": metric, "direction": direction,
              "metrics": {metric: value, **{k: rec.attrs[k] for k in ("latency_ms", "params_m", "gmacs",
                                                                      f"{metric}_ci_low", f"{metric}_ci_high")
                                            if k in rec.attrs}}}
    return Winner(trial=t, metric=metric, direction=direction, value=value, rung=rec.rung, record=record)
