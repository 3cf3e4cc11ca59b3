"""Batch streams of the training loop: what each step trains on, as (x0, labels, dropped, noise, t).

Two streams, one job each (docs/training.md):
- `crn` (`CRNStream` over `TrainStream`): common random numbers for paired design comparisons (quality runs).
  Data order, condition dropout, noise and timesteps come from four generators seeded from the run's seed
  alone, so for one seed every candidate sees identical batches; only the weight initialisation depends on the
  model. The stream's digest is recorded so a comparison can check it. Single process.
- `step` (`StepStream` over `StepBatches`): batch k of rank r is a pure function of (seed, k, r), and the one
  generator's state goes into checkpoints, so a resumed run sees exactly the batches it would have seen; ranks
  take disjoint slices of one permutation per epoch (full runs, any number of processes).
Both take the timesteps from the objective's own density (`sample_t(n, generator)`).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

from .config import LoopConfig, TrainError
from .data import FlowData
from .distributed import DistContext
from .flow import sample_timesteps

STREAMS = ("step", "crn")
TimestepSampler = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> t in [0, 1]
Draw = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # x0, labels, dropped, noise, t


def _derived_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") & (2 ** 63 - 1)


class TrainStream:
    """Common random numbers for one seed: (x0, labels, dropped, noise, t) per step, from four generators that
    depend on the seed and the data only, never on the model (paired comparisons, docs/quality.md)."""

    def __init__(self, data: FlowData, batch_size: int, seed: int, cond_dropout: float):
        gens = {p: torch.Generator().manual_seed(_derived_seed(seed, p)) for p in ("order", "drop", "noise", "time")}
        self._gens = gens
        self._batches = data.batches(batch_size, gens["order"])
        self.cond_dropout = cond_dropout
        self._hash = hashlib.sha256()

    def __iter__(self):
        return self

    def __next__(self) -> Draw:
        return self.draw(sample_timesteps)

    def draw(self, sample_t: TimestepSampler) -> Draw:
        """The next batch with timesteps from `sample_t(n, generator)` (an objective's own timestep density)."""
        x0, labels = next(self._batches)
        drop = torch.rand(len(labels), generator=self._gens["drop"]) < self.cond_dropout
        noise = torch.randn(x0.shape, generator=self._gens["noise"])
        t = sample_t(len(x0), self._gens["time"])
        for tensor in (x0, labels, drop, noise, t):
            self._hash.update(tensor.contiguous().numpy().tobytes())
        return x0, labels, drop, noise, t

    @property
    def digest(self) -> str:
        """Hash of everything drawn so far: equal digests = identical batches, dropout, noise and timesteps."""
        return self._hash.hexdigest()[:16]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2 ** 63)


class StepBatches:
    """Batch k of rank r is a pure function of (seed, k, r): a resumed run sees exactly the batches it would
    have seen. All ranks share one permutation per epoch and take disjoint slices of it (DistributedSampler)."""

    def __init__(self, data: FlowData, batch_size: int, seed: int, rank: int, world: int):
        self.data, self.bs, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self._stream = None
        self._position = 0
        if data.train_y is None:  # streamed latent shards: a seeded stream, fast-forwarded on resume
            self._gen = torch.Generator().manual_seed(_epoch_seed(seed, 0) + rank)
        else:
            n = len(data.train_y)
            if n < batch_size * world:
                raise TrainError(f"the data has {n} training samples, fewer than one global batch "
                                 f"({batch_size} x {world} ranks); lower --batch-size")
            self.per_epoch = n // (batch_size * world)
            self._order_epoch, self._order = -1, None

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data.train_y is None:
            if self._stream is None:
                self._stream = self.data.shards.batches(self.bs, self._gen)
            while self._position < k:  # fast-forward after a resume
                next(self._stream)
                self._position += 1
            self._position += 1
            return next(self._stream)
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._order_epoch:
            gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._order, self._order_epoch = torch.randperm(len(self.data.train_y), generator=gen), epoch
        start = (i * self.world + self.rank) * self.bs
        idx = self._order[start:start + self.bs]
        return self.data.train_x[idx], self.data.train_y[idx]


class StepStream:
    """(x0, labels, dropped, noise, t) for micro-batch k from StepBatches and one generator whose state a
    checkpoint keeps (resumable, any number of ranks)."""

    resumable = True

    def __init__(self, data: FlowData, config: LoopConfig, ctx: DistContext):
        self.batches = StepBatches(data, config.batch_size, config.seed, ctx.rank, ctx.world)
        self.gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 101 * (ctx.rank + 1))
        self.cond_dropout = config.cond_dropout
        self.k = 0
        self.digest = ""

    def draw(self, sample_t: TimestepSampler) -> Draw:
        x0, labels = self.batches.get(self.k)
        self.k += 1
        drop = torch.rand(len(labels), generator=self.gen) < self.cond_dropout
        noise = torch.randn(x0.shape, generator=self.gen)
        t = sample_t(len(x0), self.gen)
        return x0, labels, drop, noise, t


class CRNStream:
    """The quality runs' common random numbers (`TrainStream`) as a loop stream; single-process, not resumable."""

    resumable = False

    def __init__(self, data: FlowData, config: LoopConfig, ctx: DistContext):
        if ctx.enabled:
            raise TrainError("the common-random-numbers stream of quality runs is single-process; use the step "
                             "stream for data-parallel runs")
        self.stream = TrainStream(data, config.batch_size, config.seed, config.cond_dropout)

    def draw(self, sample_t: TimestepSampler) -> Draw:
        return self.stream.draw(sample_t)

    @property
    def digest(self) -> str:
        return self.stream.digest

