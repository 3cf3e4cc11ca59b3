"""Multi-fidelity multi-objective search: asynchronous successive halving decided from the Optuna storage
(docs/studies.md, successive halving). A study file may replace its single quality budget with rungs:

    [quality]
    rungs = ["200steps", "800steps"]   # increasing budgets of one kind
    reduction = 3                      # promote the best 1/3 of each rung to the next

Every sampled candidate starts at rung 0. Whenever a rung holds n finished candidates, the best
floor(n / reduction) of them -- by non-dominated rank over the study's objectives, ties broken by crowding
distance (larger first), then by the earlier trial -- are promoted (below the regime gate, by the cheap
objectives alone: see `LEARNED_FRACTION_GATE`): a new trial is enqueued with the same
parameters, the next rung's budget and the user attributes `rung`, `budget`, `promoted_from` and
`candidate` (the spec_id). This is the asynchronous rule of ASHA (Li et al. 2020) with MOASHA's
multi-objective ranking (Schmucker et al. 2021): nothing waits for a rung to fill, so any number of workers
stay busy and a run cut short by a timeout still has top-rung results. Each rung trains from scratch: the
budget-aware schedule decays to zero at its own budget's end, so a lower rung's checkpoint is not a prefix of
a longer run.

Why not an existing scheduler: syne-tune's MOASHA and SMAC's SuccessiveHalving/Hyperband intensifiers keep
their rung bookkeeping in the memory of one tuner process (syne-tune's Tuner with its trial backend; SMAC's
intensifier tracker over its runhistory). Neither reads its state from, or writes its decisions to, an Optuna
storage, so with several workers on one PostgreSQL study each would hold its own, diverging idea of the
rungs, and a SIGKILL would lose it. Here the storage is the only state: promotions are recomputed from the
stored trials each time, so the layer is a ranking function plus an idempotent "enqueue what is due".

Synchronous promotion (`[quality] promotion = "synchronous"`): a rung promotes once, when it is closed -- the
first rung when it holds the study's `n_trials` candidates and none is running or waiting, a later rung when
the one below is closed and every promotion into it has finished -- and then promotes exactly
floor(n / reduction). The asynchronous rule promotes early on partial evidence: the best of the first
`reduction` finished candidates goes up even when it is not among the best floor(n / reduction) of all n, so a
rung may promote more candidates than its share. With 6 first-rung candidates and reduction 3 that was 3
promotions for 2 places in the default study, a whole extra top-rung run of 3 seeds (docs/studies.md). A
synchronous rung costs idle workers while its last candidates finish; the asynchronous rule suits open-ended
studies with many workers, the synchronous one small studies whose n_trials fixes the rung sizes.

Idempotency and many workers: `promote` runs under a lock held in the storage's own database (a PostgreSQL
advisory lock, MySQL GET_LOCK, a file lock beside a SQLite file): it re-reads the trials, enqueues each due
promotion whose (candidate, rung) has no trial yet in any state, and releases. Two workers can therefore never
enqueue one promotion twice, and Optuna hands a WAITING trial to exactly one worker (its WAITING -> RUNNING
update is a row-locked compare-and-set). A SIGKILL mid-promotion leaves some promotions enqueued and others
not; finished trials are never written to, and the next `promote` (every worker calls it before each trial
and at start-up) enqueues the rest. A killed promotion trial is re-queued by Optuna's heartbeat retry with
its user attributes, so its claim carries over and it is not enqueued a second time.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluators import registry

from . import record as R
from .config import Rungs
from .record import FINISHED, TrialRecord, feasible

# [choose] The regime gate (docs/studies.md). A rung whose candidates learned on average less than half of the
# way from the constant predictor to the linear-Gaussian optimum (their learned fraction, training/baselines.py;
# each candidate's a seed mean) is not a quality rung: its val losses sit near the level of a predictor that
# reads no image, and what separates its candidates is their initialisation, not their design (docs/quality.md,
# baselines). Its quality objectives are recorded, but promotion ranks by the cheap objectives only.
LEARNED_FRACTION_GATE = 0.5


# --- ranking ------------------------------------------------------------------------------------------

def _minimized(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(len(values), len(signs)) * signs


def nondominated_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Front index of each row (0 = not dominated by any row); O(n^2) per front, fine for rung sizes."""
    v = _minimized(values, directions)
    n = len(v)
    ranks = np.full(n, -1, dtype=int)
    left = np.arange(n)
    front = 0
    while left.size:
        sub = v[left]
        le = (sub[None, :, :] <= sub[:, None, :]).all(-1)  # le[i, j]: row j is no worse than row i everywhere
        lt = (sub[None, :, :] < sub[:, None, :]).any(-1)
        dominated = (le & lt).any(1)
        ranks[left[~dominated]] = front
        left = left[dominated]
        front += 1
    return ranks


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of rows on one front: boundary rows are infinitely far (kept first)."""
    v = np.asarray(values, dtype=float)
    n, d = v.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(d):
        order = np.argsort(v[:, k], kind="stable")
        span = v[order[-1], k] - v[order[0], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span <= 0:
            continue
        gaps = (v[order[2:], k] - v[order[:-2], k]) / span
        dist[order[1:-1]] += gaps
    return dist


def rank_order(values: np.ndarray, directions: Sequence[str]) -> list[int]:
    """Row indices best first: non-dominated rank, then crowding distance within the front (larger first),
    then row order (the earlier trial), so the order is deterministic."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return []
    ranks = nondominated_ranks(values, directions)
    crowd = np.zeros(len(values))
    v = _minimized(values, directions)
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding_distance(v[idx])
    return sorted(range(len(values)), key=lambda i: (ranks[i], -crowd[i], i))


# --- the regime gate ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Regime:
    """What a rung's finished candidates learned: the mean of their learned fractions over `n` candidates."""
    learned: float | None  # None: no candidate recorded one (no flow evaluator, or records older than it)
    n: int

    @property
    def quality(self) -> bool:
        """Whether the rung's quality objectives rank designs (unknown counts as yes: there is nothing to gate)."""
        return self.learned is None or self.learned >= LEARNED_FRACTION_GATE


def regime(fractions: Iterable[float | None]) -> Regime:
    """The regime of one rung from its candidates' learned fractions (None and non-finite values left out)."""
    values = [float(f) for f in fractions if isinstance(f, (int, float)) and not isinstance(f, bool)
              and math.isfinite(f)]
    return Regime(sum(values) / len(values) if values else None, len(values))


def rung_candidates(trials: Sequence[FrozenTrial], rung: int) -> dict[str, FrozenTrial]:
    """The finished candidates of a rung, one trial each (the first COMPLETE, else the first PRUNED; a re-proposed
    spec is one candidate, a re-sampled duplicate was not evaluated)."""
    at_rung = [(t, rec) for t in trials if (rec := TrialRecord.of(t)).rung == rung and t.state in FINISHED
               and rec.candidate and rec.duplicate_of is None]
    finished: dict[str, FrozenTrial] = {}
    for t, rec in sorted(at_rung, key=lambda p: (p[0].state != TrialState.COMPLETE, p[0].number)):
        finished.setdefault(rec.candidate, t)
    return finished


def rung_regime(trials: Sequence[FrozenTrial], rung: int) -> Regime:
    return regime(TrialRecord.of(t).learned_fraction for t in rung_candidates(trials, rung).values()
                  if t.state == TrialState.COMPLETE)


def ranking_objectives(names: Sequence[str], rung: int, found: Regime) -> tuple[list[int], str]:
    """(the objectives' indices a rung's promotion ranks by, that choice in words for the promoted trial's
    record): every objective at a quality rung; below the regime gate the cheap ones (those known before
    training: params, MACs, latency), or every objective, saying so, when the study has none."""
    every = list(range(len(names)))
    if found.quality:
        return every, "non-dominated rank over every objective" + (
            f" (rung {rung} learned fraction {found.learned:.2f})" if found.learned is not None else "")
    cheap = [i for i, n in enumerate(names) if not registry.is_quality_metric(n)]
    below = (f"rung {rung} learned fraction {found.learned:.2f} < {LEARNED_FRACTION_GATE:g} "
             f"(over {found.n} candidates): not a quality rung")
    if not cheap:
        return every, f"every objective, though {below}: the study has no cheap objective to rank by"
    return cheap, f"cheap objectives only ({', '.join(names[i] for i in cheap)}): {below}"


# --- rungs in the storage -----------------------------------------------------------------------------

REPROPOSAL_LIMIT = 3  # first-rung trials per asked-for candidate before a stuck sampler ends the run
OPEN = (TrialState.RUNNING, TrialState.WAITING)


def first_rung_counts(trials: Sequence[FrozenTrial]) -> tuple[int, int]:
    """(distinct designs, attempts) at the first rung, failures and re-sampled duplicates aside: a re-proposed
    spec is served from the cache and is no new candidate, but it is an attempt."""
    first = [(t, rec) for t in trials if (rec := TrialRecord.of(t)).rung == 0
             and t.state != TrialState.FAIL and rec.duplicate_of is None]
    return len({rec.candidate or t.number for t, rec in first}), len(first)


def first_rung_full(trials: Sequence[FrozenTrial], n_trials: int) -> bool:
    """Whether the first rung will take no new candidate: it holds `n_trials` distinct designs, or the sampler
    has used up REPROPOSAL_LIMIT attempts per asked-for candidate proposing designs already evaluated."""
    candidates, attempts = first_rung_counts(trials)
    return candidates >= n_trials or attempts >= REPROPOSAL_LIMIT * n_trials


def rung_closed(trials: Sequence[FrozenTrial], rung: int, rungs: Rungs) -> bool:
    """Whether every candidate a rung will ever hold has finished (synchronous promotion): none of its trials is
    running or waiting, and no more can come -- the first rung is full, or the rung below is closed and every
    promotion it is due has been enqueued."""
    records = [(t, TrialRecord.of(t)) for t in trials]
    if any(t.state in OPEN and rec.rung == rung for t, rec in records):
        return False
    if rung == 0:
        return first_rung_full(trials, rungs.candidates)
    finished = rung_candidates(trials, rung - 1)
    due = min(len(finished) // rungs.reduction, len(_rankable(finished.values())))  # what due_promotions gives
    claimed = {rec.candidate for _, rec in records if rec.rung == rung}
    return rung_closed(trials, rung - 1, rungs) and len(claimed) >= due


def _rankable(finished: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The finished candidates a promotion can rank: complete, with values, feasible; in trial order."""
    return sorted((t for t in finished if t.state == TrialState.COMPLETE and t.values is not None and feasible(t)),
                  key=lambda t: t.number)


@dataclass(frozen=True)
class Promotion:
    source: FrozenTrial
    rung: int  # the rung it is promoted to
    ranked_by: str = ""  # what ranked it, in words (the promoted trial's record keeps it)

    @property
    def candidate(self) -> str:
        return str(TrialRecord.of(self.source).candidate)


def due_promotions(trials: Sequence[FrozenTrial], rungs: Rungs, directions: Sequence[str],
                   names: Sequence[str] | None = None) -> list[Promotion]:
    """Promotions the stored trials call for that no trial holds yet (any state), top rungs first (a
    synchronous study's rungs only once closed). With the objectives' `names`, a rung below the regime gate
    ranks by the cheap objectives only."""
    due: list[Promotion] = []
    records = [(t, TrialRecord.of(t)) for t in trials]
    for r in range(rungs.top - 1, -1, -1):
        if rungs.promotion == "synchronous" and not rung_closed(trials, r, rungs):
            continue
        finished = rung_candidates(trials, r)
        k = len(finished) // rungs.reduction
        if k == 0:
            continue
        claimed = {rec.candidate for _, rec in records if rec.rung == r + 1}
        if rungs.promotion == "synchronous" and len(claimed) >= k:
            # A synchronous rung promotes once: a candidate that finishes after the rung promoted (a
            # re-queued trial of a killed worker, a study file whose n_trials grew) must not promote another.
            continue
        ranked = _rankable(finished.values())
        columns, ranked_by = (ranking_objectives(names, r, rung_regime(trials, r)) if names is not None
                              else (list(range(len(directions))), ""))
        values = np.array([[t.values[i] for i in columns] for t in ranked])
        order = rank_order(values, [directions[i] for i in columns]) if ranked else []
        for i in order[:k]:
            if TrialRecord.of(ranked[i]).candidate not in claimed:
                due.append(Promotion(ranked[i], r + 1, ranked_by))
    return due


def promotion_lock(storage: optuna.storages.BaseStorage, study_name: str) -> contextlib.AbstractContextManager:
    """Serialise promotion decisions of every worker on this storage (see the module docstring)."""
    return study_lock(storage, f"pocketdiff-promote:{study_name}")


def sampling_lock(storage: optuna.storages.BaseStorage, study_name: str) -> contextlib.AbstractContextManager:
    """Serialise "is the first rung full? then start a trial" across workers: held from the check until the
    trial exists in the storage (where the next worker's check counts it)."""
    return study_lock(storage, f"pocketdiff-sample:{study_name}")


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, name: str) -> Iterator[None]:
    """A lock named `name` shared by every worker on this storage (studies/storage.py `named_lock`)."""
    from .storage import engine_of, named_lock, url_of

    url = url_of(storage)
    if not url and not isinstance(storage, optuna.storages.InMemoryStorage):
        raise RuntimeError(f"a {type(storage).__name__} without a URL: cannot hold the lock {name!r}")
    # an in-memory storage lives in one process: named_lock's thread lock serves it
    with named_lock(url or "sqlite:///:memory:", name, engine=engine_of(storage)):
        yield


def promote(study: optuna.Study, rungs: Rungs) -> list[Promotion]:
    """Enqueue every due promotion not yet held by a trial; returns what this call enqueued."""
    directions = [d.name.lower() for d in study.directions]
    names = R.metric_names(study)
    with promotion_lock(study._storage, study.study_name):
        due = due_promotions(study.get_trials(deepcopy=False), rungs, directions, names)
        for p in due:
            study.enqueue_trial(p.source.params, skip_if_exists=False,
                                user_attrs=R.promotion(p.source, p.rung, rungs.label(p.rung), p.ranked_by))
    return due
