"""The validation loss: the cheap, deterministic ranking metric of every run (docs/quality.md).

Every held-out image at one timestep of a fixed stratified grid (quantiles of the training density), with
fixed noise: the same inputs for every candidate and every seed, so two models' losses differ only by the
models.
"""
from __future__ import annotations

import torch
from torch import nn

from .conditioning import Conditioner, velocity
from .data import FlowData
from .flow import LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD, flow_loss, interpolate

VAL_MAX = 500  # held-out images in the validation loss (all of MNIST-5k's held-out split)
VAL_CHUNK = 250
VAL_REPORT = 200  # held-out images in the loss reported DURING a run (pruning); the final loss uses VAL_MAX
# [choose] 8 timesteps: the midpoints of 8 equal-probability bins of the logit-normal training density, so the
# validation loss estimates the training objective's expectation with stratified (not random) timesteps.
VAL_TIMESTEPS = 8
VAL_SEED = 1234  # the held-out noise never depends on the run's seed or the model


def validation_timesteps(n: int, grid: int = VAL_TIMESTEPS) -> torch.Tensor:
    """Timestep of held-out image i: grid point i mod `grid`, the grid being the midpoints of equal-probability
    bins of the logit-normal training density."""
    q = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    u = torch.distributions.Normal(0.0, 1.0).icdf(q) * LOGIT_NORMAL_STD + LOGIT_NORMAL_MEAN
    points = torch.sigmoid(u).float()
    return points[torch.arange(n) % grid]


def validation_inputs(data: FlowData, limit: int = VAL_MAX) -> tuple[torch.Tensor, ...]:
    """(x_0, labels, noise, t) of the validation loss: the first `limit` held-out images, their fixed noise and
    their grid timesteps. The regime baselines (training/baselines.py) are scored on exactly these."""
    x0 = data.val_x[:limit]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(VAL_SEED))
    return x0, data.val_y[:limit], noise, validation_timesteps(len(x0))


@torch.no_grad()
def validation_loss(model: nn.Module, cond: Conditioner, data: FlowData, device: torch.device,
                    autocast: bool = False, limit: int = VAL_MAX) -> float:
    """Flow-matching loss over the held-out images at a fixed stratified timestep grid with fixed noise:
    deterministic, and the same inputs for every candidate and seed (the cheap ranking metric)."""
    x0, labels, noise, t = validation_inputs(data, limit)
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
