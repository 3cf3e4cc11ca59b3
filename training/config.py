"""The one training loop's configuration (training/loop.py) and its error type.

`LoopConfig` holds every setting of a run, each default written once, here. Its fields are also the flags of
`pocketdiff train unet` (the CLI builds them from the fields' types, defaults and `help` metadata), and
`LoopConfig.quality_preset()` is the configuration of a quality run (training/quality_run.py).

Torch-free on purpose: the CLI builds its flags from this module without loading torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from search_space.errors import MAX_SEED, UserError

from .budget import LIMITS, WARMUP_STEPS


class TrainError(UserError, RuntimeError):
    """A run that cannot start or continue (bad data/spec pairing, bad config); the message says why."""


SCHEDULES = ("constant", "cosine", "linear")
AUTO_ON_OFF = ("auto", "on", "off")

# [choose] the two learning rates, each for its run length. Quality runs (a few hundred steps): DiT's lr 1e-4 is
# for 675M params and 400k steps. Measured on tiny-debug / MNIST-5k, 40 s on 2 shared cores: held-out loss 0.97
# (batch 64, lr 1e-3), 0.37 (32, 2e-3), 0.32 (32, 4e-3); the fig3 proxies are stable at 4e-3 but no better than
# 1e-3 after 30 steps, hence 3e-3. Full runs (thousands of steps): 1e-3 with 1% warm-up and cosine decay to 10%.
QUALITY_RUN_LR = 3e-3
FULL_RUN_LR = 1e-3

# Stated ranges of the sampling and batch settings, for the loop's flags and for every other place that takes
# them (the flow evaluator's options in a study file, `pocketdiff eval`): far above any use, far below overflow.
MAX_SAMPLE_STEPS = 10_000  # Euler steps (the paper samples with 28; distilled students with 4)
MAX_CFG_SCALE = 100.0  # guidance scale (the paper samples at up to 7.5)
MAX_SAMPLES = 100_000  # generated images to score (the FID protocol uses 50,000)
MAX_SEEDS = 64  # seeds per candidate (3 gives a 95% interval)
MAX_BATCH = 1 << 16  # images per micro-batch


def flag(default, help_line: str, choices: tuple | None = None):
    """A config field that is also a CLI flag: its default, its help line and its allowed values."""
    return field(default=default, metadata={"help": help_line, "choices": choices})


@dataclass(frozen=True)
class LoopConfig:
    steps: int = flag(1000, "total steps (the LR schedule's length)")
    # More, smaller steps: a 60 s CPU quality budget sees about 100 of them.
    batch_size: int = flag(32, "per process and micro-batch (global batch: x processes x --grad-accum)")
    grad_accum: int = flag(1, "micro-batches per optimiser step")
    lr: float = flag(FULL_RUN_LR, "peak learning rate")
    weight_decay: float = flag(0.0, "AdamW weight decay (DiT uses none)")
    warmup_steps: int = flag(WARMUP_STEPS, "linear learning-rate warm-up, in steps")
    schedule: str = flag("cosine", "learning-rate decay after the warm-up", SCHEDULES)
    min_lr_ratio: float = flag(0.1, "the decay's final learning rate as a share of --lr")
    grad_clip: float = flag(1.0, "global gradient-norm clip (as SD3 / SDXL training scripts)")
    ema_decay: float = flag(0.999, "decay of the EMA weights (what is sampled and scored)")
    # Condition dropout 10%: the classifier-free-guidance paper (Ho & Salimans 2022) and SD's training use 0.1.
    cond_dropout: float = flag(0.1, "share of training labels replaced by the empty prompt (for guidance)")
    seed: int = flag(0, "seed of the data order, noise, timesteps and initial weights")
    checkpoint_every: int = flag(100, "steps between checkpoints")
    keep_checkpoints: int = flag(2, "checkpoints kept on disk (the newest)")
    log_every: int = flag(10, "steps between log lines (metrics.jsonl, TensorBoard)")
    sample_every: int = flag(0, "steps between sample grids; 0 = only at the end")
    fd_samples: int = flag(0, "domain FD of N samples when sampling (trains a classifier once)")
    sample_steps: int = flag(8, "Euler steps of the sample grids")
    cfg_scale: float = flag(2.0, "guidance scale of the sample grids")
    autocast: str = flag("auto", "bf16 autocast (auto: GPU)", AUTO_ON_OFF)
    grad_checkpoint: str = flag("auto", "activation checkpointing (auto: GPU)", AUTO_ON_OFF)
    # Fused AdamW, multi-tensor gradient clipping and EMA (training/optim.py): faster per step, equal to the
    # per-tensor loops up to float rounding (benchmarks/proxy_throughput.md).
    fast_step: bool = flag(True, "fused AdamW, multi-tensor clipping and EMA")

    @classmethod
    def quality_preset(cls, **changes) -> "LoopConfig":
        """A quality run (training/quality_run.py): lr 3e-3, warm-up, then linear decay to exactly zero at the
        budget's end, so every candidate ends converged for its length instead of mid-flight."""
        return cls(**{"lr": QUALITY_RUN_LR, "schedule": "linear", "min_lr_ratio": 0.0, **changes})

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "sample_steps"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name}={getattr(self, name)} must be >= 1")
        if self.schedule not in SCHEDULES:
            raise TrainError(f"schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        for name in ("autocast", "grad_checkpoint"):
            if getattr(self, name) not in AUTO_ON_OFF:
                raise TrainError(f"{name}={getattr(self, name)!r} is not one of {', '.join(AUTO_ON_OFF)}")
        _check_numbers(self, TrainError, {
            "lr": (0, 10, False), "weight_decay": (0, 10, True), "min_lr_ratio": (0, 1, True),
            "grad_clip": (0, math.inf, False), "ema_decay": (0, 1, True), "cond_dropout": (0, 1, True),
            "cfg_scale": (0, MAX_CFG_SCALE, True)})
        for name, high in (("steps", LIMITS["steps"]), ("seed", MAX_SEED), ("batch_size", MAX_BATCH),
                           ("warmup_steps", LIMITS["steps"]), ("sample_every", LIMITS["steps"]),
                           ("fd_samples", MAX_SAMPLES), ("sample_steps", MAX_SAMPLE_STEPS),
                           ("keep_checkpoints", 10_000)):
            if not 0 <= getattr(self, name) <= high:
                raise TrainError(f"{name}={getattr(self, name)} must be within 0..{high}")
        if self.keep_checkpoints < 1:
            raise TrainError(f"keep_checkpoints={self.keep_checkpoints} must be >= 1")


def _check_numbers(config, error: type, ranges: dict[str, tuple[float, float, bool]]) -> None:
    """Each named field a finite number within [low, high] (low itself only where allowed): NaN and inf are
    refused here, before a run that would end "ok" with NaN losses or store them in a checkpoint."""
    for name, (low, high, low_ok) in ranges.items():
        v = getattr(config, name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and (v >= low if low_ok else v > low) and v <= high):
            raise error(f"{name}={v} must be a finite number {'>=' if low_ok else '>'} {low:g} and <= {high:g}")


# --- step distillation (training/step_distill.py) ------------------------------------------------------------

SAMPLER_STEPS = (2, 4, 8)  # [choose] powers of two: the 8-step grid holds the 4-step one; [paper] 4 and 8


class StepDistillError(UserError):
    """A step-distillation setting the sampler or the run cannot use; the message names it."""


@dataclass(frozen=True)
class StepDistillConfig:
    """The step-distillation objective's settings. `sampler_steps` is `pocketdiff train unet --step-distill N`;
    every other field is a flag of its own (used only with --step-distill)."""

    sampler_steps: int = 4
    # [choose] teacher Euler steps per student step: the teacher runs 4 x N steps
    teacher_substeps: int = flag(4, "teacher Euler steps per student step for the few-step target (1 is enough "
                                    "where the teacher's N-step samples already match its 28-step ones)")
    # [choose] the guidance distilled into the student (the base runs score at CFG 2)
    teacher_cfg: float = flag(2.0, "guidance of the teacher velocity distilled into the student (the student "
                                   "then samples at CFG 1)")
    # [choose] share of each batch trained on the student's own rollout states
    rollout_share: float = flag(0.5, "share of each batch trained on the student's own rollout states")
    task_weight: float = flag(0.0, "weight of the plain flow term on the forward-process half")
    # [choose] generator GAN weight next to the few-step KD (ADD uses 2.5 on a normalised hinge; at this scale
    # 0.1 keeps the KD term in charge)
    adv_weight: float = flag(0.1, "generator GAN loss weight")
    adv_start: float = flag(0.5, "share of the run that is KD only before the generator's adversarial term joins")
    # [choose] the heads are small and see every step from the start
    disc_lr: float = flag(1e-3, "learning rate of the discriminator heads")

    def validate(self) -> None:
        if self.sampler_steps not in SAMPLER_STEPS:
            raise StepDistillError(f"--step-distill {self.sampler_steps}: the sampler supports "
                                   f"{', '.join(map(str, SAMPLER_STEPS))} steps")
        if self.teacher_substeps < 1:
            raise StepDistillError(f"teacher_substeps={self.teacher_substeps} must be >= 1")
        if not 0 <= self.rollout_share <= 1 or not 0 <= self.adv_start <= 1:
            raise StepDistillError("rollout_share and adv_start are shares within [0, 1]")
        _check_numbers(self, StepDistillError, {"teacher_cfg": (0, 100, True), "task_weight": (0, 1e6, True),
                                                 "adv_weight": (0, 1e6, True), "disc_lr": (0, 10, False)})
