"""A trial's record in the Optuna storage: the name and encoding of every user attribute the study machinery
writes on a trial (and on a study), one writer and one reader.

- `RecordWriter` is the one place a running trial's attributes are set (the trial objective, and the worker
  that fails a ghost trial); `enqueued`, `promotion`, `requeued` and `copied_from` build the attributes of
  queued trials (presets, promotions, re-queued kills) and of a trial that reuses its twin's result.
- `TrialRecord.of(trial)` reads them back with the defaults that trials stored before an attribute existed
  need (the rung of an older trial is 0); the run loops, halving, the winner, `study status` and the explorer's
  frame read through it.
Beside these, a trial stores every metric and whatever its evaluators return to store (`proxy`, `per_seed`,
`stage_costs`, ...) under the evaluator's own names. The names and encodings here are those of every stored
study: a changed name would make older databases unreadable, so an attribute that changes meaning gets a new
name, and its reader a default for trials without it (docs/studies.md, trial records).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from optuna.trial import TrialState

from search_space.compact import encode
from training.baselines import LEARNED_FRACTION

# --- trial attributes -------------------------------------------------------------------------------------
# the design
SPEC = "spec"  # the spec as a JSON object (search_space: to_json)
SPEC_ID = "spec_id"
COMPACT = "compact"  # the compact string of the spec
KIND = "kind"  # "unet" | "decoder"
PRESET = "preset"  # the preset the spec equals, if any
BASE_PRESET = "base_preset"  # the `preset` choice a grid point started from (paper-fig3 under another reading)
# where it runs: successive-halving rung (int, 0 for single-budget studies), its budget label, the candidate
# (the spec_id of the design the rungs follow)
RUNG = "rung"
BUDGET = "budget"
CANDIDATE = "candidate"
# queued work, written when a trial is enqueued
ENQUEUED_PRESET = "enqueued_preset"
PROMOTED_FROM = "promoted_from"  # the lower-rung trial's number
PROMOTED_SPEC = "promoted_spec"  # its spec (JSON object): a promotion trains exactly that design
PARAMS_FIXED = "params_fixed"  # whether the promotion carries sampled parameters to record again
PROMOTED_BY = "promoted_by"  # what ranked it, in words: every objective, or the cheap ones below the regime gate
# the worker that ran it (a rerun on this host fails the trial if that process is gone)
WORKER_HOST = "worker_host"
WORKER_PID = "worker_pid"
WORKER_STARTED = "worker_started"  # process start time in clock ticks since boot, or None
# how it ended, when it did not complete: each a one-line reason
DUPLICATE = "duplicate"
INFEASIBLE = "infeasible"
EARLY_STOPPED = "early_stopped"
FAIL_REASON = "fail_reason"
KILLED = "killed"
ENVIRONMENTAL = "environmental"  # True on a trial that failed for the machine's reason and was queued again
DUPLICATE_OF = "duplicate_of"  # the number of the running or queued twin a re-sampled spec found
# a result it did not compute: the finished twin's number, and where the result came from in words
REUSED_FROM = "reused_from"
CACHED_FROM = "cached_from"
# its quality run
EVAL_KEY = "eval_key"  # the JSON name of the evaluation (studies/evaluate.py: evaluation_key)
CURVE = "curve"  # [[step, val_loss, budget fraction], ...]
ARTIFACTS = "artifacts"  # the folder the evaluator wrote samples, record and checkpoints to
EVALUATOR_SECONDS = "evaluator_seconds"  # training + sampling + scoring, for the overhead share

REASONS = (DUPLICATE, INFEASIBLE, EARLY_STOPPED, FAIL_REASON, KILLED)  # in the order a trial's reason is read
# What one run of a trial wrote about itself: a re-queued copy starts without them, a reusing twin copies none.
PER_RUN = (WORKER_HOST, WORKER_PID, WORKER_STARTED, FAIL_REASON, KILLED, CURVE, EVALUATOR_SECONDS, DUPLICATE_OF,
           REUSED_FROM, ENVIRONMENTAL)
NOT_COPIED = (*PER_RUN, ENQUEUED_PRESET, "retried")  # "retried": written by older versions, meaning nothing now
# What a trial that finds its evaluation done (in the study or the cache) takes over besides the metrics.
EVALUATION_ATTRS = (CURVE, ARTIFACTS, "proxy", "per_seed")
# Text attributes of the record (the explorer keeps them out of the numeric columns), and numeric ones that
# describe the run, not the design.
TEXT = (SPEC_ID, COMPACT, KIND, PRESET, BASE_PRESET, ENQUEUED_PRESET, ARTIFACTS, EVAL_KEY, CACHED_FROM, INFEASIBLE,
        EARLY_STOPPED, FAIL_REASON, BUDGET, CANDIDATE, PROMOTED_BY)
NUMERIC_BOOKKEEPING = (RUNG, PROMOTED_FROM, EVALUATOR_SECONDS)

# --- study attributes ---------------------------------------------------------------------------------------
DEFINITION = "definition"  # the study file's fingerprint (studies/config.py: StudyConfig.fingerprint)
METRIC_NAMES = "metric_names"  # the objectives, in order
STUDY_FILE = "study_file"
RUNGS = "rungs"  # the rung budget labels, lowest first (successive-halving studies only)
CREATED = "created"  # written last when a study is created: a creation cut short has none
WORKERS = "workers"  # how many runs claimed a worker index (each seeds its sampler from it)

# Trials that count towards n_trials: COMPLETE or PRUNED (FAIL trials are retried, so they do not count).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def metric_names(study: Any) -> list[str]:
    """A stored study's objective names, in order (`objective_<i>` for a study that stored none)."""
    return list(study.user_attrs.get(METRIC_NAMES) or study.metric_names
                or [f"objective_{i}" for i in range(len(study.directions))])


def feasible(trial: Any) -> bool:
    """Optuna's feasibility: every constraint <= 0 (a trial without constraints is feasible)."""
    constraints = trial.constraints or {}
    return not any(v > 0 for v in (constraints.values() if isinstance(constraints, dict) else constraints))


@dataclass(frozen=True)
class TrialRecord:
    """What a trial stored about itself, with the defaults older trials need. `TrialRecord.of(trial)` reads a
    FrozenTrial or a running Trial (anything with `user_attrs`)."""
    attrs: Mapping[str, Any]

    @classmethod
    def of(cls, trial: Any) -> "TrialRecord":
        return cls(trial.user_attrs)

    def get(self, name: str, default: Any = None) -> Any:
        """Any attribute by name: a metric, or what an evaluator stored beside it."""
        return self.attrs.get(name, default)

    @property
    def spec(self) -> dict | None:
        spec = self.attrs.get(SPEC)
        return spec if isinstance(spec, dict) else None

    @property
    def spec_id(self) -> str | None:
        return self.attrs.get(SPEC_ID)

    @property
    def compact(self) -> str | None:
        return self.attrs.get(COMPACT)

    @property
    def preset(self) -> str | None:
        return self.attrs.get(PRESET) or None

    @property
    def chain_preset(self) -> str:
        """The Figure 3 preset the trial stands for: the grid's `preset` choice it started from, else the preset
        its spec equals; "" for neither."""
        return str(self.attrs.get(BASE_PRESET) or self.attrs.get(PRESET) or "")

    @property
    def label(self) -> str:
        """The preset name, else the spec_id ("?" before the trial sampled its spec)."""
        return self.preset or self.attrs.get(SPEC_ID, "?")

    @property
    def rung(self) -> int:
        """The trial's rung; trials of single-budget studies (and stored before rungs existed) are at rung 0."""
        r = self.attrs.get(RUNG, 0)
        return int(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else 0

    @property
    def budget(self) -> str:
        return self.attrs.get(BUDGET, "")

    @property
    def candidate(self) -> str | None:
        """The design the rungs follow: its `candidate`, else its spec_id."""
        return self.attrs.get(CANDIDATE) or self.attrs.get(SPEC_ID)

    @property
    def learned_fraction(self) -> float | None:
        """The flow evaluator's learned fraction (seed mean; training/baselines.py), None where not recorded."""
        v = self.attrs.get(LEARNED_FRACTION)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def promoted_by(self) -> str:
        return str(self.attrs.get(PROMOTED_BY) or "")

    @property
    def enqueued_preset(self) -> str | None:
        return self.attrs.get(ENQUEUED_PRESET) or None

    @property
    def promoted_spec(self) -> dict | None:
        return self.attrs.get(PROMOTED_SPEC) or None

    @property
    def params_fixed(self) -> bool:
        return bool(self.attrs.get(PARAMS_FIXED))

    @property
    def sampled(self) -> bool:
        """Whether the trial's design comes from the sampler (not an enqueued preset or a promotion)."""
        return not (self.promoted_spec or self.enqueued_preset)

    @property
    def queued(self) -> bool:
        """Enqueued work (a preset or a promotion), which a kill re-queues until it finishes."""
        return bool(self.enqueued_preset) or self.attrs.get(PROMOTED_FROM) is not None

    @property
    def duplicate_of(self) -> int | None:
        """The running or queued twin of a re-sampled spec: such a trial was not evaluated and does not count."""
        return self.attrs.get(DUPLICATE_OF)

    @property
    def environmental(self) -> bool:
        """Whether the trial failed for the machine's reason (a full disk, a cache file gone) and was queued
        again (studies/workers.py: `retry_environmental`)."""
        return bool(self.attrs.get(ENVIRONMENTAL))

    @property
    def cached_from(self) -> str | None:
        return self.attrs.get(CACHED_FROM)

    @property
    def eval_key(self) -> str | None:
        return self.attrs.get(EVAL_KEY)

    @property
    def evaluation(self) -> dict:
        """The parts of the eval key (data, budget, ...); {} for a trial without a quality run."""
        try:
            return json.loads(self.attrs[EVAL_KEY]) if self.attrs.get(EVAL_KEY) else {}
        except json.JSONDecodeError:
            return {}

    @property
    def curve(self) -> list:
        curve = self.attrs.get(CURVE)
        return curve if isinstance(curve, list) else []

    @property
    def evaluator_seconds(self) -> float:
        return float(self.attrs.get(EVALUATOR_SECONDS, 0.0))

    @property
    def worker(self) -> tuple[str | None, int | None, int | None]:
        """(host, pid, process start) of the worker that ran the trial."""
        pid = self.attrs.get(WORKER_PID)
        return self.attrs.get(WORKER_HOST), pid if isinstance(pid, int) else None, self.attrs.get(WORKER_STARTED)

    @property
    def reason(self) -> str:
        """Why the trial did not complete, in one line ("" when it did, or when nothing was recorded)."""
        return next((str(self.attrs[k]) for k in REASONS if self.attrs.get(k)), "")


class RecordWriter:
    """Writes a trial's record through `set_attr(name, value)` (a running trial's `set_user_attr`, or the
    storage's for a trial of another process)."""

    def __init__(self, set_attr: Callable[[str, Any], None]):
        self._set = set_attr

    @classmethod
    def of(cls, trial: Any) -> "RecordWriter":
        return cls(trial.set_user_attr)

    def worker(self, host: str, pid: int, started: int | None) -> None:
        self._set(WORKER_HOST, host)
        self._set(WORKER_PID, pid)
        self._set(WORKER_STARTED, started)

    def design(self, spec: Any) -> None:
        """The spec the trial trains: its JSON, compact string and kind."""
        self._set(SPEC, json.loads(spec.to_json()))
        self._set(COMPACT, encode(spec))
        self._set(KIND, spec.kind)

    def claim(self, spec_id: str) -> None:
        self._set(SPEC_ID, spec_id)

    def placement(self, rung: int, budget: Any, candidate: str) -> None:
        """The rung, its budget (stored as its label, e.g. "48steps"; "" without a quality evaluator) and the
        candidate the rungs follow."""
        self._set(RUNG, rung)
        self._set(BUDGET, "" if budget is None else str(budget))
        self._set(CANDIDATE, candidate)

    def preset(self, preset: str | None, base_preset: str | None) -> None:
        if preset:
            self._set(PRESET, preset)
        if base_preset:
            self._set(BASE_PRESET, base_preset)

    def values(self, values: Mapping[str, Any]) -> None:
        """Metrics, and what evaluators return to store beside them, under their own names."""
        for k, v in values.items():
            self._set(k, v)

    def infeasible(self, reason: str) -> None:
        self._set(INFEASIBLE, reason)

    def duplicate(self, of: int, reason: str) -> None:
        self._set(DUPLICATE_OF, of)
        self._set(DUPLICATE, reason)

    def reused(self, twin_number: int) -> None:
        self._set(REUSED_FROM, twin_number)
        self._set(CACHED_FROM, f"trial {twin_number}")

    def cached(self, source: str) -> None:
        self._set(CACHED_FROM, source)

    def eval_key(self, key: str) -> None:
        self._set(EVAL_KEY, key)

    def curve(self, points: list[tuple[int, float, float]]) -> None:
        self._set(CURVE, points)

    def artifacts(self, folder: str) -> None:
        self._set(ARTIFACTS, folder)

    def evaluator_seconds(self, seconds: float) -> None:
        self._set(EVALUATOR_SECONDS, seconds)

    def early_stopped(self, reason: str) -> None:
        self._set(EARLY_STOPPED, reason)

    def failed(self, reason: str) -> None:
        self._set(FAIL_REASON, reason[:2000])

    def killed(self, reason: str) -> None:
        self._set(KILLED, reason)

    def environmental(self, reason: str) -> None:
        """A failure of the machine, not of the design: the reason, and the mark that it was queued again."""
        self._set(FAIL_REASON, reason[:2000])
        self._set(ENVIRONMENTAL, True)


def enqueued(preset: str) -> dict[str, Any]:
    """The attributes of an enqueued preset's trial."""
    return {ENQUEUED_PRESET: preset}


def promotion(source: Any, rung: int, budget: str, ranked_by: str = "") -> dict[str, Any]:
    """The attributes of a promotion: the lower-rung trial `source`'s design at `rung` with its budget label, and
    what ranked it. The source's preset name goes with it: two presets may share a spec (snapgen-unet and
    fig3-g)."""
    src = TrialRecord.of(source)
    out = {RUNG: rung, BUDGET: budget, PROMOTED_FROM: source.number, CANDIDATE: str(src.candidate),
           PROMOTED_SPEC: src.attrs.get(SPEC), PARAMS_FIXED: bool(source.params)}
    if ranked_by:
        out[PROMOTED_BY] = ranked_by
    if src.preset:
        out[ENQUEUED_PRESET] = src.preset
    return out


def requeued(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes a killed trial's re-queued copy starts with: its own, less what the killed run wrote."""
    return {k: v for k, v in attrs.items() if k not in PER_RUN}


def copied_from(twin_attrs: Mapping[str, Any], have: Mapping[str, Any]) -> dict[str, Any]:
    """What a trial that reuses a finished twin's result takes over: the twin's record (metrics, evaluator
    outputs, placement), less what the twin's own run wrote and what the trial holds already."""
    return {k: v for k, v in twin_attrs.items() if k not in have and k not in NOT_COPIED}
