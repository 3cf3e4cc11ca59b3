"""KD loss scaling as the paper defines it (docs/paper.md section 3): S(L_task, L_kd) = E_t[a_t L_task(t) + (1 - a_t)
(|L_task(t)| / |L_kd(t)|) L_kd(t)], where |L(t)| is the loss MAGNITUDE AT TIMESTEP t, estimated here per
timestep bin with running averages, not per sample: scaling each sample by its own ratio makes the KD
gradient grow without bound as the student nears the teacher.

- `LossMagnitudes`: bias-corrected running averages of per-sample losses in equal-probability bins of the
  logit-normal training density (so every bin sees the same share of samples); all ranks pool their sums.
- `KDWeighting`: the timestep-aware shape a_t = r(t)^gamma (r: the training density normalised to 1 at its
  mode; gamma = 1 is the project's reading, other gammas the shape sweep), or a fixed weighting: one constant
  a and one global magnitude ratio, whose KD share defaults to the timestep-aware shape's average E_t[1 - a_t],
  so the two are compared at the same KD share (otherwise a comparison measures how much KD, not when).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from search_space.errors import UserError

from .flow import LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD


class KDConfigError(UserError):
    """A KD weighting setting out of range; the message names it."""

WEIGHTINGS = ("timestep", "fixed")
# [choose] 8 bins: equal-probability bins of the training density, as the validation grid (training/validation.py);
# with batch 32 each bin sees 4 samples per step, so the running averages settle within tens of steps.
MAGNITUDE_BINS = 8
MAGNITUDE_MOMENTUM = 0.95  # [choose] about 20 steps of memory: follows the losses as training lowers them
EPS = 1e-8


def logit_normal_density(t: torch.Tensor, mean: float = LOGIT_NORMAL_MEAN, std: float = LOGIT_NORMAL_STD
                         ) -> torch.Tensor:
    t = t.clamp(1e-6, 1 - 1e-6)
    logit = torch.log(t / (1 - t))
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


def task_weight(t: torch.Tensor, shape: float = 1.0) -> torch.Tensor:
    """a_t [choose: the best reading of the secondary source]: the logit-normal training density normalised to
    1 at its mode t = 0.5, to the power `shape`. Mid timesteps, where the data term is informative, lean on the
    task loss; near pure noise or clean data the teacher's term dominates. shape 0: a_t = 1 (no KD)."""
    r = (logit_normal_density(t) / logit_normal_density(torch.tensor(0.5))).clamp(max=1.0)
    return r.pow(shape)


def bin_edges(bins: int = MAGNITUDE_BINS) -> torch.Tensor:
    """Inner edges of `bins` equal-probability bins of the logit-normal density (bins - 1 values in (0, 1))."""
    q = torch.arange(1, bins, dtype=torch.float64) / bins
    u = torch.distributions.Normal(0.0, 1.0).icdf(q) * LOGIT_NORMAL_STD + LOGIT_NORMAL_MEAN
    return torch.sigmoid(u).float()


def mean_kd_share(shape: float, points: int = 4096) -> float:
    """E_t[1 - a_t] under the training density: the timestep-aware weighting's average KD share."""
    q = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    t = torch.sigmoid(torch.distributions.Normal(0.0, 1.0).icdf(q) * LOGIT_NORMAL_STD + LOGIT_NORMAL_MEAN)
    return float(1 - task_weight(t.float(), shape).mean())


class LossMagnitudes:
    """Running magnitudes of named per-sample losses per timestep bin (bias-corrected exponential averages)."""

    def __init__(self, bins: int = MAGNITUDE_BINS, momentum: float = MAGNITUDE_MOMENTUM):
        self.edges = bin_edges(bins)
        self.bins, self.momentum = bins, momentum
        self.avg: dict[str, torch.Tensor] = {}  # (bins,) biased running averages
        self.updates: dict[str, torch.Tensor] = {}  # (bins,) number of updates each bin received
        self.reduce = None  # (sums, counts) -> pooled over ranks; set by the objective under DDP

    def bin_of(self, t: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(t.detach().float().cpu(), self.edges)

    @torch.no_grad()
    def update(self, name: str, t: torch.Tensor, values: torch.Tensor) -> None:
        """Fold this batch's per-sample |losses| into their bins' running averages."""
        idx = self.bin_of(t)
        v = values.detach().float().abs().cpu()
        sums = torch.zeros(self.bins).index_add_(0, idx, v)
        counts = torch.zeros(self.bins).index_add_(0, idx, torch.ones_like(v))
        if self.reduce is not None:
            sums, counts = self.reduce(sums, counts)
        seen = counts > 0
        batch_mean = sums / counts.clamp_min(1)
        avg = self.avg.setdefault(name, torch.zeros(self.bins))
        n = self.updates.setdefault(name, torch.zeros(self.bins))
        avg[seen] = self.momentum * avg[seen] + (1 - self.momentum) * batch_mean[seen]
        n[seen] += 1

    def per_bin(self, name: str) -> torch.Tensor:
        """(bins,) bias-corrected magnitudes; NaN where a bin has not been seen yet."""
        avg, n = self.avg[name], self.updates[name]
        corrected = avg / (1 - self.momentum ** n).clamp_min(EPS)
        return torch.where(n > 0, corrected, torch.full_like(avg, float("nan")))

    def ratio(self, num: str, den: str, t: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        """|L_num(t)| / |L_den(t)| for each sample's bin (or over all bins: `pooled`), on t's device."""
        a, b = self.per_bin(num), self.per_bin(den)
        if pooled:
            seen = ~(a.isnan() | b.isnan())
            r = a[seen].mean() / b[seen].mean().clamp_min(EPS)
            return r.expand(len(t)).to(t.device)
        r = a / b.clamp_min(EPS)
        r = torch.where(r.isnan(), torch.ones_like(r), r)  # an unseen bin: no rescaling yet
        return r[self.bin_of(t)].to(t.device)

    def state_dict(self) -> dict:
        return {"avg": dict(self.avg), "updates": dict(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.avg = {k: v.clone() for k, v in state["avg"].items()}
        self.updates = {k: v.clone() for k, v in state["updates"].items()}


@dataclass(frozen=True)
class KDWeighting:
    """How a KD term joins the task loss: `timestep` (a_t = r(t)^shape, magnitudes per bin) or `fixed` (one
    constant a = 1 - share, one pooled magnitude ratio; share defaults to the timestep-aware average)."""

    kind: str = "timestep"
    shape: float = 1.0
    share: float | None = None

    def __post_init__(self):
        if self.kind not in WEIGHTINGS:
            raise KDConfigError(f"KD weighting {self.kind!r} is not one of {', '.join(WEIGHTINGS)}")
        if not self.shape >= 0:
            raise KDConfigError(f"KD weighting shape={self.shape} must be >= 0 (1 = the training density)")
        if self.share is not None and not 0 <= self.share <= 1:
            raise KDConfigError(f"KD share={self.share} must be within [0, 1]")

    @property
    def fixed_share(self) -> float:
        return self.share if self.share is not None else mean_kd_share(self.shape)

    def task_weights(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "timestep":
            return task_weight(t, self.shape)
        return torch.full_like(t, 1 - self.fixed_share)

    def combine(self, task: torch.Tensor, kd: torch.Tensor, t: torch.Tensor, magnitudes: LossMagnitudes,
                task_name: str, kd_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(S(L_task, L_kd) over per-sample losses (B,), the KD part of its value): the KD term rescaled to the
        task loss's magnitude at each sample's timestep bin (timestep) or over all bins (fixed)."""
        a = self.task_weights(t).to(task.dtype)
        scale = magnitudes.ratio(task_name, kd_name, t, pooled=self.kind == "fixed").to(task.dtype)
        kd_part = ((1 - a) * scale * kd).mean()
        return (a * task).mean() + kd_part, kd_part.detach()

    def identity(self) -> dict:
        return {"kind": self.kind, "shape": self.shape, **({"share": self.fixed_share} if self.kind == "fixed" else {})}
