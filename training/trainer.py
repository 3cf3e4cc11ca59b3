"""Rectified-flow training of a UNet spec on a FlowData set, and class-conditional sampling from it.

SNAPGEN.md section 3 (objective [paper]) with the usual latent-diffusion practice [choose, values below]:
AdamW, gradient clipping, an EMA of the weights (what gets sampled), condition dropout so one network also
gives the unconditional velocity for classifier-free guidance, bf16 autocast on GPU.

Designs are compared fairly (issue 10):
- Budgets are steps, epochs or training FLOPs (resolved to a step count before the run) or wall seconds; the
  learning rate warms up linearly, then decays linearly to zero exactly at the budget's end, so every run ends
  converged for its length instead of mid-flight at a constant rate.
- Common random numbers: data order, condition dropout, noise and timesteps come from four generators seeded
  from the run's seed alone (`TrainStream`), so for one seed every candidate sees identical batches; only the
  weight initialisation depends on the model. The stream's digest is recorded so a comparison can check it.
- The validation loss is deterministic: every held-out image at one timestep of a fixed stratified grid
  (quantiles of the training density), with fixed noise; the same for every candidate and every seed.
Metrics reach a callback during the run, so a study can prune. A NaN loss ends the run with status
"diverged at step N" instead of an exception.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from search_space import UNetSpec, build_model
from search_space.errors import UserError

from .budget import WALL_CLOCK_NOTICE, WARMUP_STEPS, Budget, BudgetError  # noqa: F401 (the trainer's API)
from .data import FlowData
from .flow import (LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD, TIMESTEP_SCALE, cfg_velocity, euler_sample, flow_loss,
                   interpolate, sample_timesteps)
from .text import PromptEmbeddings

# [choose] optimiser settings for short proxy runs: DiT's lr 1e-4 is for 675M params and 400k steps. Measured
# on tiny-debug / MNIST-5k, 40 s on 2 shared cores: held-out loss 0.97 (batch 64, lr 1e-3), 0.37 (32, 2e-3),
# 0.32 (32, 4e-3); the fig3 proxies are stable at 4e-3 but no better than 1e-3 after 30 steps, hence 3e-3.
# No weight decay (DiT); AdamW's default betas.
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.0
GRAD_CLIP = 1.0  # SD3 / SDXL training scripts clip the global gradient norm at 1
EMA_DECAY = 0.999
# Condition dropout 10%: the classifier-free-guidance paper (Ho & Salimans 2022) and SD's training use 0.1.
COND_DROPOUT = 0.1
BATCH_SIZE = 32  # more, smaller steps: a 60 s CPU budget sees ~100 of them
VAL_MAX = 500  # held-out images in the validation loss (all of MNIST-5k's held-out split)
VAL_CHUNK = 250
VAL_REPORT = 200  # held-out images in the loss reported DURING a run (pruning); the final loss uses VAL_MAX
# [choose] 8 timesteps: the midpoints of 8 equal-probability bins of the logit-normal training density, so the
# validation loss estimates the training objective's expectation with stratified (not random) timesteps.
VAL_TIMESTEPS = 8
VAL_SEED = 1234  # the held-out noise never depends on the run's seed or the model
REPORT_FRACTION = 0.2  # report metrics (val loss) every fifth of the budget: enough points to prune on


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for the update at index `step` (0-based) of a `total_steps` run: linear warm-up,
    then linear decay that is exactly 0 at `total_steps` (linear-to-zero beats cosine for a known budget:
    Defazio et al. 2023, "When, why and how much? Adaptive learning rate scheduling by refinement")."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _derived_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") & (2 ** 63 - 1)


class TrainStream:
    """Common random numbers for one seed: (x0, labels, dropped, noise, t) per step, from four generators that
    depend on the seed and the data only, never on the model (issue 10: paired comparisons)."""

    def __init__(self, data: FlowData, batch_size: int, seed: int, cond_dropout: float):
        gens = {p: torch.Generator().manual_seed(_derived_seed(seed, p)) for p in ("order", "drop", "noise", "time")}
        self._gens = gens
        self._batches = data.batches(batch_size, gens["order"])
        self.cond_dropout = cond_dropout
        self._hash = hashlib.sha256()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.draw(sample_timesteps)

    def draw(self, sample_t: Callable[[int, torch.Generator], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = BATCH_SIZE
    lr: float = LEARNING_RATE
    weight_decay: float = WEIGHT_DECAY
    warmup_steps: int = WARMUP_STEPS
    grad_clip: float = GRAD_CLIP
    ema_decay: float = EMA_DECAY
    cond_dropout: float = COND_DROPOUT


@dataclass
class TrainResult:
    model: nn.Module  # the EMA weights: what is sampled and scored
    status: str  # "ok" or "diverged at step N"
    steps: int
    images: int
    seconds: float
    val_loss: float | None
    history: list[dict] = field(default_factory=list)
    stream_digest: str = ""  # TrainStream.digest: equal for every candidate trained with one seed and budget
    budget_steps: int | None = None  # the resolved step budget (None for wall-clock budgets)
    raw: nn.Module | None = None  # the raw (non-EMA) weights, kept in the run's checkpoint beside the EMA
    throughput: dict = field(default_factory=dict)  # training/throughput.py's fields: FLOP/s, roofline ratio

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


MetricsCallback = Callable[[dict], "bool | None"]  # return True to stop the run (e.g. an Optuna prune)


class Conditioner:
    """Class labels -> the UNet's conditioning inputs (tokens, pooled vector, size ids)."""

    def __init__(self, spec: UNetSpec, prompts: PromptEmbeddings, resolution: int, device: torch.device):
        self.tokens = prompts.tokens.to(device)
        self.pooled = prompts.pooled.to(device) if spec.pooled_dim else None
        self.null = prompts.null_index
        self.time_ids = (torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device,
                                      dtype=torch.float32) if spec.size_conditioning else None)

    def __call__(self, labels: torch.Tensor) -> tuple:
        pooled = self.pooled[labels] if self.pooled is not None else None
        time_ids = self.time_ids.expand(len(labels), -1) if self.time_ids is not None else None
        return self.tokens[labels], pooled, time_ids


def velocity(model: nn.Module, cond: Conditioner, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
             autocast: bool = False) -> torch.Tensor:
    tokens, pooled, time_ids = cond(labels)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(x, t * TIMESTEP_SCALE, tokens, pooled, time_ids).float()


def validation_timesteps(n: int, grid: int = VAL_TIMESTEPS) -> torch.Tensor:
    """Timestep of held-out image i: grid point i mod `grid`, the grid being the midpoints of equal-probability
    bins of the logit-normal training density."""
    q = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    u = torch.distributions.Normal(0.0, 1.0).icdf(q) * LOGIT_NORMAL_STD + LOGIT_NORMAL_MEAN
    points = torch.sigmoid(u).float()
    return points[torch.arange(n) % grid]


@torch.no_grad()
def validation_loss(model: nn.Module, cond: Conditioner, data: FlowData, device: torch.device,
                    autocast: bool = False, limit: int = VAL_MAX) -> float:
    """Flow-matching loss over the held-out images at a fixed stratified timestep grid with fixed noise:
    deterministic, and the same inputs for every candidate and seed (the cheap ranking metric)."""
    x0 = data.val_x[:limit]
    labels = data.val_y[:limit]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(VAL_SEED))
    t = validation_timesteps(len(x0))
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x0), VAL_CHUNK):
        xb, nb = x0[i:i + VAL_CHUNK].to(device), noise[i:i + VAL_CHUNK].to(device)
        tb, yb = t[i:i + VAL_CHUNK].to(device), labels[i:i + VAL_CHUNK].to(device)
        pred = velocity(model, cond, interpolate(xb, nb, tb), tb, yb, autocast)
        total += float(flow_loss(pred, xb, nb)) * len(xb)
    model.train(was_training)
    return total / max(1, len(x0))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, fast: bool = True) -> None:
    """ema <- ema + (1 - decay) (model - ema); `fast`: one multi-tensor kernel per dtype instead of a Python
    loop over tensors (the same arithmetic, issue 15's throughput benchmark)."""
    pairs = [(e, p.detach()) for e, p in zip(ema.parameters(), model.parameters())]
    if fast and pairs:
        torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1 - decay)
    else:
        for e, p in pairs:
            e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def training_flops_per_step(spec: UNetSpec, data: FlowData, batch_size: int, text_tokens: int,
                            text_dim: int) -> float:
    """Matmul FLOPs of one training step at this data's shape (training/throughput.py: the project's one op
    trace, 2 FLOPs per multiply-accumulate, 3 x one forward pass, times the batch size)."""
    from .throughput import training_flops_per_step as flops

    return flops(spec, (data.channels, data.size, data.size), text_tokens, text_dim, batch_size)


def resolve_budget(budget: "Budget | str", spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings,
                   config: "TrainConfig") -> Budget:
    """The budget as a step count for this spec, data and batch size (raises BudgetError when too short)."""
    budget = Budget.parse(budget)
    return budget.resolve(
        data.train_count, config.batch_size,
        lambda: training_flops_per_step(spec, data, config.batch_size, prompts.tokens.shape[1], prompts.dim),
        config.warmup_steps)


def loop_config(config: TrainConfig, seed: int) -> "LoopConfig":
    """A quality run as a configuration of the one loop: the budget's linear decay to exactly zero, no
    checkpoints in between."""
    from .loop import LoopConfig

    return LoopConfig(batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                      warmup_steps=config.warmup_steps, schedule="linear", min_lr_ratio=0.0,
                      grad_clip=config.grad_clip, ema_decay=config.ema_decay, cond_dropout=config.cond_dropout,
                      seed=seed, sample_steps=8, cfg_scale=2.0)


def train(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, budget: Budget | str, seed: int = 0,
          config: TrainConfig = TrainConfig(), device: str | torch.device | None = None,
          callback: MetricsCallback | None = None, progress: bool = True, objective=None) -> TrainResult:
    """Train `spec` from scratch on `data` with the one loop (training/loop.py) under common random numbers;
    returns the EMA model, status and throughput. `objective` defaults to plain flow matching."""
    from .distributed import DistContext
    from .loop import fit

    budget = resolve_budget(budget, spec, data, prompts, config)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    r = fit(spec, data, prompts, loop_config(config, seed), DistContext(device=device), budget=budget,
            objective=objective, stream="crn", callback=callback, report_fraction=REPORT_FRACTION,
            progress=progress)
    return TrainResult(model=r.ema, status=r.status, steps=r.step, images=r.images, seconds=r.seconds,
                       val_loss=r.metrics.get("val_loss"), history=r.history, stream_digest=r.stream_digest,
                       budget_steps=budget.steps, raw=r.model,
                       throughput={k: v for k, v in r.metrics.items() if k != "val_loss"})


@torch.no_grad()
def sample(model: nn.Module, spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, labels: torch.Tensor,
           seed: int, steps: int, cfg_scale: float, batch_size: int = 250,
           device: str | torch.device | None = None, progress: bool = True) -> torch.Tensor:
    """Class-conditional samples in model space; CFG runs the conditional and unconditional halves in one batch."""
    from tqdm import tqdm

    device = torch.device(device or next(model.parameters()).device)
    autocast = device.type == "cuda"
    cond = Conditioner(spec, prompts, data.resolution, device)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(labels), data.channels, data.size, data.size), generator=gen)
    model.eval()
    out = []
    for i in tqdm(range(0, len(labels), batch_size), desc="sample", disable=not progress, leave=False):
        y = labels[i:i + batch_size].to(device)
        null = torch.full_like(y, cond.null)

        def plain(x: torch.Tensor, t: torch.Tensor, y=y) -> torch.Tensor:
            return velocity(model, cond, x, t, y, autocast)

        def pair(x: torch.Tensor, t: torch.Tensor, y=y, null=null) -> tuple[torch.Tensor, torch.Tensor]:
            v = velocity(model, cond, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), autocast)
            return v.chunk(2)  # (v_cond, v_uncond)

        fn = plain if cfg_scale == 1.0 else cfg_velocity(pair, cfg_scale)
        out.append(euler_sample(fn, noise[i:i + batch_size].to(device), steps).cpu())
    return torch.cat(out)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)


def save_run_checkpoint(out_dir: str | Path, result: TrainResult, spec: UNetSpec, data: FlowData,
                        prompts: PromptEmbeddings, cfg_scale: float, sample_steps: int, meta: dict) -> Path:
    """A quality run's weights in the one checkpoint format (training/checkpoint.py), weights only: it feeds
    `pocketdiff train --init` / `--teacher`, `export coreml --checkpoint` and `sample` like a full run's."""
    from .checkpoint import run_meta, save_checkpoint

    return save_checkpoint(Path(out_dir) / "checkpoints", result.steps, result.raw, result.model, spec,
                           {**run_meta(data, prompts, cfg_scale, sample_steps), **meta, "kind": "quality"},
                           state=None)

