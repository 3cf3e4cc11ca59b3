"""At-scale rectified-flow training: a full run is one configuration of the one loop (training/loop.py).

SNAPGEN.md section 3 (objective [paper]: flow matching as SD3) at any scale, from a CPU smoke run to many GPUs.
This module is the entry point of `pocketdiff train`: it fits a spec to the data (its proxy unless `--as-is`),
starts the process group and runs `training.loop.fit` with the resumable step stream and checkpoints in the one
format (training/checkpoint.py). The split by job:
- training/loop.py: the loop (budget, schedule, accumulation, EMA, logging, samples, divergence);
- training/checkpoint.py: the one checkpoint format, read by every consumer (teacher, init, export, sample);
- training/distributed.py: torchrun -> process group, gradient averaging, RNG gathers;
- training/objectives.py (flow), training/distill.py (KD), training/step_distill.py (step distillation).
On CPU a resumed run repeats the uninterrupted one exactly: batches are a function of the step, and the RNG
states are restored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from search_space import UNetSpec

from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, TrainError, find_checkpoint,  # noqa: F401
                         load_trained, read_checkpoint, save_checkpoint, weights_digest)
from .data import FlowData
from .distributed import DistContext, init_distributed  # noqa: F401
from .loop import (AUTO_ON_OFF, LEARNING_RATE, MIN_LR_RATIO, SCHEDULES, LoopConfig, StepBatches,  # noqa: F401
                   enable_activation_checkpointing, fit, lr_lambda)
from .objectives import Objective
from .text import PromptEmbeddings

FullConfig = LoopConfig  # a full run's settings are the loop's


@dataclass
class FullResult:
    status: str  # "ok" or "diverged at step N (...)"
    step: int
    out_dir: Path
    checkpoint: Path | None  # the latest good checkpoint
    history: list[dict] = field(default_factory=list)  # this process's logged steps
    metrics: dict = field(default_factory=dict)  # final val loss / FD


def train_full(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, out_dir: str | Path,
               config: LoopConfig = LoopConfig(), objective: Objective | None = None,
               resume: str | Path | bool | None = None, meta: dict | None = None, init: str | Path | None = None,
               device: str | None = None, progress: bool = True, stop_at: int | None = None) -> FullResult:
    """Train `spec` (already fitted to the data; see prepare_spec) into `out_dir`.

    resume: True = the latest checkpoint under out_dir if any; a path = that checkpoint. init: any checkpoint of
    ours (a quality run's included) whose EMA weights start the student. stop_at: checkpoint and return at this
    step, keeping the schedule of `config.steps` (time-sliced jobs). Run under torchrun for DDP.
    """
    config.validate()
    _check_pairing(spec, data, prompts)
    ctx = init_distributed(device)
    try:
        r = fit(spec, data, prompts, config, ctx, objective=objective, stream="step", out_dir=out_dir,
                resume=resume, init=init, meta=meta, progress=progress, stop_at=stop_at)
    finally:
        ctx.close()
    return FullResult(r.status, r.step, Path(out_dir), r.checkpoint, r.history, r.metrics)


def prepare_spec(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, as_is: bool = False
                 ) -> tuple[UNetSpec, dict | None]:
    """(the spec to train, the proxy mapping or None): a full-size winner trains as its proxy (training.proxy)
    unless `as_is`, which trains the spec itself and needs it to fit the data and text encoder already."""
    from .proxy import proxy_spec

    if as_is:
        _check_pairing(spec, data, prompts)
        return spec, None
    proxy, mapping = proxy_spec(spec, data.channels, prompts.dim, prompts.pooled_dim)
    _check_pairing(proxy, data, prompts)
    return proxy, mapping


def _check_pairing(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings) -> None:
    problems = []
    if spec.latent_channels != data.channels:
        problems.append(f"latent_channels={spec.latent_channels} but the data {data.name} has {data.channels}")
    if spec.text_dim != prompts.dim:
        problems.append(f"text_dim={spec.text_dim} but the text encoder {prompts.encoder} gives {prompts.dim}")
    if spec.pooled_dim and spec.pooled_dim != prompts.pooled_dim:
        problems.append(f"pooled_dim={spec.pooled_dim} but the text encoder gives {prompts.pooled_dim}")
    if data.size % spec.downsample_factor:
        problems.append(f"the data's {data.size}x{data.size} size is not a multiple of the downsample factor "
                        f"{spec.downsample_factor}")
    if problems:
        raise TrainError(f"spec {spec.spec_id} does not fit the data: " + "; ".join(problems)
                         + " (train its proxy instead: drop --as-is)")
