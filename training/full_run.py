"""Full runs: a spec trained at any scale, from a CPU smoke run to many GPUs (`pocketdiff train unet`).

A recipe over the one loop (training/loop.py) with the resumable `step` stream and checkpoints in the one format
(training/checkpoint.py); flow matching as SD3 (docs/paper.md section 3), optionally with KD or step
distillation (docs/training.md). Its parts:
- `prepare_spec`: the spec to train, its proxy unless `as_is` (training/proxy.py), checked against the data;
- `distillation_objective`: the objective the run's options ask for: plain flow matching, multi-level KD from
  a frozen teacher (training/kd.py, training/teachers.py) or step distillation (training/step_distill.py);
- `train_full`: starts the process group (training/distributed.py) and runs `fit` into a run folder.
On CPU a resumed run repeats the uninterrupted one exactly: batches are a function of the step, and the RNG
states are restored.
"""
from __future__ import annotations

from pathlib import Path

from search_space import UNetSpec

from .config import LoopConfig, TrainError
from .data import FlowData
from .distributed import init_distributed
from .kd import KDObjective
from .kd_scaling import KDWeighting
from .loop import RunResult, fit
from .objectives import Objective
from .proxy import proxy_spec
from .config import StepDistillConfig
from .step_distill import StepDistillObjective
from .teachers import TEACHER_DTYPES, TeacherError, check_teacher, load_teacher
from .text import PromptEmbeddings


def train_full(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, out_dir: str | Path,
               config: LoopConfig = LoopConfig(), objective: Objective | None = None,
               resume: str | Path | bool | None = None, meta: dict | None = None, init: str | Path | None = None,
               device: str | None = None, progress: bool = True, stop_at: int | None = None) -> RunResult:
    """Train `spec` (already fitted to the data; see prepare_spec) into `out_dir`.

    resume: True = the latest checkpoint under out_dir if any; a path = that checkpoint. init: any checkpoint of
    ours (a quality run's included) whose EMA weights start the student. stop_at: checkpoint and return at this
    step, keeping the schedule of `config.steps` (time-sliced jobs). Run under torchrun for DDP.
    """
    config.validate()
    _check_pairing(spec, data, prompts)
    ctx = init_distributed(device)
    try:
        return fit(spec, data, prompts, config, ctx, objective=objective, stream="step", out_dir=out_dir,
                   resume=resume, init=init, meta=meta, progress=progress, stop_at=stop_at)
    finally:
        ctx.close()


def prepare_spec(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, as_is: bool = False
                 ) -> tuple[UNetSpec, dict | None]:
    """(the spec to train, the proxy mapping or None): a full-size winner trains as its proxy (training.proxy)
    unless `as_is`, which trains the spec itself and needs it to fit the data and text encoder already."""
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


def distillation_objective(teacher: str | Path | None, student: UNetSpec, prompts: PromptEmbeddings, data,
                           weighting: KDWeighting, feature_kd: bool = True, teacher_dtype: str = "fp32",
                           step_distill: StepDistillConfig | None = None, init: str | None = None
                           ) -> tuple[Objective | None, str]:
    """The training objective of a run: None (plain flow matching) without a teacher; multi-level KD from a
    frozen teacher; or step distillation to a `step_distill.sampler_steps`-step sampler (a StepDistillConfig;
    needs the trained multi-step model as `init` and as the teacher). Returns (objective, a line describing it).
    Every mistake is a TeacherError / StepDistillError raised before any checkpoint is touched."""
    if step_distill is None and teacher is None:
        return None, ""
    if teacher is None:
        raise TeacherError("--step-distill needs --teacher (the multi-step model, usually the --init run)")
    if step_distill is not None:
        if init is None:
            raise TeacherError("--step-distill needs --init CHECKPOINT (the trained multi-step model)")
        step_distill.validate()
    frozen = load_teacher(teacher, TEACHER_DTYPES[teacher_dtype])
    check_teacher(frozen, student, prompts, data.size, data.class_names)
    if step_distill is None:
        return (KDObjective(frozen, prompts, data.resolution, data.size, weighting, feature_kd, data.class_names),
                f"teacher {frozen.description}  weighting {weighting.identity()}")
    return (StepDistillObjective(frozen, prompts, data.resolution, data.size, step_distill, data.class_names),
            f"teacher {frozen.description}  {step_distill.sampler_steps}-step sampler, teacher CFG "
            f"{step_distill.teacher_cfg:g}, student CFG 1")
