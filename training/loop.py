"""The training engine: one loop, `fit`, configured by a `LoopConfig`, for every kind of UNet training.

Quality runs (training/quality_run.py), full runs, KD and step distillation (training/full_run.py) are recipes
that configure it; nanoGPT and DiT keep one loop the same way (docs/training.md). `fit` runs
- a batch stream (training/streams.py): `crn`, common random numbers for paired design comparisons, or `step`,
  where batch k of rank r is a pure function of (seed, k, r) so a resumed run sees exactly its batches;
- an `Objective` (training/objectives.py: plain flow matching, docs/paper.md section 3; KD; step distillation);
- a budget (steps, or wall seconds for quality runs) and a learning-rate schedule (training/schedule.py);
- AdamW, gradient clipping, gradient accumulation, an EMA of the weights with TensorFlow's warm-up rule
  (training/optim.py);
- DDP under torchrun (training/distributed.py), bf16 autocast and activation checkpointing on GPU;
- with an `out_dir`: checkpoints in the one format (training/checkpoint.py), TensorBoard scalars and
  `metrics.jsonl`, sample grids and the domain FD; without one (a quality run): reports at fractions of the
  budget to a callback that may stop the run.
A NaN/inf loss or gradient ends the run with status "diverged at step N" before the optimiser step, so the
last good checkpoint stays the latest.

`fit` reads as its four phases: `_setup` (model, EMA, objective, optimiser, stream, run folder), `_train_step`
(one optimiser step over the micro-batches), `_after_step` (reports, logs, checkpoints, sample grids) and
`_finish` (final metrics, summary, the `RunResult`).
"""
from __future__ import annotations

import copy
import functools
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from search_space import UNetSpec, build_model

from .budget import Budget
from .checkpoint import (CheckpointError, find_checkpoint, load_trained, read_checkpoint, read_state, run_meta,
                         save_checkpoint, split_weights, weights_digest)
from .conditioning import Conditioner
from .config import LoopConfig, TrainError
from .data import FlowData
from .distributed import DistContext, rng_state, set_rng_state
from .objectives import Objective
from .optim import clip_gradients, ema_decay_at, ema_update, enable_activation_checkpointing, make_optimizer
from .sample import sample_classes
from .schedule import lr_lambda, replace_steps, wall_clock_factor
from .streams import STREAMS, CRNStream, StepStream
from .text import PromptEmbeddings
from .throughput import THROUGHPUT_FIELDS, matmul_peak, throughput_metrics, training_flops_per_step
from .validation import VAL_MAX, VAL_REPORT, validation_loss

SAMPLE_GRID_PER_CLASS = 8

MetricsCallback = Callable[[dict], "bool | None"]  # return True to stop the run (e.g. an Optuna prune)


@dataclass
class RunResult:
    """What one run of the loop gives back, whatever the recipe."""
    status: str  # "ok", "diverged at step N ...", "stopped ..."
    step: int  # the steps taken
    raw: nn.Module  # the raw weights
    ema: nn.Module  # the EMA weights: what is sampled and scored
    images: int  # training images seen, all processes together
    seconds: float  # wall time of the loop, periodic validation included
    history: list[dict] = field(default_factory=list)  # this process's logged steps / reports
    metrics: dict = field(default_factory=dict)  # final val loss (and FD with an out_dir), throughput fields
    checkpoint: Path | None = None  # the latest good checkpoint
    stream_digest: str = ""  # the CRN stream's digest: equal for every candidate of one seed and budget
    budget_steps: int | None = None  # the resolved step budget (None for wall-clock budgets)
    out_dir: Path | None = None

    @property
    def val_loss(self) -> float | None:
        return self.metrics.get("val_loss")

    @property
    def throughput(self) -> dict:
        """The training/throughput.py fields: FLOP/s and the roofline ratio."""
        return {k: v for k, v in self.metrics.items() if k in THROUGHPUT_FIELDS}

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Run:
    """What one call of `fit` carries from setup to finish."""
    spec: UNetSpec
    data: FlowData
    prompts: PromptEmbeddings
    config: LoopConfig
    ctx: DistContext
    budget: Budget
    objective: Objective
    autocast: bool
    model: nn.Module
    ema: nn.Module
    train_model: nn.Module  # the model, or its DDP wrapper
    extra: list[nn.Module]  # the objective's trainable modules
    extra_params: list[torch.Tensor]
    opt: torch.optim.Optimizer
    cond: Conditioner
    batches: StepStream | CRNStream
    schedule: Callable[[int], float] | None  # None: a wall-clock budget
    identity: dict  # what a resumed run must share
    meta: dict  # the checkpoint metadata
    callback: MetricsCallback | None
    report_fraction: float | None
    progress: bool
    out: Path | None = None
    writer: Any = None  # TensorBoard SummaryWriter (main process with an out_dir)
    metrics_path: Path | None = None
    ckpt_dir: Path | None = None
    resume_from: Path | None = None
    step: int = 0
    end: int | None = None  # the budget's last step (None: wall clock)
    stop: int | None = None  # where this call returns (stop_at)
    history: list[dict] = field(default_factory=list)
    last_ckpt: Path | None = None
    status: str = "ok"
    running: float | None = None  # the smoothed training loss
    next_report: float | None = None
    images: int = 0
    step_seconds: float = 0.0  # the training steps alone (no validation, checkpoints, samples)
    steps_timed: int = 0
    start: float = 0.0
    bar: Any = None

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def more(self) -> bool:
        if self.stop is not None:
            return self.step < self.stop
        return not self.budget.done(self.step, time.perf_counter() - self.start)


def fit(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, config: LoopConfig, ctx: DistContext, *,
        budget: Budget | None = None, objective: Objective | None = None, stream: str = "step",
        out_dir: str | Path | None = None, resume: str | Path | bool | None = None, init: str | Path | None = None,
        meta: dict | None = None, callback: MetricsCallback | None = None, report_fraction: float | None = None,
        progress: bool = True, stop_at: int | None = None) -> RunResult:
    """Train `spec` (already fitted to the data) with `objective` for `budget` (default: config.steps steps).

    out_dir: checkpoints, logs and samples go there (resume: True = its latest checkpoint, a path = that one);
    without it nothing is written. init: any checkpoint of ours whose EMA weights start the student. stop_at:
    checkpoint and return at this step, keeping the schedule of the budget (time-sliced jobs). report_fraction:
    every such share of the budget, a report with the validation loss goes to `callback` (quality runs).
    """
    run = _setup(spec, data, prompts, config, ctx, budget, objective, stream, init, meta, callback,
                 report_fraction, progress)
    _open_out_dir(run, out_dir, resume, init)
    _start(run, stop_at)
    while run.more():
        stepped = _train_step(run)
        if stepped is None or _after_step(run, *stepped):
            break  # diverged, or stopped by the callback
    return _finish(run)


# --- setup ---------------------------------------------------------------------------------------------------

def _setup(spec, data, prompts, config, ctx, budget, objective, stream, init, meta, callback, report_fraction,
           progress) -> _Run:
    """The student, its EMA, the objective, the optimiser and the batch stream."""
    objective = objective or Objective()
    budget = budget or Budget(steps=config.steps)
    if budget.steps is None and budget.seconds is None:
        raise TrainError(f"budget {budget} must be resolved to steps first (Budget.resolve)")
    if stream not in STREAMS:
        raise TrainError(f"stream={stream!r} is not one of {', '.join(STREAMS)}")
    device = ctx.device
    autocast = config.autocast == "on" or (config.autocast == "auto" and device.type == "cuda")
    grad_ckpt = config.grad_checkpoint == "on" or (config.grad_checkpoint == "auto" and device.type == "cuda")
    _require_memory(spec, data, prompts, config, device, grad_ckpt)
    model = _initial_model(spec, config, ctx, init)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    objective.budget_steps, objective.seed = budget.steps, config.seed
    objective.attach(model, device, ctx)
    extra = [m.to(device) for m in objective.trainable()]
    extra_params = [p for m in extra for p in m.parameters()]
    if grad_ckpt:
        enable_activation_checkpointing(model)
    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    cond = Conditioner(spec, prompts, data.resolution, device)
    opt = make_optimizer([{"params": list(model.parameters())}, {"params": extra_params}], config.lr,
                         config.weight_decay, config.fast_step)
    schedule = lr_lambda(replace_steps(config, budget.steps)) if budget.steps is not None else None
    batches = StepStream(data, config, ctx) if stream == "step" else CRNStream(data, config, ctx)
    identity = {"spec_id": spec.spec_id, "data": data.name, "encoder": prompts.encoder,
                "objective": objective.identity()}
    full_meta = {**(meta or {}), **run_meta(data, prompts, config.cfg_scale, config.sample_steps), **identity,
                 "config": asdict(config), "world_size": ctx.world, "init": str(init) if init else None}
    return _Run(spec, data, prompts, config, ctx, budget, objective, autocast, model, ema, train_model, extra,
                extra_params, opt, cond, batches, schedule, identity, full_meta, callback, report_fraction, progress)


@functools.lru_cache(maxsize=16)
def _training_bytes(spec: UNetSpec, size: int, text_tokens: int, batch: int, checkpointing: bool) -> int:
    """training_bytes on the meta device (a few tenths of a second for a proxy), once per process and shape."""
    from search_space import example_inputs
    from search_space.memory import training_bytes

    inputs = example_inputs(spec, size, text_tokens=text_tokens, device="meta")
    return training_bytes(build_model(spec, "meta"), inputs, batch, checkpointing)


def _require_memory(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, config: LoopConfig, device,
                    checkpointing: bool) -> None:
    """Refuse, before the model is built, a run whose weights, optimizer state and activations at this batch size
    cannot fit in the device's free memory (search_space/memory.py; measured on the meta device)."""
    from search_space.memory import require_memory

    need = _training_bytes(spec, data.size, prompts.tokens.shape[1], config.batch_size, checkpointing)
    require_memory(need, f"training spec {spec.spec_id} on {data.size}x{data.size} inputs at batch size "
                         f"{config.batch_size}", "--batch-size or the widths (--set, --width-mult)", device, TrainError)


def _initial_model(spec: UNetSpec, config: LoopConfig, ctx: DistContext, init: str | Path | None) -> nn.Module:
    torch.manual_seed(config.seed + ctx.rank)  # the global stream, per rank; building a model draws nothing from it
    model = build_model(spec, seed=config.seed)  # paired weights (search_space/init.py), the same on every rank
    if init is not None:
        init_model, init_spec, _ = load_trained(init)
        if init_spec.spec_id != spec.spec_id:
            raise CheckpointError(f"--init checkpoint is for spec {init_spec.spec_id}, this run trains {spec.spec_id}")
        model.load_state_dict(init_model.state_dict())
    return model.to(ctx.device).train()


def _open_out_dir(run: _Run, out_dir, resume, init) -> None:
    """With an out_dir: resume from its checkpoint (or refuse to overwrite one), run.json, logs, TensorBoard."""
    if out_dir is None:
        if resume:
            raise TrainError("resume needs an out_dir holding checkpoints")
        return
    if not run.batches.resumable:
        raise TrainError("a run with an out_dir checkpoints and resumes: use the step stream")
    out = run.out = Path(out_dir)
    ctx = run.ctx
    run.ckpt_dir, run.metrics_path = out / "checkpoints", (out / "metrics.jsonl" if ctx.main else None)
    if resume:
        if resume is True:
            if (run.ckpt_dir / "latest").is_file():
                run.resume_from = find_checkpoint(out)
            elif ctx.main and run.progress:
                print(f"no checkpoint under {out}; starting from step 0", flush=True)
        else:
            run.resume_from = find_checkpoint(resume)
    if run.resume_from is not None:
        run.step = _restore(run.resume_from, run)
    elif (run.ckpt_dir / "latest").is_file():  # every rank sees the same run folder and stops together
        raise TrainError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({**run.meta, "spec": json.loads(run.spec.to_json())}, indent=1))
        if run.resume_from is not None:
            _truncate_log(out / "metrics.jsonl", run.step)
        elif run.metrics_path.exists():
            run.metrics_path.unlink()
        from torch.utils.tensorboard import SummaryWriter
        run.writer = SummaryWriter(str(out / "tb"), purge_step=run.step if run.resume_from is not None else None)
    ctx.barrier()


def _start(run: _Run, stop_at: int | None) -> None:
    from tqdm import tqdm

    run.end = run.budget.steps
    run.stop = min(stop_at, run.end) if stop_at is not None and run.end is not None else run.end
    run.last_ckpt = run.resume_from
    run.next_report = run.report_fraction
    run.bar = tqdm(total=run.end if run.end is not None else int(run.budget.seconds), initial=run.step,
                   desc="train", unit="step" if run.end is not None else "s",
                   disable=not (run.progress and run.ctx.main), leave=run.out is not None)
    run.start = time.perf_counter()  # includes periodic validation: a seconds budget is wall time for the whole run


# --- one optimiser step --------------------------------------------------------------------------------------

def _train_step(run: _Run) -> tuple[float, torch.Tensor, dict] | None:
    """One optimiser step over `grad_accum` micro-batches; returns (lr factor, gradient norm, logged losses), or
    None when the loss or gradient is not finite (the status says so; the weights are not updated)."""
    config, ctx, device = run.config, run.ctx, run.device
    t_step = time.perf_counter()
    factor = (run.schedule(run.step) if run.schedule is not None
              else wall_clock_factor(config, run.step, time.perf_counter() - run.start, run.budget.seconds))
    for group in run.opt.param_groups:
        group["lr"] = config.lr * factor
    run.opt.zero_grad(set_to_none=True)
    logs_sum: dict[str, float] = {}
    finite = True
    for micro in range(config.grad_accum):
        x0, labels, drop, noise, t = run.batches.draw(run.objective.sample_t)
        x0, labels, noise, t = (v.to(device, non_blocking=True) for v in (x0, labels, noise, t))
        labels = torch.where(drop.to(device), torch.full_like(labels, run.cond.null), labels)
        sync = not ctx.enabled or micro == config.grad_accum - 1
        with nullcontext() if sync else run.train_model.no_sync():
            loss, logs = run.objective.loss(run.train_model, run.cond, x0, noise, t, labels, run.autocast)
            finite = ctx.all_finite(bool(torch.isfinite(loss)))
            if not finite:
                break
            (loss / config.grad_accum).backward()
        for k, v in {"loss": loss.detach(), **logs}.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / config.grad_accum
        run.images += len(x0) * ctx.world
    if finite:
        ctx.average_grads(run.extra_params)
        grad_norm = clip_gradients(list(run.model.parameters()) + run.extra_params, config.grad_clip,
                                   config.fast_step)
        finite = bool(torch.isfinite(grad_norm))  # gradients are all-reduced: every rank sees the same norm
    if not finite:
        run.status = f"diverged at step {run.step}"
        if run.out is not None:
            run.status += (" (non-finite loss or gradient); " + (f"last good checkpoint {run.last_ckpt}"
                                                                  if run.last_ckpt else "no checkpoint was written"))
        return None
    run.opt.step()
    run.step += 1
    ema_update(run.ema, run.model, ema_decay_at(run.step, config.ema_decay), fast=config.fast_step)
    logs_sum.update(run.objective.aux_step(run.step))
    run.step_seconds += time.perf_counter() - t_step
    run.steps_timed += 1
    return factor, grad_norm, logs_sum


# --- after each step -----------------------------------------------------------------------------------------

def _after_step(run: _Run, factor: float, grad_norm: torch.Tensor, logs_sum: dict) -> bool:
    """Progress, the budget-fraction reports (quality runs) and, with an out_dir, logs, checkpoints and sample
    grids. Returns True when the callback stops the run."""
    run.running = logs_sum["loss"] if run.running is None else 0.9 * run.running + 0.1 * logs_sum["loss"]
    elapsed = time.perf_counter() - run.start
    run.bar.update(1 if run.end is not None else int(elapsed) - run.bar.n)
    if run.report_fraction is not None and _report(run, factor, elapsed):
        return True
    if run.out is None:
        return False
    _log_step(run, factor, grad_norm, logs_sum, elapsed)
    if run.ctx.main and run.config.sample_every and run.step % run.config.sample_every == 0 and run.step < run.end:
        evaluation = {"step": run.step, **sample_and_score(run.ema, run.spec, run.data, run.prompts, run.config,
                                                           run.out, run.step, run.device, run.autocast)}
        run.history.append(evaluation)
        _log(run.writer, run.metrics_path, evaluation)
    return False


def _report(run: _Run, factor: float, elapsed: float) -> bool:
    """Every `report_fraction` of the budget: the validation loss to the callback; True = it stops the run."""
    fraction = run.budget.fraction(run.step, elapsed)
    if fraction < run.next_report:
        return False
    run.next_report = round(run.next_report + run.report_fraction, 6)  # no float drift past the final 1.0
    final = run.end is not None and run.step >= run.end
    report = {"step": run.step, "images": run.images, "seconds": round(elapsed, 3),
              "fraction": min(1.0, fraction), "lr": run.config.lr * factor, "train_loss": run.running,
              "val_loss": validation_loss(run.ema, run.cond, run.data, run.device, run.autocast,
                                          VAL_MAX if final else VAL_REPORT)}
    run.history.append(report)
    run.bar.set_postfix(loss=f"{run.running:.4f}", val=f"{report['val_loss']:.4f}")
    if run.callback is not None and run.callback(report):
        run.status = f"stopped by callback at step {run.step}"
        return True
    return False


def _log_step(run: _Run, factor: float, grad_norm: torch.Tensor, logs_sum: dict, elapsed: float) -> None:
    """The step's log line (every log_every steps), then its checkpoint (every checkpoint_every steps)."""
    ctx, step = run.ctx, run.step
    record = None
    if step % run.config.log_every == 0 or step == run.end or step == 1:
        logs_sum = ctx.mean_scalars(logs_sum)  # the logged losses are averages over ranks
        record = {"step": step, "lr": run.config.lr * factor, "grad_norm": float(grad_norm), "images": run.images,
                  "seconds": round(elapsed, 3), **logs_sum}
        if ctx.enabled:
            record["world_size"] = ctx.world
        run.bar.set_postfix(loss=f"{logs_sum['loss']:.4f}")
    checkpoint_now = step % run.config.checkpoint_every == 0 or step == run.end or step == run.stop
    if step == 1 or checkpoint_now:
        digests = ctx.gather(weights_digest(run.model))
        if len(set(digests)) != 1:
            raise TrainError(f"ranks disagree on the weights after step {step}: {digests}")
        record = record or {"step": step}
        record["rank_digests"] = digests
    # The step's log line is written before the checkpoint that covers it: a kill in between leaves a line
    # past the last checkpoint, which the resumed run truncates and writes again; the other order could lose it.
    if record is not None:
        run.history.append(record)
        if ctx.main:
            _log(run.writer, run.metrics_path, record)
    if checkpoint_now:
        _checkpoint(run)


def _checkpoint(run: _Run) -> None:
    ctx, step = run.ctx, run.step
    rng = ctx.gather(rng_state(run.batches.gen))
    if ctx.main:
        state = {"step": step, "optimizer": run.opt.state_dict(), "rng": rng,
                 "objective": run.objective.state_dict(), "extra": [m.state_dict() for m in run.extra],
                 "identity": run.identity, "config": asdict(run.config), "world_size": ctx.world}
        save_checkpoint(run.ckpt_dir, step, run.model, run.ema, run.spec, run.meta, state,
                        run.config.keep_checkpoints)
    ctx.barrier()
    run.last_ckpt = run.ckpt_dir / f"step_{step:07d}"


# --- finish --------------------------------------------------------------------------------------------------

def _finish(run: _Run) -> RunResult:
    """Final metrics (validation loss; with an out_dir also samples, FD and summary.json) and the result."""
    seconds = time.perf_counter() - run.start
    run.bar.close()
    ctx, step, end = run.ctx, run.step, run.end
    metrics: dict = {}
    throughput = _throughput(run)
    if run.status == "ok" and end is not None and step < end:
        run.status = f"stopped at step {step} of {end}; continue with --resume"
    elif run.out is not None and ctx.main:
        if run.status == "ok":
            metrics = sample_and_score(run.ema, run.spec, run.data, run.prompts, run.config, run.out, step,
                                       run.device, run.autocast)
            _log(run.writer, run.metrics_path, {"step": step, **metrics})
        metrics.update(throughput)
        (run.out / "summary.json").write_text(json.dumps({"status": run.status, "step": step,
                                                          "checkpoint": str(run.last_ckpt) if run.last_ckpt else None,
                                                          **metrics}, indent=1))
    elif run.out is None:
        metrics = {"val_loss": _final_val_loss(run)}
    metrics.update(throughput)
    if run.writer is not None:
        run.writer.close()
    ctx.barrier()
    return RunResult(run.status, step, run.model, run.ema, run.images, seconds, run.history, metrics,
                     Path(run.last_ckpt) if run.last_ckpt else None, run.batches.digest, run.budget.steps, run.out)


def _final_val_loss(run: _Run) -> float | None:
    """A run without an out_dir: the full validation loss of the final EMA weights (None after a divergence)."""
    history, step, end = run.history, run.step, run.end
    if history and history[-1]["step"] == step and end is not None and step >= end:
        val = history[-1]["val_loss"]  # the final report already holds the final weights' full loss
    else:
        val = (validation_loss(run.ema, run.cond, run.data, run.device, run.autocast)
               if run.status == "ok" or step == 0 else None)
    if val is not None and not math.isfinite(val):
        run.status, val = f"diverged at step {step}", None
    return val


def _throughput(run: _Run) -> dict:
    """Achieved training FLOP/s of this process and its share of the host's measured matmul peak at the
    training dtype (training/throughput.py); the student's FLOPs only (a teacher's forward is not counted)."""
    if run.steps_timed == 0:
        return {}
    data, config = run.data, run.config
    flops = training_flops_per_step(run.spec, (data.channels, data.size, data.size), run.prompts.tokens.shape[1],
                                    run.prompts.dim, config.batch_size * config.grad_accum)
    peak = matmul_peak(run.device, torch.bfloat16 if run.autocast else torch.float32)
    return throughput_metrics(flops, run.steps_timed, run.step_seconds, peak)


def _restore(path: Path, run: _Run) -> int:
    """Load a checkpoint's weights, optimiser, objective and RNG state into this run; returns its step."""
    ctx, config = run.ctx, run.config
    manifest, tensors = read_checkpoint(path)
    state = read_state(Path(manifest["path"]))
    saved = manifest["meta"]
    for key in ("spec_id", "data", "encoder", "objective"):
        if saved.get(key) != run.identity[key]:
            raise CheckpointError(f"checkpoint {path} does not match this run: {key} is {saved.get(key)!r} there "
                                  f"and {run.identity[key]!r} here; use the same {key} or another --out")
    if state["world_size"] != ctx.world:
        raise CheckpointError(f"checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{ctx.world}: the data order and RNG streams would differ; resume with "
                              f"--nproc_per_node {state['world_size']}")
    for key in ("batch_size", "grad_accum", "seed"):
        if state["config"][key] != getattr(config, key):
            raise CheckpointError(f"checkpoint {path} has {key}={state['config'][key]}, this run "
                                  f"{key}={getattr(config, key)}; a resumed run keeps the data order")
    try:
        run.model.load_state_dict(split_weights(tensors, "model."))
        run.ema.load_state_dict(split_weights(tensors, "ema."))
        run.opt.load_state_dict(state["optimizer"])
        for m, s in zip(run.objective.trainable(), state["extra"]):
            m.load_state_dict(s)
        run.objective.load_state_dict(state["objective"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
    set_rng_state(run.batches.gen, state["rng"][ctx.rank])
    step = int(state["step"])
    run.batches.k = step * config.grad_accum
    return step


@torch.no_grad()
def sample_and_score(ema, spec, data, prompts, config: LoopConfig, out: Path, step: int, device, autocast) -> dict:
    """Validation loss, a sample grid (pixel data) and the domain FD when fd_samples > 0."""
    from torchvision.utils import save_image

    metrics = {"val_loss": validation_loss(ema, Conditioner(spec, prompts, data.resolution, device), data, device,
                                           autocast)}
    n_classes = min(10, data.num_classes)
    labels = torch.arange(n_classes).repeat_interleave(SAMPLE_GRID_PER_CLASS)
    x = sample_classes(ema, spec, data, prompts, labels, config.seed, config.sample_steps, config.cfg_scale,
                       device=device, progress=False)
    if data.kind == "pixel" and torch.isfinite(x).all():
        (out / "samples").mkdir(parents=True, exist_ok=True)
        save_image(data.to_images(x).float() / 255, out / "samples" / f"step_{step:07d}.png",
                   nrow=SAMPLE_GRID_PER_CLASS)
    if config.fd_samples:
        from .fidelity import domain_metrics
        labels = torch.arange(config.fd_samples) % data.num_classes
        x = sample_classes(ema, spec, data, prompts, labels, config.seed, config.sample_steps, config.cfg_scale,
                           device=device, progress=False)
        if torch.isfinite(x).all():
            metrics.update({k: v for k, v in domain_metrics(x, data).items() if isinstance(v, float)})
    ema.eval()
    return metrics


def _log(writer, path: Path | None, record: dict) -> None:
    if writer is not None:
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                writer.add_scalar(k, v, record["step"])
        writer.flush()
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop lines a killed run wrote after its last checkpoint: the resumed run writes them again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            pass  # a line cut by the kill
    path.write_text("".join(x + "\n" for x in keep))
