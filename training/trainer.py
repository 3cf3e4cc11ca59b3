"""Rectified-flow training of a UNet spec on a FlowData set, and class-conditional sampling from it.

SNAPGEN.md section 3 (objective [paper]) with the usual latent-diffusion practice [choose, values below]:
AdamW with linear warm-up, gradient clipping, an EMA of the weights (what gets sampled), condition dropout so
one network also gives the unconditional velocity for classifier-free guidance, bf16 autocast on GPU. The
budget is steps or wall seconds; metrics reach a callback during the run, so a study can prune. A NaN loss
ends the run with status "diverged at step N" instead of an exception.
"""
from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from search_space import UNetSpec, build_model

from .data import FlowData
from .flow import TIMESTEP_SCALE, cfg_velocity, euler_sample, flow_loss, interpolate, sample_timesteps
from .text import PromptEmbeddings

# [choose] optimiser settings for short proxy runs: DiT's lr 1e-4 is for 675M params and 400k steps. Measured
# on tiny-debug / MNIST-5k, 40 s on 2 shared cores: held-out loss 0.97 (batch 64, lr 1e-3), 0.37 (32, 2e-3),
# 0.32 (32, 4e-3); the fig3 proxies are stable at 4e-3 but no better than 1e-3 after 30 steps, hence 3e-3.
# No weight decay (DiT); AdamW's default betas.
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.0
WARMUP_STEPS = 10
GRAD_CLIP = 1.0  # SD3 / SDXL training scripts clip the global gradient norm at 1
EMA_DECAY = 0.999
# Condition dropout 10%: the classifier-free-guidance paper (Ho & Salimans 2022) and SD's training use 0.1.
COND_DROPOUT = 0.1
BATCH_SIZE = 32  # more, smaller steps: a 60 s CPU budget sees ~100 of them
VAL_BATCH = 200  # fixed held-out batch for the validation loss
VAL_SEED = 1234  # the held-out batch's noise and timesteps never depend on the run's seed
REPORT_FRACTION = 0.2  # report metrics (val loss) every fifth of the budget: enough points to prune on


class BudgetError(ValueError):
    """A budget string that is neither `<N>steps` nor `<N>s` / `<N>m`."""


@dataclass(frozen=True)
class Budget:
    """Training length: a step count (reproducible) or wall-clock seconds (fair across machines of one kind)."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: "str | Budget") -> "Budget":
        if isinstance(text, Budget):
            return text
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(steps?|s|sec|m|min)\s*", str(text).lower())
        if not m:
            raise BudgetError(f"budget {text!r} is neither steps nor seconds; write e.g. 500steps, 60s or 2m")
        value, unit = float(m.group(1)), m.group(2)
        if unit.startswith("step"):
            if value != int(value):
                raise BudgetError(f"budget {text!r}: a step count must be whole")
            return cls(steps=int(value))
        return cls(seconds=value * (60 if unit.startswith("m") else 1))

    def __str__(self) -> str:
        return f"{self.steps}steps" if self.steps is not None else f"{self.seconds:g}s"

    def done(self, step: int, elapsed: float) -> bool:
        return step >= self.steps if self.steps is not None else elapsed >= self.seconds

    def fraction(self, step: int, elapsed: float) -> float:
        return step / max(1, self.steps) if self.steps is not None else elapsed / max(1e-9, self.seconds)


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


@torch.no_grad()
def validation_loss(model: nn.Module, cond: Conditioner, data: FlowData, device: torch.device,
                    autocast: bool = False) -> float:
    """Flow-matching loss on a fixed held-out batch with fixed noise and timesteps (comparable across runs)."""
    gen = torch.Generator().manual_seed(VAL_SEED)
    x0 = data.val_x[:VAL_BATCH].to(device)
    labels = data.val_y[:VAL_BATCH].to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    t = sample_timesteps(len(x0), gen).to(device)
    was_training = model.training
    model.eval()
    pred = velocity(model, cond, interpolate(x0, noise, t), t, labels, autocast)
    model.train(was_training)
    return float(flow_loss(pred, x0, noise))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def train(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, budget: Budget | str, seed: int = 0,
          config: TrainConfig = TrainConfig(), device: str | torch.device | None = None,
          callback: MetricsCallback | None = None, progress: bool = True) -> TrainResult:
    """Train `spec` from scratch on `data`; returns the EMA model, status and throughput."""
    from tqdm import tqdm

    budget = Budget.parse(budget)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = device.type == "cuda"  # bf16 on GPU; CPU stays float32 (bf16 is slow without AMX)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(spec).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    cond = Conditioner(spec, prompts, data.resolution, device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    batches = data.batches(config.batch_size, gen)
    history: list[dict] = []
    step, images, running, status = 0, 0, None, "ok"
    next_report = REPORT_FRACTION
    bar = tqdm(total=budget.steps if budget.steps is not None else int(budget.seconds), desc="train",
               unit="step" if budget.steps is not None else "s", disable=not progress, leave=False)
    # The clock includes the periodic validation passes: a seconds budget is wall time for the whole run.
    start = time.perf_counter()
    while not budget.done(step, time.perf_counter() - start):
        x0, labels = next(batches)
        x0, labels = x0.to(device, non_blocking=True), labels.to(device)
        drop = torch.rand(len(labels), generator=gen) < config.cond_dropout
        labels = torch.where(drop.to(device), torch.full_like(labels, cond.null), labels)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = sample_timesteps(len(x0), gen).to(device)
        loss = flow_loss(velocity(model, cond, interpolate(x0, noise, t), t, labels, autocast), x0, noise)
        if not torch.isfinite(loss):
            status = f"diverged at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        step += 1
        images += len(x0)
        # EMA warm-up (TensorFlow's ExponentialMovingAverage num_updates rule): a short run's EMA must not be
        # dominated by the random initialisation.
        ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        value = loss.item()
        running = value if running is None else 0.9 * running + 0.1 * value
        elapsed = time.perf_counter() - start
        bar.update(1 if budget.steps is not None else int(elapsed) - bar.n)
        if budget.fraction(step, elapsed) >= next_report:
            next_report = round(next_report + REPORT_FRACTION, 6)  # no float drift past the final 1.0
            report = {"step": step, "images": images, "seconds": round(elapsed, 3), "train_loss": running,
                      "val_loss": validation_loss(ema, cond, data, device, autocast)}
            history.append(report)
            bar.set_postfix(loss=f"{running:.4f}", val=f"{report['val_loss']:.4f}")
            if callback is not None and callback(report):
                status = f"stopped by callback at step {step}"
                break
    seconds = time.perf_counter() - start
    bar.close()
    if history and history[-1]["step"] == step:  # the last report already holds the final weights' loss
        val = history[-1]["val_loss"]
    else:
        val = validation_loss(ema, cond, data, device, autocast) if status == "ok" or step == 0 else None
    if val is not None and not math.isfinite(val):
        status, val = f"diverged at step {step}", None
    return TrainResult(model=ema, status=status, steps=step, images=images, seconds=seconds, val_loss=val,
                       history=history)


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


def save_checkpoint(path: str | Path, model: nn.Module, spec: UNetSpec, extra: dict) -> None:
    """The weights with the spec JSON embedded: `UNetSpec.from_dict(json.loads(ckpt["spec"]))` rebuilds it."""
    torch.save({"spec": spec.to_json(), "spec_id": spec.spec_id, "state_dict": model.state_dict(), **extra}, path)


def config_dict(config: TrainConfig) -> dict:
    return asdict(config)
