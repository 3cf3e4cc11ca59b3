"""Run a study: the run loops over the trial objective (studies/objective.py).

`run_study` opens the storage and the study (studies/opening.py), fails and re-queues this host's ghost trials
(studies/workers.py) and runs trials until the study holds the file's `n_trials` finished ones, counted across
every worker on the storage. A single-budget study runs Optuna's `optimize`; with `[quality] rungs` a study is
multi-fidelity: sampled candidates train at the first rung's budget and studies/halving.py promotes the best
share of each rung to the next (successive halving, decided from the storage), one trial at a time. Each
finished trial prints one summary line; the CLI prints the front (studies/queries.py) and the overhead share.
Storage: SQLite by default, PostgreSQL/MySQL URLs for many workers (docs/studies.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import optuna
from optuna.trial import TrialState

from search_space.outputs import check_output_dir

from . import record as R
from .config import StudyConfig, check_jobs, check_runnable_here
from .halving import first_rung_counts, first_rung_full, promote, promotion_lock, sampling_lock
from .objective import Objective, RunStats
from .opening import open_storage, open_study, retry_failed_presets, worker_seed
from .queries import finished_count, metric_names
from .record import TrialRecord
from .storage import StudyError, parse_url
from .workers import fail_ghost_trials, one_thread, start_local_workers, wait_local_workers

log = logging.getLogger("pocketdiff.study")


def _summary_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, rungs: bool) -> str:
    """One line per finished trial: number, state, design, [rung and budget], its values (with the learned
    fraction where the quality evaluator records one) or its reason."""
    rec = TrialRecord.of(trial)
    head = f"trial {trial.number:>3} {trial.state.name:<8} {rec.label}"
    if rungs:
        head += f" [rung {rec.rung} {rec.budget}]"
    if trial.state == TrialState.COMPLETE:
        names = metric_names(study)
        vals = "  ".join(f"{n}={v:.4g}" for n, v in zip(names, trial.values))
        if rec.learned_fraction is not None and R.LEARNED_FRACTION not in names:
            vals += f"  {R.LEARNED_FRACTION}={rec.learned_fraction:.3g}"
            low, high = rec.get(f"{R.LEARNED_FRACTION}_ci_low"), rec.get(f"{R.LEARNED_FRACTION}_ci_high")
            if low is not None and high is not None:
                vals += f" [{low:.3g}, {high:.3g}]"
        extra = f" (reused the result of {rec.cached_from})" if rec.cached_from else ""
        return f"{head}  {vals}{extra}"
    return f"{head}  {rec.reason}"


def run_study(cfg: StudyConfig, n_trials: int | None = None, timeout: float | None = None,
              progress: bool = True, echo: Callable[[str], None] = print,
              jobs: int | None = None) -> tuple[optuna.Study, RunStats]:
    """Run (or resume) the study.

    Without `n_trials` it runs until the study holds the file's `n_trials` finished trials (COMPLETE or
    PRUNED), counted across every worker on the storage, so a resumed or second run only does what is left.
    With `n_trials` it runs that many more. `timeout` stops starting new trials after that many seconds.
    `jobs` (default: the file's `[study] jobs`): worker processes on this host, this one included, one torch
    thread each; the others are `study worker` processes on the same storage, and the returned stats count
    every trial they finished in this run.
    """
    jobs = cfg.jobs if jobs is None else check_jobs(jobs, "--jobs")
    if jobs > 1 and n_trials is not None:
        raise StudyError(f"--n-trials {n_trials} runs that many trials in one process; with --jobs {jobs} leave it "
                         f"out (the workers run until the study has the file's n_trials)")
    if n_trials is not None and (not isinstance(n_trials, int) or n_trials < 1):
        raise StudyError(f"--n-trials {n_trials} must be a whole number >= 1 (leave it out to run until the "
                         f"study has the file's n_trials)")
    if timeout is not None and not timeout > 0:
        raise StudyError(f"--timeout {timeout} must be a number of seconds > 0")
    check_runnable_here(cfg)
    artifacts = artifact_dir(cfg)  # checked before the storage opens: a folder that cannot be written stops here
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
    _fail_stale(study)  # other hosts' killed runs (heartbeat expired)
    _retry_presets(cfg, study, echo)
    stats = RunStats(workers=jobs)
    objective = Objective(cfg, study, stats, artifacts)
    before = _ended(study)
    others = []
    if jobs > 1:
        one_thread()
        others = start_local_workers(cfg.path, cfg.storage, jobs - 1)
    try:
        _optimize(cfg, study, objective, stats, n_trials, timeout, progress and not others, echo)
    finally:
        codes = wait_local_workers(others)
        stats.run_seconds = time.perf_counter() - t_start
    if others:
        _count_other_workers(study, stats, before)
        if any(codes):
            echo(f"local worker(s) exited with {', '.join(map(str, codes))}; their trials are in the storage")
    return study, stats


_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _ended(study: optuna.Study) -> set[int]:
    """The trials that ended before this run; a queued preset or promotion (WAITING now) that a local worker
    runs belongs to this run's count."""
    return {t.number for t in study.get_trials(deepcopy=False, states=_ENDED)}


def _count_other_workers(study: optuna.Study, stats: RunStats, before: set[int]) -> None:
    """Add the trials the local workers finished in this run (any trial that had not ended when it began) to
    this process's stats (states, evaluator time)."""
    me = os.getpid()
    for t in study.get_trials(deepcopy=False, states=_ENDED):
        rec = TrialRecord.of(t)
        if t.number not in before and rec.worker[1] != me:
            stats.states.append(t.state.name)
            stats.evaluator_seconds += rec.evaluator_seconds


def _optimize(cfg: StudyConfig, study: optuna.Study, objective: Objective, stats: RunStats, n_trials: int | None,
              timeout: float | None, progress: bool, echo: Callable[[str], None]) -> None:
    """run_study's trial loop (timed as a whole by run_study, for the overhead share)."""
    timeout = timeout if timeout is not None else cfg.timeout
    grid_left = None
    if cfg.sampler == "grid":
        grid = cfg.space.grid() or {}
        grid_left = max(0, (int(np.prod([len(v) for v in grid.values()])) if grid else 1) - finished_count(study))
    counted = n_trials is None and cfg.n_trials is not None  # run until the study holds the file's n_trials
    if counted:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        # this run's attempts: what is left, and at least the queued trials (a preset enqueued again after a
        # failure); a re-proposal gives its attempt back
        n_trials = max(cfg.n_trials - finished_count(study), waiting)
    if grid_left is not None and n_trials is not None:
        n_trials = min(n_trials, grid_left)

    def summary(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = _summary_line(study, trial, cfg.quality.rungs is not None)
        stats.finished.append(line)
        stats.states.append(trial.state.name)
        echo(line)

    # a failed trial is our one summary line with its reason; Optuna would add its traceback at WARNING level
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if cfg.quality.rungs is not None:
        _run_halving(cfg, study, objective, None if counted else n_trials, timeout, summary, echo)
    elif counted:
        _run_counted(cfg, study, objective, n_trials, timeout, summary)
    elif n_trials != 0:
        study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=(Exception,), callbacks=[summary],
                       show_progress_bar=progress and n_trials is not None, gc_after_trial=True)


def _run_counted(cfg: StudyConfig, study: optuna.Study, objective: Objective, attempts: int,
                 timeout: float | None, summary: Callable) -> None:
    """A single-budget study run to the file's n_trials, one trial at a time: while the study holds fewer than
    n_trials distinct designs (finished, running or queued, any worker's, failures aside: `first_rung_full`; a
    single-budget study is one rung), start one more. The check and the trial it starts are one step under the
    storage's sampling lock, so concurrent workers never start the last place twice. A re-proposed design (its
    result reused, or a duplicate of a running one) adds no design and gives this run's attempt back; the study
    stops a sampler stuck re-proposing after REPROPOSAL_LIMIT attempts per asked-for design. `attempts` bounds
    this run's other trials (a study whose every trial fails ends)."""
    t0, ran = time.monotonic(), 0
    while ran < attempts and (timeout is None or time.monotonic() - t0 < timeout):
        with _sampling_slot(study) as slot:
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and first_rung_full(trials, cfg.n_trials or 0):
                _warn_if_stuck(trials, cfg.n_trials or 0)
                return
            trial = _run_one(slot, study, objective, summary)
        rec = TrialRecord.of(trial) if trial is not None else None
        if rec is None or (rec.duplicate_of is None and rec.get(R.REUSED_FROM) is None and not rec.environmental):
            ran += 1  # a re-proposal, or a machine's failure queued again, gives its attempt back


def _warn_if_stuck(trials: list, n_trials: int) -> None:
    candidates = first_rung_counts(trials)[0]
    if candidates < n_trials:
        log.warning("the sampler keeps proposing designs already evaluated: stopping with %d distinct "
                    "candidates of the %d asked for", candidates, n_trials)


@contextlib.contextmanager
def _sampling_slot(study: optuna.Study) -> Iterator[contextlib.ExitStack]:
    """The storage's sampling lock, held from "is there a free place?" until the trial it starts is stored
    (`_run_one` frees it then) or the block ends: two workers that both see one free place would otherwise both
    sample."""
    with contextlib.ExitStack() as slot:
        slot.enter_context(sampling_lock(study._storage, study.study_name))
        yield slot


def _run_one(slot: contextlib.ExitStack, study: optuna.Study, objective: Objective,
             summary: Callable) -> optuna.trial.FrozenTrial | None:
    """Run one trial (a waiting one first, as Optuna does), freeing `slot` once Optuna has stored it as RUNNING;
    returns it as it ended."""
    ended: list[optuna.trial.FrozenTrial] = []

    def run(trial: optuna.Trial) -> tuple[float, ...]:
        slot.close()
        return objective(trial)

    study.optimize(run, n_trials=1, catch=(Exception,), callbacks=[summary, lambda _, t: ended.append(t)],
                   gc_after_trial=True)
    slot.close()  # a trial that never reached the objective
    return ended[0] if ended else None


WAIT_POLL_SECONDS = 2.0  # how often a worker with nothing to run looks again while other workers' trials run


def _run_halving(cfg: StudyConfig, study: optuna.Study, objective: Objective, n_trials: int | None,
                 timeout: float | None, summary: Callable, echo: Callable[[str], None] = print) -> None:
    """One trial at a time: first enqueue what is due for promotion (studies/halving.py), then run a waiting
    promotion or, while the first rung is not full (`first_rung_full`: the file's `n_trials` candidates, any
    worker's, failures aside), a newly sampled one. With nothing to run while other workers' trials are still
    running, wait for them: their results may promote more (a worker that left then would leave the promotions
    to one worker). With `n_trials` given, runs that many trials of any rung."""
    rungs = cfg.quality.rungs
    t0, ran, said = time.monotonic(), 0, False
    while timeout is None or time.monotonic() - t0 < timeout:
        promote(study, rungs)
        _retry_presets(cfg, study, echo)
        with _sampling_slot(study) as slot:
            trials = study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if n_trials is not None and ran >= n_trials:
                break
            if n_trials is None and not waiting and first_rung_full(trials, cfg.n_trials or 0):
                slot.close()
                if not said:
                    _warn_if_stuck(trials, cfg.n_trials or 0)
                running = [t.number for t in trials if t.state == TrialState.RUNNING]
                if not running:
                    break
                if not said:
                    echo(f"waiting for trial(s) {', '.join(map(str, running))} of other workers: their results "
                         f"may promote more")
                    said = True
                time.sleep(WAIT_POLL_SECONDS)
                # a killed worker's trial: failed and re-queued (then run here) at once on this host, by
                # heartbeat elsewhere
                fail_ghost_trials(study)
                _fail_stale(study)
                continue
            said = False
            _run_one(slot, study, objective, summary)
        ran += 1


def _fail_stale(study: optuna.Study) -> None:
    """Fail (and re-queue) the trials whose heartbeat went stale: Optuna's rule for other hosts' killed runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _retry_presets(cfg: StudyConfig, study: optuna.Study, echo: Callable[[str], None]) -> None:
    """A failed enqueued preset gets its second attempt (studies/opening.py), under the promotion lock: two
    workers never both re-enqueue it."""
    if cfg.enqueue:
        with promotion_lock(study._storage, study.study_name):
            retry_failed_presets(cfg, study, echo)


def artifact_dir(cfg: StudyConfig) -> Path:
    """Beside a SQLite or journal file (a journal's workers share its filesystem); `$POCKETDIFF_RUNS/NAME` (default
    runs/NAME) for a database server."""
    stored = parse_url(cfg.storage).path
    if stored is not None:
        path = stored.parent / "artifacts"
    else:
        path = Path(os.environ.get("POCKETDIFF_RUNS", "runs")) / cfg.name / "artifacts"
    check_output_dir(path, "artifact folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


