"""A training run's settings (the one loop's configuration, training/loop.py) and its error type.

Torch-free on purpose: the CLI builds `pocketdiff train unet`'s flags from these defaults without loading torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from search_space.errors import UserError


class TrainError(UserError, RuntimeError):
    """A run that cannot start or continue (bad data/spec pairing, bad config); the message says why."""


SCHEDULES = ("constant", "cosine", "linear")
AUTO_ON_OFF = ("auto", "on", "off")
# [choose] full runs: lr 1e-3 (the proxy trainer's 3e-3 is tuned for 100-step runs), 1% warm-up, cosine to 10%.
LEARNING_RATE = 1e-3
MIN_LR_RATIO = 0.1


@dataclass(frozen=True)
class LoopConfig:
    steps: int = 1000
    batch_size: int = 32  # per rank and micro-batch: the global batch is batch_size * world_size * grad_accum
    grad_accum: int = 1
    lr: float = LEARNING_RATE
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "cosine"
    min_lr_ratio: float = MIN_LR_RATIO
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    fd_samples: int = 0  # >0: domain FD of this many samples at each sampling point (costs a classifier once)
    sample_steps: int = 8
    cfg_scale: float = 2.0
    autocast: str = "auto"  # bf16 autocast: auto = on GPU only
    grad_checkpoint: str = "auto"  # activation checkpointing: auto = on GPU only
    # Fused AdamW, multi-tensor gradient clipping and EMA (training/loop.py's make_optimizer, clip_gradients):
    # faster per step, equal to the per-tensor loops up to float rounding (benchmarks/proxy_throughput.md).
    fast_step: bool = True

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name}={getattr(self, name)} must be >= 1")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        for name in ("autocast", "grad_checkpoint"):
            if getattr(self, name) not in AUTO_ON_OFF:
                raise TrainError(f"{name}={getattr(self, name)!r} is not one of {', '.join(AUTO_ON_OFF)}")
        if not self.lr > 0:
            raise TrainError(f"lr={self.lr} must be positive")
