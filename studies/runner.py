"""Run a study: Optuna multi-objective search over the space, cheap checks first, cached quality runs.

One trial:
1. sample the spec from the space (an invalid combination ends the trial FAIL with the reason);
2. cheap objectives of the FULL-SIZE candidate: params and MACs (meta device) and the predicted Neural
   Engine latency; constraints go to Optuna through `trial.set_constraint` (feasible when <= 0);
3. a candidate over a hard budget is not trained: the trial ends PRUNED with user attr `infeasible`;
4. the quality evaluator runs (proxy training + sampling + FD), unless the same evaluation
   (spec_id, evaluator, version, budget, seed) is already stored in this study or the local cache;
5. during training, intermediate validation losses are compared with finished trials' curves at the same
   rung and a clearly worse run is stopped early (Optuna's pruners work on single-objective studies only; this
   rule works for any number of objectives): the trial ends PRUNED with the reason.
With `[quality] rungs` a study is multi-fidelity: sampled candidates train at the first rung's budget and
studies/halving.py promotes the best share of each rung to the next (successive halving, decided from the
storage); each trial stores its `rung` and `budget`, and the Pareto front is built from the top rung.
Every trial stores spec JSON, spec_id, compact string, every metric, the proxy mapping and artifact paths
as user attributes. Storage: SQLite by default, PostgreSQL/MySQL URLs for many workers; heartbeats mark a
killed worker's trial FAIL and `RetryHeartbeatStaleTrialCallback` re-queues it with the same parameters.
"""
from __future__ import annotations

import json
import logging
import math
import hashlib
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search_space import PRESETS, Spec
from search_space.compact import encode
from search_space.errors import SpecError, UserError
from evaluators import registry

from . import evaluate as ev
from . import storage as S
from .config import QUALITY_METRICS, StudyConfig, check_runnable_here
from .halving import front_rung, nondominated_ranks, promote, rung_of

log = logging.getLogger("pocketdiff.study")


class StudyError(UserError):
    """A study cannot run as asked (unreachable storage, a clashing study); the message says why."""



class StopEarly(Exception):
    """Raised from the quality run's step callback to stop a clearly worse candidate."""


# --- storage and study ------------------------------------------------------------------------------

def open_storage(url: str, cfg: StudyConfig | None = None) -> RDBStorage:
    """An RDB storage for a writer, with heartbeats; fails with a clear message before any work if it cannot
    connect. Optuna's tables are created under a lock in the storage (studies/storage.py), so workers that start
    together on a fresh database do not race."""
    kwargs: dict[str, Any] = {}
    if cfg is not None:
        kwargs = dict(heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period,
                      heartbeat_stale_trial_callback=RequeueKilled(cfg.max_retry))
    try:
        return S.open_for_writing(url, **kwargs)
    except S.StorageError as e:
        raise StudyError(str(e)) from None


KILL_RETRY_LIMIT = 20  # queued work (presets, promotions) killed this many times in a row is given up, loudly


class RequeueKilled:
    """Re-queue a trial whose process was killed (stale heartbeat, or a dead PID on this host) with the same
    parameters and user attributes. A kill is never the trial's own failure: enqueued presets and promotions are
    re-queued until they finish (up to KILL_RETRY_LIMIT kills, against a design that kills its worker every
    time); sampled trials up to `max_retry` times (the sampler proposes others meanwhile). A trial that raises
    fails for its own reason and is not retried."""

    def __init__(self, max_retry: int):
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        queued = bool(trial.user_attrs.get("enqueued_preset")) or trial.user_attrs.get("promoted_from") is not None
        limit = KILL_RETRY_LIMIT if queued else self.max_retry
        if len(history) > limit:
            log.warning("trial %d was killed %d times; not re-queued (limit %d)", trial.number, len(history), limit)
            return
        user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in PER_RUN_ATTRS}
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, user_attrs=user_attrs,
            system_attrs={**trial.system_attrs, "failed_trial": history[0], "retry_history": history}))
        log.info("trial %d was killed: re-queued with the same parameters (kill %d)", trial.number, len(history))


# what one run of a trial wrote about itself; a re-queued copy starts without them
PER_RUN_ATTRS = ("worker_host", "worker_pid", "worker_started", "fail_reason", "killed", "curve",
                 "evaluator_seconds", "duplicate_of", "reused_from")


def _process_start(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (Linux /proc), or None where unknown; with the PID
    it names a process exactly (a PID is reused, a PID and its start time are not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie: dead, only not yet reaped by its parent
        return -1
    return int(fields[19])


def process_alive(pid: int, started: int | None) -> bool:
    if Path("/proc/self/stat").exists():
        now = _process_start(pid)
        return now is not None and now != -1 and (started is None or now == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_identity() -> dict[str, Any]:
    """Host, PID and process start time: stored on every trial this process runs (see `fail_ghost_trials`)."""
    return {"worker_host": socket.gethostname(), "worker_pid": os.getpid(),
            "worker_started": _process_start(os.getpid())}


def fail_ghost_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue at once the RUNNING trials owned by a process on this host that is gone (a SIGKILL
    leaves them RUNNING until their heartbeat goes stale, longer than a quick rerun takes). Other hosts'
    trials keep the heartbeat rule. Returns the trial numbers failed here."""
    host, failed = socket.gethostname(), []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        if a.get("worker_host") != host or not isinstance(a.get("worker_pid"), int):
            continue
        if process_alive(a["worker_pid"], a.get("worker_started")):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "killed", f"process {a['worker_pid']} on {host} is gone")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another starting worker failed it first
        failed.append(t.number)
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))
    return failed


def make_sampler(cfg: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    seed = cfg.seed if seed is None else seed
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(cfg.space.grid(), seed=seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, cfg.n_trials or 20)))
    if cfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(2, (cfg.n_trials or 20) // 3))
    if cfg.halving is not None:
        # TPE would model first-rung and promoted (longer-budget, better-scoring) trials as one population
        # and keep re-proposing the promoted designs, so the first n_trials candidates are drawn at random.
        # TPE counts every trial towards its start-up, promotions included: a run of n candidates holds at
        # most n * r / (r - 1) <= 2n trials for a reduction r >= 2.
        startup = max(startup, 2 * (cfg.n_trials or 0))
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)


def worker_seed(study_seed: int, worker: int) -> int:
    """The sampler seed of the study's `worker`-th run (every `study run`/`worker` process, restarts included,
    claims the next index): the first uses the study's seed, so a fresh single run is reproducible; the others
    get seeds derived from it, so workers and restarts do not propose the same sequence again."""
    if worker == 0:
        return study_seed
    return int.from_bytes(hashlib.sha256(f"{study_seed}:{worker}".encode()).digest()[:4], "big")


def _url_of(storage: Any, fallback: str) -> str:
    return str(getattr(getattr(storage, "_backend", storage), "url", "") or fallback)


def open_study(cfg: StudyConfig, storage: RDBStorage | None = None, claim_worker: bool = False) -> optuna.Study:
    """Create the study, or load it after checking that its definition did not change.

    Creation is one step under a lock held in the storage: the study, its definition (the file's fingerprint,
    metric names, rungs) and the enqueued presets; a `created` marker is written last. A creation cut short (a
    kill, a lost connection) has no marker, and the next opener finishes it: writes what is missing and enqueues
    the presets that have no trial yet. With `claim_worker` this run also claims the next worker index, which
    seeds its sampler (`worker_seed`); `study.user_attrs` are not changed otherwise.
    """
    storage = storage or open_storage(cfg.storage, cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one-line summaries replace Optuna's logs
    fingerprint = cfg.fingerprint()
    url = _url_of(storage, cfg.storage)
    with S.named_lock(url, f"pocketdiff-open:{cfg.name}", engine=getattr(storage, "engine", None)):
        study = optuna.create_study(study_name=cfg.name, storage=storage, directions=cfg.directions,
                                    sampler=make_sampler(cfg), load_if_exists=True)
        stored = study.user_attrs.get("definition")
        if stored is not None and stored != fingerprint:
            raise StudyError(f"storage already holds a study named {cfg.name!r} with a different definition "
                             f"({_first_difference(stored, fingerprint)}); rename the study or use another storage")
        if [d.name.lower() for d in study.directions] != cfg.directions:
            raise StudyError(f"study {cfg.name!r} exists with directions "
                             f"{[d.name.lower() for d in study.directions]}, the file asks for {cfg.directions}")
        if not study.user_attrs.get("created"):
            _finish_creation(cfg, study, fingerprint)
        if claim_worker:
            worker = int(study.user_attrs.get("workers", 0))
            study.set_user_attr("workers", worker + 1)
            study.worker_index = worker  # type: ignore[attr-defined]  (read by run_study's first line)
            study.sampler = make_sampler(cfg, worker_seed(cfg.seed, worker))
    return study


def _finish_creation(cfg: StudyConfig, study: optuna.Study, fingerprint: dict) -> None:
    """Write the study's definition and enqueue its presets; idempotent (run again after a cut-short creation,
    it only adds what is missing), and called under the study's open lock."""
    if study.user_attrs.get("definition") is None:
        study.set_user_attr("definition", fingerprint)
    study.set_user_attr("metric_names", cfg.metric_names)
    study.set_user_attr("study_file", cfg.path)
    with warnings.catch_warnings():  # experimental in Optuna 5, and what the dashboard labels axes with
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(cfg.metric_names)
    if cfg.rungs:
        study.set_user_attr("rungs", list(cfg.rungs))
    have: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        p = t.user_attrs.get("enqueued_preset")
        if p and rung_of(t) == 0 and t.system_attrs.get("failed_trial") is None:
            have[p] = have.get(p, 0) + 1
    for preset in cfg.enqueue:
        if have.get(preset, 0) > 0:
            have[preset] -= 1  # a preset listed twice is enqueued twice
            continue
        study.enqueue_trial({"preset": preset} if cfg.space.preset_choices else {},
                            user_attrs={"enqueued_preset": preset}, skip_if_exists=False)
    study.set_user_attr("created", True)


def _first_difference(stored: Any, file: Any) -> str:
    """The first field (dotted path, search_space/paths.py) where a stored definition and the file's differ."""
    from search_space.paths import MISSING, diff

    changed = diff(stored, file)
    if not changed:
        return "definition"
    path, a, b = changed[0]
    show = (lambda v: "(absent)" if v is MISSING else json.dumps(v)[:120])
    return f"{path or 'definition'}: stored {show(a)}, file {show(b)}"


# --- the objective --------------------------------------------------------------------------------------

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

    @property
    def all_failed(self) -> bool:
        """This run ran trials and every one of them FAILed (a study that cannot work: `study run` exits 1)."""
        return bool(self.states) and all(s == "FAIL" for s in self.states)

    @property
    def overhead_share(self) -> float:
        total = max(self.run_seconds, self.trial_seconds)
        return 0.0 if total <= 0 else max(0.0, 1 - self.evaluator_seconds / total)


def _spec_for_trial(cfg: StudyConfig, trial: optuna.Trial) -> Spec:
    promoted = trial.user_attrs.get("promoted_spec")
    if promoted:  # a promotion trains exactly the candidate of the lower rung
        from search_space import spec_from_dict
        if trial.user_attrs.get("params_fixed"):
            cfg.space.sample(trial)  # records the enqueued parameters, so the sampler sees them at every rung
        return spec_from_dict(promoted)
    preset = trial.user_attrs.get("enqueued_preset")
    if preset and not cfg.space.preset_choices:
        return PRESETS[preset]
    return cfg.space.sample(trial)


def rung_budget(cfg: StudyConfig, rung: int) -> str:
    """The training budget of a rung (the study's one budget when it has no rungs)."""
    return cfg.rungs[rung] if cfg.rungs else str(cfg.quality.get("budget", "60s"))


def at_rung(cfg: StudyConfig, rung: int) -> StudyConfig:
    """The study config with this rung's budget (and seeds, with `rung_seeds`) in [quality]: the path every
    budget takes to the evaluator and into the evaluation key (studies/evaluate.py reads them from there)."""
    import dataclasses
    quality = {**cfg.quality, "budget": rung_budget(cfg, rung)}
    if cfg.rung_seeds:
        quality["seeds"] = cfg.rung_seeds[rung]
    return dataclasses.replace(cfg, quality=quality)


def _curve_threshold(study: optuna.Study, fraction: float, quantile: float,
                     rung: int = 0) -> tuple[float, int] | None:
    """Quantile of finished trials' validation loss at (or just before) the same share of the budget, among
    trials of the same rung (another rung's curve is over another budget).

    Curves are compared at equal budget fractions, not equal steps: the budget (wall seconds or steps) is the
    protocol, and a slower candidate has had fewer steps at the same point of it.
    """
    values = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if rung_of(t) != rung:
            continue
        curve = t.user_attrs.get("curve")
        if not curve:
            continue
        points = [loss for _, loss, f in curve if f <= fraction + 1e-9]
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
        for k, v in self.identity.items():  # whose trial this is: a rerun on this host fails it if we are gone
            trial.set_user_attr(k, v)
        try:
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded on the trial; the study goes on (optimize(catch=...))
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:2000])
            raise
        finally:
            self.stats.trial_seconds += time.perf_counter() - t_start
            self.stats.evaluator_seconds += trial.user_attrs.get("evaluator_seconds", 0.0)

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        cfg = self.cfg
        try:
            spec = _spec_for_trial(cfg, trial)
        except SpecError as e:
            trial.set_user_attr("fail_reason", f"invalid spec: {e}")
            raise
        trial.set_user_attr("spec", json.loads(spec.to_json()))
        trial.set_user_attr("compact", encode(spec))
        trial.set_user_attr("kind", spec.kind)
        rung = rung_of(trial)
        sampled = not (trial.user_attrs.get("promoted_spec") or trial.user_attrs.get("enqueued_preset"))
        twin = self._claim(trial, spec, rung) if sampled else None
        if not sampled:
            trial.set_user_attr("spec_id", spec.spec_id)
        if twin is not None:
            return self._reuse(trial, twin, rung)
        trial.set_user_attr("rung", rung)
        trial.set_user_attr("budget", rung_budget(cfg, rung))
        trial.set_user_attr("candidate", trial.user_attrs.get("candidate") or spec.spec_id)
        enqueued = trial.user_attrs.get("enqueued_preset")
        preset = enqueued if enqueued and PRESETS[enqueued] == spec else next(
            (n for n, s in PRESETS.items() if s == spec), None)
        if preset:
            trial.set_user_attr("preset", preset)
        if isinstance(trial.params.get("preset"), str):  # the preset a grid point starts from (paper-fig3's
            trial.set_user_attr("base_preset", trial.params["preset"])  # step under another block reading)

        metrics = ev.cheap_metrics(spec, cfg.latent, cfg.device)
        for k, v in metrics.items():
            trial.set_user_attr(k, v)
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
            trial.set_user_attr("infeasible", reason)
            raise optuna.TrialPruned(reason)

        if cfg.quality_evaluator != "none" and any(m in QUALITY_METRICS for m in cfg.metric_names):
            metrics.update(self._quality(trial, spec, rung))

        values = []
        for name in cfg.metric_names:
            v = metrics.get(name)
            if v is None or not math.isfinite(v):
                raise RuntimeError(f"objective {name} missing or not finite in the results: {v}")
            values.append(float(v))
        return tuple(values)

    def _claim(self, trial: optuna.Trial, spec: Spec, rung: int) -> optuna.trial.FrozenTrial | None:
        """Make this sampled spec this trial's, unless the study already holds it at this rung: a finished
        twin is returned (its result is reused); a running or queued one ends this trial PRUNED with
        `duplicate_of` (the next trial samples anew; it does not count towards n_trials). The check and the
        claim (writing `spec_id`) happen under a lock in the storage, so two workers that sample the same spec
        at the same moment never both train it."""
        storage = self.study._storage
        url = _url_of(storage, self.cfg.storage)
        engine = getattr(getattr(storage, "_backend", storage), "engine", None)
        with S.named_lock(url, f"pocketdiff-claim:{self.study.study_name}", engine=engine):
            twin = _twin(self.cfg, self.study, trial.number, spec.spec_id, rung)
            trial.set_user_attr("spec_id", spec.spec_id)
        if twin is None or twin.state in FINISHED:
            return twin
        where = "running" if twin.state == TrialState.RUNNING else "queued"
        reason = f"re-sampled: spec {spec.spec_id} is already {where} in trial {twin.number}"
        trial.set_user_attr("duplicate_of", twin.number)
        trial.set_user_attr("duplicate", reason)
        log.info("trial %d: %s", trial.number, reason)
        raise optuna.TrialPruned(reason)

    def _reuse(self, trial: optuna.Trial, twin: optuna.trial.FrozenTrial, rung: int) -> tuple[float, ...]:
        """This trial's result is the finished twin's (same spec, same rung, so same evaluation): copied,
        marked `reused_from`, nothing evaluated again."""
        trial.set_user_attr("reused_from", twin.number)
        trial.set_user_attr("cached_from", f"trial {twin.number}")
        for k, v in twin.user_attrs.items():
            if k not in trial.user_attrs and k not in PER_RUN_ATTRS and k not in ("enqueued_preset", "retried"):
                trial.set_user_attr(k, v)
        for name, value in (twin.constraints or {}).items():
            trial.set_constraint(name, float(value))
        log.info("trial %d: spec %s already evaluated in trial %d: reused its result", trial.number,
                 twin.user_attrs.get("spec_id"), twin.number)
        if twin.state == TrialState.PRUNED:
            reason = twin.user_attrs.get("infeasible") or twin.user_attrs.get("early_stopped") or "pruned"
            raise optuna.TrialPruned(f"{reason} (reused from trial {twin.number})")
        return tuple(float(v) for v in twin.values)

    def _quality(self, trial: optuna.Trial, spec: Spec, rung: int) -> dict[str, float]:
        cfg = at_rung(self.cfg, rung)
        key = ev.evaluation_key(spec, cfg)
        trial.set_user_attr("eval_key", key)
        cached = self._cached(key, cfg)
        if cached is not None:
            trial.set_user_attr("cached_from", cached.get("source", "cache"))
            for k, v in cached["user_attrs"].items():
                trial.set_user_attr(k, v)
            return cached["metrics"]

        out_dir = self.artifacts / f"trial-{trial.number:04d}-{spec.spec_id}"
        curve: list[tuple[int, float, float]] = []  # (step, val_loss, budget fraction)
        es = cfg.early_stop

        def on_report(fraction: float, values: dict[str, float]) -> None:
            loss, step = values.get("val_loss"), int(values["step"])
            if loss is None:
                return
            curve.append((step, float(loss), round(fraction, 4)))
            trial.set_user_attr("curve", curve)
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
            trial.set_user_attr("evaluator_seconds", time.perf_counter() - t0)
            trial.set_user_attr("early_stopped", str(e))
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("evaluator_seconds", result.pop("_evaluator_seconds", time.perf_counter() - t0))
        user_attrs = result.pop("_user_attrs", {})
        if result.get("diverged_at_step") is not None:
            raise RuntimeError(f"diverged at step {int(result['diverged_at_step'])}")
        user_attrs["curve"] = curve
        user_attrs["artifacts"] = str(out_dir)
        for k, v in {**user_attrs, **result}.items():
            trial.set_user_attr(k, v)
        if ev.portable(cfg):
            ev.store_cache(key, result, user_attrs)
        return result

    def _cached(self, key: str, cfg: StudyConfig) -> dict | None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("eval_key") == key:
                metrics = {m: v for m, v in t.user_attrs.items() if registry.is_quality_metric(m)}
                attrs = {k: t.user_attrs[k] for k in ("curve", "artifacts", "proxy", "per_seed") if k in t.user_attrs}
                return {"metrics": metrics, "user_attrs": attrs, "source": f"trial {t.number}"}
        return ev.load_cache(key) if ev.portable(cfg) else None


def _queued_spec_id(cfg: StudyConfig, t: optuna.trial.FrozenTrial) -> str | None:
    """The spec_id a WAITING trial will train (it has no `spec_id` attribute until it runs)."""
    from search_space import spec_from_dict
    a = t.user_attrs
    try:
        if a.get("promoted_spec"):
            return spec_from_dict(a["promoted_spec"]).spec_id
        if a.get("enqueued_preset") and not cfg.space.preset_choices:
            return PRESETS[a["enqueued_preset"]].spec_id
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
        if t.number == number or rung_of(t) != rung or t.user_attrs.get("duplicate_of") is not None:
            continue
        if t.state == TrialState.WAITING:
            same = _queued_spec_id(cfg, t) == spec_id
        else:
            same = t.user_attrs.get("spec_id") == spec_id
        if same and t.state != TrialState.FAIL:
            found.setdefault(t.state.name, t)
    for state in ("COMPLETE", "PRUNED", "RUNNING", "WAITING"):
        if state in found:
            return found[state]
    return None


# --- running ----------------------------------------------------------------------------------------------

def _summary_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    a = trial.user_attrs
    head = f"trial {trial.number:>3} {trial.state.name:<8} {a.get('preset') or a.get('spec_id', '?')}"
    if study.user_attrs.get("rungs"):
        head += f" [rung {rung_of(trial)} {a.get('budget', '')}]"
    if trial.state == TrialState.COMPLETE:
        names = study.user_attrs.get("metric_names") or [f"v{i}" for i in range(len(trial.values))]
        vals = "  ".join(f"{n}={v:.4g}" for n, v in zip(names, trial.values))
        extra = f" (reused the result of {a['cached_from']})" if a.get("cached_from") else ""
        return f"{head}  {vals}{extra}"
    reason = (a.get("duplicate") or a.get("infeasible") or a.get("early_stopped") or a.get("fail_reason")
              or a.get("killed") or "")
    return f"{head}  {reason}"


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # FAIL trials are retried, so they do not count


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards n_trials: COMPLETE or PRUNED, a re-sampled duplicate aside."""
    return sum(t.user_attrs.get("duplicate_of") is None for t in study.get_trials(deepcopy=False, states=FINISHED))


class StopAtFinished:
    """Stop this run once the study holds `n` counted trials (`finished_count`, across every worker), or once
    this run has made its `budget` attempts; a re-sampled duplicate gives its attempt back (up to
    REPROPOSAL_LIMIT * n in all, against a sampler that keeps proposing what runs elsewhere)."""

    def __init__(self, n: int, budget: int):
        self.n, self.budget, self.ran = n, budget, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.ran += 1
        if trial.user_attrs.get("duplicate_of") is not None and self.budget < REPROPOSAL_LIMIT * max(self.n, 1):
            self.budget += 1
        if finished_count(study) >= self.n or self.ran >= self.budget:
            study.stop()


def run_study(cfg: StudyConfig, n_trials: int | None = None, timeout: float | None = None,
              progress: bool = True, echo: Callable[[str], None] = print) -> tuple[optuna.Study, RunStats]:
    """Run (or resume) the study.

    Without `n_trials` it runs until the study holds the file's `n_trials` finished trials (COMPLETE or
    PRUNED), counted across every worker on the storage, so a resumed or second run only does what is left.
    With `n_trials` it runs that many more. `timeout` stops starting new trials after that many seconds.
    """
    if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 1):
        raise StudyError(f"--n-trials {n_trials} must be a whole number >= 1 (leave it out to run until the "
                         f"study has the file's n_trials)")
    if timeout is not None and not timeout > 0:
        raise StudyError(f"--timeout {timeout} must be a number of seconds > 0")
    check_runnable_here(cfg)
    t_start = time.perf_counter()
    storage = open_storage(cfg.storage, cfg)
    study = open_study(cfg, storage, claim_worker=True)
    worker = getattr(study, "worker_index", 0)
    echo(f"worker {worker} of study {cfg.name}: sampler seed {worker_seed(cfg.seed, worker)} "
         f"(study seed {cfg.seed}{', derived for this worker' if worker else ''})")
    ghosts = fail_ghost_trials(study)  # a killed earlier run's trials on this host: failed and re-queued now
    if ghosts:
        echo(f"re-queued {len(ghosts)} trial(s) whose process on this host is gone: "
             f"{', '.join(map(str, ghosts))}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other hosts' killed runs (heartbeat expired)
    stats = RunStats()
    objective = Objective(cfg, study, stats, artifact_dir(cfg))
    try:
        _optimize(cfg, study, objective, stats, n_trials, timeout, progress, echo)
    finally:
        stats.run_seconds = time.perf_counter() - t_start
    return study, stats


def _optimize(cfg: StudyConfig, study: optuna.Study, objective: "Objective", stats: RunStats, n_trials: int | None,
              timeout: float | None, progress: bool, echo: Callable[[str], None]) -> None:
    """run_study's trial loop (timed as a whole by run_study, for the overhead share)."""
    timeout = timeout if timeout is not None else cfg.timeout
    callbacks: list = []
    grid_left = None
    if cfg.sampler == "grid":
        grid = cfg.space.grid() or {}
        grid_left = max(0, (int(np.prod([len(v) for v in grid.values()])) if grid else 1) - finished_count(study))
    if n_trials is None and cfg.n_trials is not None:
        n_trials = max(0, cfg.n_trials - finished_count(study))
        if grid_left is not None:
            n_trials = min(n_trials, grid_left)
        if cfg.halving is None and n_trials:
            callbacks.append(StopAtFinished(cfg.n_trials, n_trials))
            n_trials = None  # the callback counts
        n_trials = None if cfg.halving is not None else n_trials  # rungs: `_run_halving` counts candidates
    elif grid_left is not None and n_trials is not None:
        n_trials = min(n_trials, grid_left)

    def summary(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = _summary_line(study, trial)
        stats.finished.append(line)
        stats.states.append(trial.state.name)
        echo(line)

    # a failed trial is our one summary line with its reason; Optuna would add its traceback at WARNING level
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if cfg.halving is not None:
        _run_halving(cfg, study, objective, n_trials, timeout, summary)
    elif n_trials != 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,),
                       callbacks=[summary, *callbacks], show_progress_bar=progress and n_trials is not None,
                       gc_after_trial=True)


REPROPOSAL_LIMIT = 3  # first-rung trials per asked-for candidate before a stuck sampler ends the run


def _run_halving(cfg: StudyConfig, study: optuna.Study, objective: Objective, n_trials: int | None,
                 timeout: float | None, summary: Callable) -> None:
    """One trial at a time: first enqueue what is due for promotion (studies/halving.py), then run a waiting
    promotion or, while the study holds fewer than `n_trials` candidates at the first rung (any worker's,
    failures aside), a newly sampled one. With `n_trials` given, runs that many trials of any rung."""
    rungs = cfg.halving
    t0, ran = time.monotonic(), 0
    while timeout is None or time.monotonic() - t0 < timeout:
        promote(study, rungs)
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if n_trials is not None:
            if ran >= n_trials:
                break
        elif not waiting:
            first = [t for t in trials if rung_of(t) == 0 and t.state != TrialState.FAIL
                     and t.user_attrs.get("duplicate_of") is None]
            # distinct designs: a re-proposed spec (served from the cache) is no new candidate to promote
            candidates = len({t.user_attrs.get("candidate") or t.number for t in first})
            if candidates >= (cfg.n_trials or 0):
                break
            if len(first) >= REPROPOSAL_LIMIT * (cfg.n_trials or 0):
                log.warning("the sampler keeps proposing designs already evaluated: stopping with %d distinct "
                            "candidates of the %d asked for", candidates, cfg.n_trials)
                break
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[summary], gc_after_trial=True)
        ran += 1


def artifact_dir(cfg: StudyConfig) -> Path:
    base = Path(os.environ.get("POCKETDIFF_RUNS", "runs"))
    if cfg.storage.startswith("sqlite:///"):
        base = Path(cfg.storage[len("sqlite:///"):]).parent
    path = base / cfg.name / "artifacts" if not cfg.storage.startswith("sqlite:///") else base / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """The rung budgets of a stored study, lowest first (one entry for a single-budget study)."""
    rungs = study.user_attrs.get("rungs")
    if rungs:
        return list(rungs)
    quality = (study.user_attrs.get("definition") or {}).get("quality") or {}
    return [str(quality["budget"])] if "budget" in quality else [""]


def front_note(study: optuna.Study) -> str:
    """Which rung the Pareto front comes from, in words (printed beside every front)."""
    rungs = study_rungs(study)
    r = front_rung(study.get_trials(deepcopy=False), len(rungs))
    if len(rungs) < 2:
        return "Pareto front over every finished trial (one budget" + (f": {rungs[0]})" if rungs[0] else ")")
    top = len(rungs) - 1
    if r is None:
        return f"no trial finished yet; the front will come from the top rung ({rungs[top]})"
    if r == top:
        return f"Pareto front from the top rung only (rung {top}, {rungs[top]}); lower rungs rank, never enter"
    return (f"the top rung ({rungs[top]}) has no finished trial yet: provisional front from rung {r} "
            f"({rungs[r]})")


def pareto_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Feasible Pareto-optimal trials of the front rung (the top rung; see `front_note`) as flat rows: metrics,
    their seed intervals where the evaluator gave them (`<metric>_ci_low/_high`), the rung, and the spec's
    identity; one row per spec."""
    names = study.user_attrs.get("metric_names") or [f"objective_{i}" for i in range(len(study.directions))]
    directions = [d.name.lower() for d in study.directions]
    trials = study.get_trials(deepcopy=False)
    r = front_rung(trials, len(study_rungs(study)))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                   and rung_of(t) == r and not any(v > 0 for v in (t.constraints or {}).values())),
                  key=lambda t: t.number)
    if not done:
        return []
    on_front = nondominated_ranks(np.array([t.values for t in done]), directions) == 0
    rows = []
    seen: set[str] = set()
    for t, keep in zip(done, on_front):
        if not keep or t.user_attrs.get("spec_id") in seen:
            continue  # a re-proposed spec (served from the evaluation cache) is the same design
        seen.add(t.user_attrs.get("spec_id"))
        row = {"number": t.number, **dict(zip(names, t.values))}
        for n in names:
            for bound in ("_ci_low", "_ci_high"):
                if n + bound in t.user_attrs:
                    row[n + bound] = t.user_attrs[n + bound]
        row.update({"rung": rung_of(t), "budget": t.user_attrs.get("budget", ""),
                    "spec_id": t.user_attrs.get("spec_id"), "preset": t.user_attrs.get("preset", ""),
                    "compact": t.user_attrs.get("compact")})
        rows.append(row)
    return sorted(rows, key=lambda r: r[names[0]])
