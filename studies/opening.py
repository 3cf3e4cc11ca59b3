"""Opening a study to run it: the storage with heartbeats, the sampler, the check that the stored study is the
file's, and the study's one-time creation with its enqueued presets (docs/studies.md).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import optuna
from optuna.storages import BaseStorage

from . import record as R
from . import storage as S
from .config import StudyConfig
from .record import TrialRecord
from .storage import StudyError
from .workers import RequeueKilled


def open_storage(url: str, cfg: StudyConfig | None = None) -> BaseStorage:
    """A storage for a writer (RDB or journal), with heartbeats; fails with a clear message before any work if it cannot
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
    if cfg.quality.rungs is not None:
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


def open_study(cfg: StudyConfig, storage: BaseStorage | None = None, claim_worker: bool = False) -> optuna.Study:
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
    url = S.url_of(storage, cfg.storage)
    with S.named_lock(url, f"pocketdiff-open:{cfg.name}", engine=S.engine_of(storage)):
        study = optuna.create_study(study_name=cfg.name, storage=storage, directions=cfg.directions,
                                    sampler=make_sampler(cfg), load_if_exists=True)
        stored = study.user_attrs.get(R.DEFINITION)
        if stored is not None and stored != fingerprint:
            raise StudyError(f"storage already holds a study named {cfg.name!r} with a different definition "
                             f"({_first_difference(stored, fingerprint)}); rename the study or use another storage")
        if [d.name.lower() for d in study.directions] != cfg.directions:
            raise StudyError(f"study {cfg.name!r} exists with directions "
                             f"{[d.name.lower() for d in study.directions]}, the file asks for {cfg.directions}")
        if not study.user_attrs.get(R.CREATED):
            _finish_creation(cfg, study, fingerprint)
        if claim_worker:
            worker = int(study.user_attrs.get(R.WORKERS, 0))
            study.set_user_attr(R.WORKERS, worker + 1)
            study.worker_index = worker  # type: ignore[attr-defined]  (read by run_study's first line)
            study.sampler = make_sampler(cfg, worker_seed(cfg.seed, worker))
    return study


def _finish_creation(cfg: StudyConfig, study: optuna.Study, fingerprint: dict) -> None:
    """Write the study's definition and enqueue its presets; idempotent (run again after a cut-short creation,
    it only adds what is missing), and called under the study's open lock."""
    if study.user_attrs.get(R.DEFINITION) is None:
        study.set_user_attr(R.DEFINITION, fingerprint)
    study.set_user_attr(R.METRIC_NAMES, cfg.metric_names)
    study.set_user_attr(R.STUDY_FILE, cfg.path)
    with warnings.catch_warnings():  # experimental in Optuna 5, and what the dashboard labels axes with
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(cfg.metric_names)
    rungs = cfg.quality.rungs
    if rungs:
        study.set_user_attr(R.RUNGS, [rungs.label(r) for r in range(len(rungs.budgets))])
    have: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(t)
        p = rec.enqueued_preset
        if p and rec.rung == 0 and t.system_attrs.get("failed_trial") is None:
            have[p] = have.get(p, 0) + 1
    for preset in cfg.enqueue:
        if have.get(preset, 0) > 0:
            have[preset] -= 1  # a preset listed twice is enqueued twice
            continue
        _enqueue_preset(cfg, study, preset)
    study.set_user_attr(R.CREATED, True)


def _enqueue_preset(cfg: StudyConfig, study: optuna.Study, preset: str) -> None:
    study.enqueue_trial({"preset": preset} if cfg.space.preset_choices else {}, user_attrs=R.enqueued(preset),
                        skip_if_exists=False)


PRESET_ATTEMPTS = 2  # an enqueued preset that fails is enqueued once more (a cache race, a full disk), not again


def retry_failed_presets(cfg: StudyConfig, study: optuna.Study, echo=None) -> list[str]:
    """Enqueue again each enqueued preset that has only failed trials at the first rung (nothing finished,
    waiting or running), up to PRESET_ATTEMPTS in all: the front is read against the presets, so one lost to an
    environmental failure is worth a second attempt. Call under a lock held in the storage (two workers must not
    both re-enqueue it). Returns the presets enqueued."""
    from .queries import presets_without_result

    lost = presets_without_result(study, cfg.enqueue)
    again = [p for p, failures in lost.items() if len(failures) < PRESET_ATTEMPTS]
    for preset in again:
        _enqueue_preset(cfg, study, preset)
        if echo:
            echo(f"enqueued preset {preset} again: its first trial failed (attempt {PRESET_ATTEMPTS} of "
                 f"{PRESET_ATTEMPTS})")
    return again


def _first_difference(stored: Any, file: Any) -> str:
    """The first field (dotted path, search_space/paths.py) where a stored definition and the file's differ."""
    from search_space.paths import MISSING, diff

    changed = diff(stored, file)
    if not changed:
        return "definition"
    path, a, b = changed[0]
    show = (lambda v: "(absent)" if v is MISSING else json.dumps(v)[:120])
    return f"{path or 'definition'}: stored {show(a)}, file {show(b)}"
