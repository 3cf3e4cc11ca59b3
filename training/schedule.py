"""The learning-rate schedule of the training loop: linear warm-up, then constant, cosine or linear decay.

Quality runs decay linearly to exactly zero at the budget's end, so every candidate ends converged for its
length (linear-to-zero beats cosine for a known budget: Defazio et al. 2023, "When, why and how much? Adaptive
learning rate scheduling by refinement"); full runs decay to `min_lr_ratio` of the peak. Wall-clock budgets
decay by elapsed time instead of steps.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

from .config import LoopConfig


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for the update at index `step` (0-based) of a `total_steps` run: linear warm-up,
    then linear decay that is exactly 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def lr_lambda(config: LoopConfig) -> Callable[[int], float]:
    """Multiplier of config.lr for the update at index `step` (0-based)."""
    def fn(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        if config.schedule == "linear" and config.min_lr_ratio == 0:
            return lr_factor(step, config.steps, config.warmup_steps)  # quality runs: exactly zero at the end
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape
    return fn


def wall_clock_factor(config: LoopConfig, step: int, elapsed: float, seconds: float) -> float:
    """Wall-clock budgets: warm up by steps, then decay by elapsed time, reaching zero when the time is up."""
    return min(1.0, (step + 1) / max(1, config.warmup_steps)) * max(0.0, 1 - elapsed / seconds)


def replace_steps(config: LoopConfig, steps: int) -> LoopConfig:
    """The config whose schedule spans `steps` (a quality run's resolved budget)."""
    return replace(config, steps=steps) if steps != config.steps else config
