"""Workers and their trials: who runs a trial, whether that process is still alive, and what happens to work
whose process was killed (docs/studies.md, crash safety).

Every trial stores the host, PID and start time of the process that runs it (`worker_identity`). A killed
worker leaves its trial RUNNING: on its own host the next run fails it at once (`fail_ghost_trials`: the PID is
gone, or now names another process); elsewhere Optuna's heartbeat marks it FAIL once it goes stale. Either way
`RequeueKilled` puts the same parameters and record back in the queue, since a kill is never the trial's own
failure, and removes the artifact folder the killed run left half written. A trial that fails for the
machine's reason (`environmental`: a full disk, a cache file another worker's write took away) is queued again
once (`retry_environmental`).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search_space.cache import cache_root
from search_space.outputs import disk_errno

from . import record as R
from .record import FINISHED, RecordWriter, TrialRecord

log = logging.getLogger("pocketdiff.study")

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
        discard_partial_artifacts(study, trial)
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        limit = KILL_RETRY_LIMIT if TrialRecord.of(trial).queued else self.max_retry
        if len(history) > limit:
            log.warning("trial %d was killed %d times; not re-queued (limit %d)", trial.number, len(history), limit)
            return
        _requeue(study, trial, failed_trial=history[0], retry_history=history)
        log.info("trial %d was killed: re-queued with the same parameters (kill %d)", trial.number, len(history))


def _requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial, **system_attrs: Any) -> None:
    """Queue `trial` again: same parameters, its record less what its own run wrote (`record.requeued`)."""
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=R.requeued(trial.user_attrs), system_attrs={**trial.system_attrs, **system_attrs}))


ENVIRONMENTAL_RETRY_OF = "environmental_retry_of"  # system attribute of the copy: the trial whose failure it retries


def environmental(e: BaseException) -> bool:
    """Whether `e` is the machine's failure, not the design's, and one a second attempt may not meet: a full disk
    or an exhausted quota (search_space/outputs.py; space may be freed meanwhile, a read-only file system will
    not become writable), or a file of the project's cache gone from under the trial (another worker replacing
    the same entry)."""
    if disk_errno(e) in (errno.ENOSPC, errno.EDQUOT):
        return True
    root, seen = str(cache_root()), set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, FileNotFoundError) and any(
                str(f).startswith(root) for f in (e.filename, e.filename2) if f):
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_environmental(study: optuna.Study, trial: optuna.Trial, reason: str) -> bool:
    """Queue a trial that failed for the machine's reason once more (not a retry of a retry): its record says
    so, and the artifact folder it left half written is removed. Called while the trial still runs, so no
    worker sees it failed without its retry (an enqueued preset would be enqueued twice). Returns whether it
    was queued again."""
    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.system_attrs.get(ENVIRONMENTAL_RETRY_OF) is not None:
        return False
    RecordWriter.of(trial).environmental(f"{reason} (the machine's failure, not the design's: queued again once)")
    discard_partial_artifacts(study, frozen)
    _requeue(study, frozen, failed_trial=frozen.system_attrs.get("failed_trial", trial.number),
             **{ENVIRONMENTAL_RETRY_OF: trial.number})
    log.info("trial %d failed for the machine's reason: queued again once", trial.number)
    return True


def artifact_folder(root: Path, number: int, spec_id: str) -> Path:
    """Where trial `number` writes its samples, record and checkpoints."""
    return root / f"trial-{number:04d}-{spec_id}"


def discard_partial_artifacts(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Remove the artifact folder a trial that did not finish was writing. Only the trial's own folder (named
    after its number: a result it took from a finished twin or the cache names the twin's folder), and never one
    that a finished trial's record names."""
    folder = TrialRecord.of(trial).get(R.ARTIFACTS)
    if not isinstance(folder, str) or not Path(folder).name.startswith(artifact_folder(Path(), trial.number, "").name):
        return
    if any(TrialRecord.of(t).get(R.ARTIFACTS) == folder for t in study.get_trials(deepcopy=False, states=FINISHED)):
        return
    shutil.rmtree(folder, ignore_errors=True)


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
    """Host, PID and process start time of this process: stored on every trial it runs (`RecordWriter.worker`)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _process_start(os.getpid())}


def fail_ghost_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue at once the RUNNING trials owned by a process on this host that is gone (a SIGKILL
    leaves them RUNNING until their heartbeat goes stale, longer than a quick rerun takes). Other hosts'
    trials keep the heartbeat rule. Returns the trial numbers failed here."""
    host, failed = socket.gethostname(), []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_host, pid, started = TrialRecord.of(t).worker
        if trial_host != host or pid is None or process_alive(pid, started):
            continue
        try:
            RecordWriter(lambda k, v: storage.set_trial_user_attr(t._trial_id, k, v)).killed(
                f"process {pid} on {host} is gone")
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another starting worker failed it first
        failed.append(t.number)
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))
    return failed


# --- local worker processes (`study run` with jobs > 1) -----------------------------------------------------

def one_thread() -> None:
    """This process trains with one torch thread (its own and its children's): set before torch loads, and on
    torch if it already has."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _die_with_parent() -> None:
    """In a local worker, before it runs: on Linux, ask the kernel to send it SIGTERM when the `study run` that
    started it dies (even by SIGKILL), so no worker outlives its run and keeps training unseen; its trial is then
    failed and re-queued like any killed trial. Elsewhere a no-op: the parent's `finally` stops the workers on
    any exit it lives through."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_local_workers(study_file: str, storage: str, count: int) -> list[subprocess.Popen]:
    """`count` more workers of the study on this host (`pocketdiff study worker FILE --storage URL`), one torch
    thread each, each ended when this process dies; their trial lines go to this process's output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pocketdiff.cli", "study", "worker", study_file, "--storage", storage,
           "--no-progress", "--no-summary"]
    return [subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent) for _ in range(count)]


def wait_local_workers(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for the local workers; on an interrupt, stop them (their trials are then re-queued by the next run)."""
    try:
        return [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()

