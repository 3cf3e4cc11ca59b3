"""The trial objective: what one trial of a study does (docs/architecture.md, the objective contract).

1. sample the spec from the space (an invalid combination ends the trial FAIL with the reason); a promotion
   trains exactly its lower-rung design, an enqueued preset its preset;
2. a sampled spec the study already holds at this rung is not evaluated again: a finished twin's result is
   reused, a running or queued one ends this trial PRUNED as a duplicate (claimed under a lock in the storage);
3. cheap objectives of the FULL-SIZE candidate: every cheap evaluator of the registry (params and MACs on the
   meta device, the predicted Neural Engine latency); constraints go to Optuna through `trial.set_constraint`
   (feasible when <= 0), and a candidate over a hard budget is not trained: the trial ends PRUNED, `infeasible`;
4. the quality evaluator runs at the trial's rung (its budget and seeds), unless the same evaluation is already
   stored in this study or the local cache (studies/evaluate.py);
5. during training, intermediate validation losses are compared with finished trials' curves at the same
   rung and a clearly worse run is stopped early (Optuna's pruners work on single-objective studies only; this
   rule works for any number of objectives): the trial ends PRUNED with the reason.
A trial that fails for the machine's reason (a full disk, a cache file another worker replaced) is queued again
once (studies/workers.py). Everything a trial stores goes through its record (studies/record.py).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search_space import PRESETS, Spec
from search_space.errors import SpecError
from evaluators import registry

from . import evaluate as ev
from . import record as R
from . import storage as S
from .config import QUALITY_METRICS, StudyConfig
from .record import FINISHED, RecordWriter, TrialRecord
from .workers import artifact_folder, environmental, retry_environmental, worker_identity

log = logging.getLogger("pocketdiff.study")


class StopEarly(Exception):
    """Raised from the quality run's step callback to stop a clearly worse candidate."""


@dataclass
class RunStats:
    """Where the time went, for the overhead share printed at the end of a run: everything that is not the
    quality evaluator's training, sampling and scoring is overhead, Optuna's sampling and storage between
    trials, promotions and the opening of the storage included."""
    run_seconds: float = 0.0  # wall clock of run_study, from opening the storage to the last trial's end
    trial_seconds: float = 0.0  # inside the objective (the rest of run_seconds is Optuna and the storage)
    evaluator_seconds: float = 0.0  # training + sampling + scoring inside the quality evaluator
    finished: list[str] = field(default_factory=list)
    states: list[str] = field(default_factory=list)  # each trial this run ended, by state name
    workers: int = 1  # processes that ran trials in this run: the time available was run_seconds x workers

    @property
    def all_failed(self) -> bool:
        """This run ran trials and every one of them FAILed (a study that cannot work: `study run` exits 1)."""
        return bool(self.states) and all(s == "FAIL" for s in self.states)

    @property
    def overhead_share(self) -> float:
        total = max(self.run_seconds, self.trial_seconds) * self.workers
        return 0.0 if total <= 0 else max(0.0, 1 - self.evaluator_seconds / total)


def _spec_for_trial(cfg: StudyConfig, trial: optuna.Trial) -> Spec:
    rec = TrialRecord.of(trial)
    if rec.promoted_spec:  # a promotion trains exactly the candidate of the lower rung
        from search_space import spec_from_dict
        if rec.params_fixed:
            cfg.space.sample(trial)  # records the enqueued parameters, so the sampler sees them at every rung
        return spec_from_dict(rec.promoted_spec)
    if rec.enqueued_preset and not cfg.space.preset_choices:
        return PRESETS[rec.enqueued_preset]
    return cfg.space.sample(trial)


def _curve_threshold(study: optuna.Study, fraction: float, quantile: float,
                     rung: int = 0) -> tuple[float, int] | None:
    """Quantile of finished trials' validation loss at (or just before) the same share of the budget, among
    trials of the same rung (another rung's curve is over another budget).

    Curves are compared at equal budget fractions, not equal steps: the budget (wall seconds or steps) is the
    protocol, and a slower candidate has had fewer steps at the same point of it.
    """
    values = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = TrialRecord.of(t)
        if rec.rung != rung:
            continue
        points = [loss for _, loss, f in rec.curve if f <= fraction + 1e-9]
        if points:
            values.append(points[-1])
    if not values:
        return None
    return float(np.quantile(values, quantile)), len(values)


class Objective:
    def __init__(self, cfg: StudyConfig, study: optuna.Study, stats: RunStats, artifacts: Path):
        self.cfg, self.study, self.stats, self.artifacts = cfg, study, stats, artifacts
        self.identity = worker_identity()

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        t_start = time.perf_counter()
        write = RecordWriter.of(trial)
        write.worker(**self.identity)  # whose trial this is: a rerun on this host fails it if we are gone
        try:
            return self._run(trial, write)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded on the trial; the study goes on (optimize(catch=...))
            reason = trial.user_attrs.get(R.FAIL_REASON) or f"{type(e).__name__}: {e}"
            retried = environmental(e) and retry_environmental(self.study, trial, reason)
            if not retried and R.FAIL_REASON not in trial.user_attrs:
                write.failed(reason)
            raise
        finally:
            self.stats.trial_seconds += time.perf_counter() - t_start
            self.stats.evaluator_seconds += TrialRecord.of(trial).evaluator_seconds

    def _run(self, trial: optuna.Trial, write: RecordWriter) -> tuple[float, ...]:
        cfg = self.cfg
        try:
            spec = _spec_for_trial(cfg, trial)
        except SpecError as e:
            write.failed(f"invalid spec: {e}")
            raise
        write.design(spec)
        rec = TrialRecord.of(trial)
        rung = rec.rung
        twin = self._claim(trial, write, spec, rung) if rec.sampled else None
        if not rec.sampled:
            write.claim(spec.spec_id)
        if twin is not None:
            return self._reuse(trial, write, twin)
        write.placement(rung, cfg.quality.budget_at(rung), rec.get(R.CANDIDATE) or spec.spec_id)
        enqueued = rec.enqueued_preset
        preset = enqueued if enqueued and PRESETS[enqueued] == spec else next(
            (n for n, s in PRESETS.items() if s == spec), None)
        # the preset a grid point starts from (paper-fig3's step under another block reading)
        base = trial.params.get("preset")
        write.preset(preset, base if isinstance(base, str) else None)

        metrics = ev.cheap_metrics(spec, cfg.latent, cfg.device)
        write.values(metrics)
        violations = []
        for name, limit in cfg.constraints.items():
            metric = name.removeprefix("max_")
            value = metrics.get(metric)
            if value is None:
                continue
            trial.set_constraint(name, float(value - limit))
            if value > limit:
                violations.append(f"{metric} {value:.4g} > {limit:g}")
        if violations:
            reason = "infeasible (not trained): " + "; ".join(violations)
            write.infeasible(reason)
            raise optuna.TrialPruned(reason)

        if cfg.quality.evaluator != "none" and any(m in QUALITY_METRICS for m in cfg.metric_names):
            metrics.update(self._quality(trial, write, spec, rung))

        values = []
        for name in cfg.metric_names:
            v = metrics.get(name)
            if v is None or not math.isfinite(v):
                raise RuntimeError(f"objective {name} missing or not finite in the results: {v}")
            values.append(float(v))
        return tuple(values)

    def _claim(self, trial: optuna.Trial, write: RecordWriter, spec: Spec,
               rung: int) -> optuna.trial.FrozenTrial | None:
        """Make this sampled spec this trial's, unless the study already holds it at this rung: a finished
        twin is returned (its result is reused); a running or queued one ends this trial PRUNED with
        `duplicate_of` (the next trial samples anew; it does not count towards n_trials). The check and the
        claim (writing `spec_id`) happen under a lock in the storage, so two workers that sample the same spec
        at the same moment never both train it."""
        storage = self.study._storage
        with S.named_lock(S.url_of(storage, self.cfg.storage), f"pocketdiff-claim:{self.study.study_name}",
                          engine=S.engine_of(storage)):
            twin = _twin(self.cfg, self.study, trial.number, spec.spec_id, rung)
            write.claim(spec.spec_id)
        if twin is None or twin.state in FINISHED:
            return twin
        where = "running" if twin.state == TrialState.RUNNING else "queued"
        reason = f"re-sampled: spec {spec.spec_id} is already {where} in trial {twin.number}"
        write.duplicate(twin.number, reason)
        log.info("trial %d: %s", trial.number, reason)
        raise optuna.TrialPruned(reason)

    def _reuse(self, trial: optuna.Trial, write: RecordWriter, twin: optuna.trial.FrozenTrial) -> tuple[float, ...]:
        """This trial's result is the finished twin's (same spec, same rung, so same evaluation): copied,
        marked `reused_from`, nothing evaluated again."""
        write.reused(twin.number)
        write.values(R.copied_from(twin.user_attrs, trial.user_attrs))
        for name, value in (twin.constraints or {}).items():
            trial.set_constraint(name, float(value))
        log.info("trial %d: spec %s already evaluated in trial %d: reused its result", trial.number,
                 TrialRecord.of(twin).spec_id, twin.number)
        if twin.state == TrialState.PRUNED:
            reason = TrialRecord.of(twin).reason or "pruned"
            raise optuna.TrialPruned(f"{reason} (reused from trial {twin.number})")
        return tuple(float(v) for v in twin.values)

    def _quality(self, trial: optuna.Trial, write: RecordWriter, spec: Spec, rung: int) -> dict[str, float]:
        cfg = self.cfg.at_rung(rung)
        key = ev.evaluation_key(spec, cfg)
        write.eval_key(key)
        cached = self._cached(key, cfg)
        if cached is not None:
            write.cached(cached.get("source", "cache"))
            write.values(cached["user_attrs"])
            return cached["metrics"]

        out_dir = artifact_folder(self.artifacts, trial.number, spec.spec_id)
        write.artifacts(str(out_dir))  # before any is written: a killed or failed run's folder can be found
        curve: list[tuple[int, float, float]] = []  # (step, val_loss, budget fraction)
        es = cfg.quality.early_stop

        def on_report(fraction: float, values: dict[str, float]) -> None:
            loss, step = values.get("val_loss"), int(values["step"])
            if loss is None:
                return
            curve.append((step, float(loss), round(fraction, 4)))
            write.curve(curve)
            if not es.enabled or fraction < es.warmup_fraction:
                return
            found = _curve_threshold(self.study, fraction, es.quantile, rung)
            if found is None or found[1] < es.min_trials:
                return
            threshold, n = found
            if loss > threshold:
                raise StopEarly(f"stopped early at step {step} ({fraction:.0%} of the budget): val_loss {loss:.4f} above the "
                                f"{es.quantile:.0%} quantile {threshold:.4f} of {n} finished trials")

        t0 = time.perf_counter()
        try:
            result = ev.quality_metrics(spec, cfg, out_dir, on_report)
        except StopEarly as e:
            write.evaluator_seconds(time.perf_counter() - t0)
            write.early_stopped(str(e))
            raise optuna.TrialPruned(str(e)) from None
        write.evaluator_seconds(result.pop("_evaluator_seconds", time.perf_counter() - t0))
        user_attrs = result.pop("_user_attrs", {})
        if result.get("diverged_at_step") is not None:
            raise RuntimeError(f"diverged at step {int(result['diverged_at_step'])}")
        user_attrs[R.CURVE] = curve
        user_attrs[R.ARTIFACTS] = str(out_dir)
        write.values({**user_attrs, **result})
        if ev.portable(cfg):
            ev.store_cache(key, result, user_attrs)
        return result

    def _cached(self, key: str, cfg: StudyConfig) -> dict | None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            rec = TrialRecord.of(t)
            if rec.eval_key == key:
                metrics = {m: v for m, v in rec.attrs.items()
                           if registry.is_quality_metric(m) or m in registry.references()}
                attrs = {k: rec.attrs[k] for k in R.EVALUATION_ATTRS if k in rec.attrs}
                return {"metrics": metrics, "user_attrs": attrs, "source": f"trial {t.number}"}
        return ev.load_cache(key) if ev.portable(cfg) else None


def _queued_spec_id(cfg: StudyConfig, t: optuna.trial.FrozenTrial) -> str | None:
    """The spec_id a WAITING trial will train (it has no `spec_id` attribute until it runs)."""
    from search_space import spec_from_dict
    rec = TrialRecord.of(t)
    try:
        if rec.promoted_spec:
            return spec_from_dict(rec.promoted_spec).spec_id
        if rec.enqueued_preset and not cfg.space.preset_choices:
            return PRESETS[rec.enqueued_preset].spec_id
        params = t.system_attrs.get("fixed_params") or t.params
        return cfg.space.sample(optuna.trial.FixedTrial(params)).spec_id if params else None
    except Exception:  # a queued point that does not make a valid spec will fail on its own when it runs
        return None


def _twin(cfg: StudyConfig, study: optuna.Study, number: int, spec_id: str,
          rung: int) -> optuna.trial.FrozenTrial | None:
    """Another trial of the same spec at the same rung: finished (the earliest COMPLETE, else PRUNED, not itself
    a duplicate), else running or queued; None when the spec is new to the study."""
    found: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(t)
        if t.number == number or rec.rung != rung or rec.duplicate_of is not None:
            continue
        if t.state == TrialState.WAITING:
            same = _queued_spec_id(cfg, t) == spec_id
        else:
            same = rec.spec_id == spec_id
        if same and t.state != TrialState.FAIL:
            found.setdefault(t.state.name, t)
    for state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"):
        if state in found:
            return found[state]
    return None
