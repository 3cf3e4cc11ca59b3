"""The one training loop: a budget and an objective, for quality runs, full runs, KD and step distillation.

SNAPGEN.md section 3 (objective [paper]: flow matching as SD3). nanoGPT / DiT keep one loop and configure it;
so does this project (issue 12): `fit` runs
- a batch stream: `crn` (common random numbers for paired design comparisons, training/trainer.py's
  `TrainStream`) or `step` (batch k of rank r is a pure function of (seed, k, r): a resumed run sees exactly the
  batches it would have seen; ranks take disjoint slices of one permutation);
- an `Objective` (training/objectives.py: plain flow, KD, step distillation);
- a budget (steps, or wall seconds for quality runs) and a learning-rate schedule (linear warm-up, then
  constant, cosine or linear decay to `min_lr_ratio`; quality runs decay linearly to exactly zero);
- AdamW, gradient clipping, gradient accumulation, an EMA of the weights with TensorFlow's warm-up rule;
- DDP under torchrun (training/distributed.py), bf16 autocast and activation checkpointing on GPU;
- with an `out_dir`: checkpoints in the one format (training/checkpoint.py), TensorBoard scalars and
  `metrics.jsonl`, sample grids and the domain FD; without one (a quality run): reports at fractions of the
  budget to a callback that may stop the run.
A NaN/inf loss or gradient ends the run with status "diverged at step N" before the optimiser step, so the
last good checkpoint stays the latest.
"""
from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from search_space import UNetSpec, build_model

from .checkpoint import (CheckpointError, find_checkpoint, load_trained, read_checkpoint, read_state,
                         run_meta, save_checkpoint, split_weights, weights_digest)
from .data import FlowData
from .distributed import DistContext, rng_state, set_rng_state
from .objectives import Objective
from .text import PromptEmbeddings
from .throughput import matmul_peak, throughput_metrics, training_flops_per_step
from .trainer import (VAL_MAX, VAL_REPORT, Budget, Conditioner, TrainStream, ema_update, lr_factor, sample,
                      validation_loss)

from .config import (AUTO_ON_OFF, LEARNING_RATE, MIN_LR_RATIO, SCHEDULES, LoopConfig,  # noqa: F401 (re-exported)
                     TrainError)

STREAMS = ("step", "crn")
SAMPLE_GRID_PER_CLASS = 8


@dataclass
class LoopResult:
    status: str  # "ok", "diverged at step N ...", "stopped ..."
    step: int
    model: nn.Module  # the raw weights
    ema: nn.Module  # the EMA weights: what is sampled and scored
    images: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # this process's logged steps / reports
    metrics: dict = field(default_factory=dict)  # final val loss (and FD with an out_dir)
    checkpoint: Path | None = None  # the latest good checkpoint
    stream_digest: str = ""


MetricsCallback = Callable[[dict], "bool | None"]  # return True to stop the run (e.g. an Optuna prune)


# --- learning rate ------------------------------------------------------------------------------------------

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


# --- batch streams ------------------------------------------------------------------------------------------

def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2 ** 63)


class StepBatches:
    """Batch k of rank r is a pure function of (seed, k, r): a resumed run sees exactly the batches it would
    have seen. All ranks share one permutation per epoch and take disjoint slices of it (DistributedSampler)."""

    def __init__(self, data: FlowData, batch_size: int, seed: int, rank: int, world: int):
        self.data, self.bs, self.seed, self.rank, self.world = data, batch_size, seed, rank, world
        self._stream = None
        self._position = 0
        if data.train_y is None:  # streamed latent shards: a seeded stream, fast-forwarded on resume
            self._gen = torch.Generator().manual_seed(_epoch_seed(seed, 0) + rank)
        else:
            n = len(data.train_y)
            if n < batch_size * world:
                raise TrainError(f"the data has {n} training samples, fewer than one global batch "
                                 f"({batch_size} x {world} ranks); lower --batch-size")
            self.per_epoch = n // (batch_size * world)
            self._order_epoch, self._order = -1, None

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data.train_y is None:
            if self._stream is None:
                self._stream = self.data.shards.batches(self.bs, self._gen)
            while self._position < k:  # fast-forward after a resume
                next(self._stream)
                self._position += 1
            self._position += 1
            return next(self._stream)
        epoch, i = divmod(k, self.per_epoch)
        if epoch != self._order_epoch:
            gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            self._order, self._order_epoch = torch.randperm(len(self.data.train_y), generator=gen), epoch
        start = (i * self.world + self.rank) * self.bs
        idx = self._order[start:start + self.bs]
        return self.data.train_x[idx], self.data.train_y[idx]


class StepStream:
    """(x0, labels, dropped, noise, t) for micro-batch k from StepBatches and one generator whose state a
    checkpoint keeps (resumable, any number of ranks)."""

    resumable = True

    def __init__(self, data: FlowData, config: LoopConfig, ctx: DistContext):
        self.batches = StepBatches(data, config.batch_size, config.seed, ctx.rank, ctx.world)
        self.gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 101 * (ctx.rank + 1))
        self.cond_dropout = config.cond_dropout
        self.k = 0
        self.digest = ""

    def draw(self, objective: Objective):
        x0, labels = self.batches.get(self.k)
        self.k += 1
        drop = torch.rand(len(labels), generator=self.gen) < self.cond_dropout
        noise = torch.randn(x0.shape, generator=self.gen)
        t = objective.sample_t(len(x0), self.gen)
        return x0, labels, drop, noise, t


class CRNStream:
    """The quality runs' common random numbers (training/trainer.py's TrainStream), timesteps from the objective."""

    resumable = False

    def __init__(self, data: FlowData, config: LoopConfig, ctx: DistContext):
        if ctx.enabled:
            raise TrainError("the common-random-numbers stream of quality runs is single-process; use the step "
                             "stream for data-parallel runs")
        self.stream = TrainStream(data, config.batch_size, config.seed, config.cond_dropout)

    def draw(self, objective: Objective):
        return self.stream.draw(objective.sample_t)

    @property
    def digest(self) -> str:
        return self.stream.digest


# --- activation checkpointing -------------------------------------------------------------------------------

def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each UNet layer (res block + transformer) in the backward pass; returns how many are wrapped."""
    from search_space.unet import MidBlock, UNetLayer

    count = 0
    for module in model.modules():
        if isinstance(module, (UNetLayer, MidBlock)):
            inner = module.forward

            def forward(x, temb, context, _inner=inner):
                if torch.is_grad_enabled():
                    return activation_checkpoint(_inner, x, temb, context, use_reentrant=False)
                return _inner(x, temb, context)

            module.forward = forward
            count += 1
    return count


# --- the optimiser step (issue 15: fused where it is measured to help) -------------------------------------

def make_optimizer(groups: list[dict], lr: float, weight_decay: float, fast: bool = True) -> torch.optim.Optimizer:
    """AdamW (torch's default betas and eps); `fast`: the fused kernel (one pass over each parameter for all of
    Adam's arithmetic; CPU and CUDA) instead of torch's per-tensor loop on CPU."""
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True if fast else None)


def clip_gradients(params: list[torch.Tensor], max_norm: float, fast: bool = True) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping. `fast`: multi-tensor kernels (torch only
    picks them by itself on GPU)."""
    return nn.utils.clip_grad_norm_(params, max_norm, foreach=True if fast else None)


# --- the loop -----------------------------------------------------------------------------------------------

def fit(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, config: LoopConfig, ctx: DistContext, *,
        budget: Budget | None = None, objective: Objective | None = None, stream: str = "step",
        out_dir: str | Path | None = None, resume: str | Path | bool | None = None, init: str | Path | None = None,
        meta: dict | None = None, callback: MetricsCallback | None = None, report_fraction: float | None = None,
        progress: bool = True, stop_at: int | None = None) -> LoopResult:
    """Train `spec` (already fitted to the data) with `objective` for `budget` (default: config.steps steps).

    out_dir: checkpoints, logs and samples go there (resume: True = its latest checkpoint, a path = that one);
    without it nothing is written. init: any checkpoint of ours whose EMA weights start the student. stop_at:
    checkpoint and return at this step, keeping the schedule of the budget (time-sliced jobs). report_fraction:
    every such share of the budget, a report with the validation loss goes to `callback` (quality runs).
    """
    from tqdm import tqdm

    objective = objective or Objective()
    budget = budget or Budget(steps=config.steps)
    if budget.steps is None and budget.seconds is None:
        raise TrainError(f"budget {budget} must be resolved to steps first (Budget.resolve)")
    if stream not in STREAMS:
        raise TrainError(f"stream={stream!r} is not one of {', '.join(STREAMS)}")
    device = ctx.device
    autocast = config.autocast == "on" or (config.autocast == "auto" and device.type == "cuda")
    grad_ckpt = config.grad_checkpoint == "on" or (config.grad_checkpoint == "auto" and device.type == "cuda")
    torch.manual_seed(config.seed + ctx.rank)  # the initial weights: the one draw that depends on the model
    model = build_model(spec)
    if init is not None:
        init_model, init_spec, _ = load_trained(init)
        if init_spec.spec_id != spec.spec_id:
            raise CheckpointError(f"--init checkpoint is for spec {init_spec.spec_id}, this run trains {spec.spec_id}")
        model.load_state_dict(init_model.state_dict())
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    objective.budget_steps = budget.steps
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
    out = Path(out_dir) if out_dir is not None else None
    writer, metrics_path, ckpt_dir, resume_from, step = None, None, None, None, 0
    full_meta = {**(meta or {}), **run_meta(data, prompts, config.cfg_scale, config.sample_steps), **identity,
                 "config": asdict(config), "world_size": ctx.world, "init": str(init) if init else None}
    if out is not None:
        if not batches.resumable:
            raise TrainError("a run with an out_dir checkpoints and resumes: use the step stream")
        ckpt_dir, metrics_path = out / "checkpoints", (out / "metrics.jsonl" if ctx.main else None)
        if resume:
            if resume is True:
                if (ckpt_dir / "latest").is_file():
                    resume_from = find_checkpoint(out)
                elif ctx.main and progress:
                    print(f"no checkpoint under {out}; starting from step 0", flush=True)
            else:
                resume_from = find_checkpoint(resume)
        if resume_from is not None:
            step = _restore(resume_from, identity, model, ema, opt, objective, batches, ctx, config)
        elif (ckpt_dir / "latest").is_file():  # every rank sees the same run folder and stops together
            raise TrainError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
        if ctx.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "run.json").write_text(json.dumps({**full_meta, "spec": json.loads(spec.to_json())}, indent=1))
            if resume_from is not None:
                _truncate_log(out / "metrics.jsonl", step)
            elif metrics_path.exists():
                metrics_path.unlink()
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tb"), purge_step=step if resume_from is not None else None)
        ctx.barrier()
    elif resume:
        raise TrainError("resume needs an out_dir holding checkpoints")

    end = budget.steps if budget.steps is not None else None
    stop = min(stop_at, end) if stop_at is not None and end is not None else end
    history: list[dict] = []
    last_ckpt = resume_from
    status = "ok"
    running = None
    next_report = report_fraction
    bar = tqdm(total=end if end is not None else int(budget.seconds), initial=step, desc="train",
               unit="step" if end is not None else "s", disable=not (progress and ctx.main), leave=out is not None)
    start = time.perf_counter()  # includes periodic validation: a seconds budget is wall time for the whole run
    images = 0
    step_seconds, steps_timed = 0.0, 0  # the training steps alone (no validation, checkpoints, samples)
    while (step < stop) if stop is not None else not budget.done(step, time.perf_counter() - start):
        t_step = time.perf_counter()
        factor = (schedule(step) if schedule is not None
                  else wall_clock_factor(config, step, time.perf_counter() - start, budget.seconds))
        for group in opt.param_groups:
            group["lr"] = config.lr * factor
        opt.zero_grad(set_to_none=True)
        logs_sum: dict[str, float] = {}
        finite = True
        for micro in range(config.grad_accum):
            x0, labels, drop, noise, t = batches.draw(objective)
            x0, labels, noise, t = (v.to(device, non_blocking=True) for v in (x0, labels, noise, t))
            labels = torch.where(drop.to(device), torch.full_like(labels, cond.null), labels)
            sync = not ctx.enabled or micro == config.grad_accum - 1
            with nullcontext() if sync else train_model.no_sync():
                loss, logs = objective.loss(train_model, cond, x0, noise, t, labels, autocast)
                finite = ctx.all_finite(bool(torch.isfinite(loss)))
                if not finite:
                    break
                (loss / config.grad_accum).backward()
            for k, v in {"loss": loss.detach(), **logs}.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / config.grad_accum
            images += len(x0) * ctx.world
        if finite:
            ctx.average_grads(extra_params)
            grad_norm = clip_gradients(list(model.parameters()) + extra_params, config.grad_clip, config.fast_step)
            finite = bool(torch.isfinite(grad_norm))  # gradients are all-reduced: every rank sees the same norm
        if not finite:
            status = f"diverged at step {step}"
            if out is not None:
                status += (" (non-finite loss or gradient); "
                           + (f"last good checkpoint {last_ckpt}" if last_ckpt else "no checkpoint was written"))
            break
        opt.step()
        step += 1
        # EMA warm-up (TensorFlow's ExponentialMovingAverage num_updates rule): a short run's EMA must not be
        # dominated by the random initialisation.
        ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)), fast=config.fast_step)
        logs_sum.update(objective.aux_step(step))
        step_seconds += time.perf_counter() - t_step
        steps_timed += 1
        running = logs_sum["loss"] if running is None else 0.9 * running + 0.1 * logs_sum["loss"]
        elapsed = time.perf_counter() - start
        bar.update(1 if end is not None else int(elapsed) - bar.n)
        if report_fraction is not None:
            fraction = budget.fraction(step, elapsed)
            if fraction >= next_report:
                next_report = round(next_report + report_fraction, 6)  # no float drift past the final 1.0
                final = end is not None and step >= end
                report = {"step": step, "images": images, "seconds": round(elapsed, 3),
                          "fraction": min(1.0, fraction), "lr": config.lr * factor, "train_loss": running,
                          "val_loss": validation_loss(ema, cond, data, device, autocast,
                                                      VAL_MAX if final else VAL_REPORT)}
                history.append(report)
                bar.set_postfix(loss=f"{running:.4f}", val=f"{report['val_loss']:.4f}")
                if callback is not None and callback(report):
                    status = f"stopped by callback at step {step}"
                    break
        if out is None:
            continue
        record = None
        if step % config.log_every == 0 or step == end or step == 1:
            logs_sum = ctx.mean_scalars(logs_sum)  # the logged losses are averages over ranks
            record = {"step": step, "lr": config.lr * factor, "grad_norm": float(grad_norm), "images": images,
                      "seconds": round(elapsed, 3), **logs_sum}
            if ctx.enabled:
                record["world_size"] = ctx.world
            bar.set_postfix(loss=f"{logs_sum['loss']:.4f}")
        final = step == end or step == stop
        checkpoint_now = step % config.checkpoint_every == 0 or final
        if step == 1 or checkpoint_now:
            digests = ctx.gather(weights_digest(model))
            if len(set(digests)) != 1:
                raise TrainError(f"ranks disagree on the weights after step {step}: {digests}")
            record = record or {"step": step}
            record["rank_digests"] = digests
        # The step's log line is written before the checkpoint that covers it: a kill in between leaves a line
        # past the last checkpoint, which the resumed run truncates and writes again; the other order could lose it.
        if record is not None:
            history.append(record)
            if ctx.main:
                _log(writer, metrics_path, record)
        if checkpoint_now:
            rng = ctx.gather(rng_state(batches.gen))
            if ctx.main:
                state = {"step": step, "optimizer": opt.state_dict(), "rng": rng, "objective": objective.state_dict(),
                         "extra": [m.state_dict() for m in extra], "identity": identity, "config": asdict(config),
                         "world_size": ctx.world}
                save_checkpoint(ckpt_dir, step, model, ema, spec, full_meta, state, config.keep_checkpoints)
            ctx.barrier()
            last_ckpt = ckpt_dir / f"step_{step:07d}"
        if ctx.main and config.sample_every and step % config.sample_every == 0 and step < end:
            evaluation = {"step": step, **evaluate(ema, spec, data, prompts, config, out, step, device, autocast)}
            history.append(evaluation)
            _log(writer, metrics_path, evaluation)
    seconds = time.perf_counter() - start
    bar.close()
    metrics: dict = {}
    throughput = _throughput(spec, data, prompts, config, device, autocast, steps_timed, step_seconds)
    if status == "ok" and end is not None and step < end:
        status = f"stopped at step {step} of {end}; continue with --resume"
    elif out is not None and ctx.main:
        if status == "ok":
            metrics = evaluate(ema, spec, data, prompts, config, out, step, device, autocast)
            _log(writer, metrics_path, {"step": step, **metrics})
        metrics.update(throughput)
        (out / "summary.json").write_text(json.dumps({"status": status, "step": step,
                                                      "checkpoint": str(last_ckpt) if last_ckpt else None,
                                                      **metrics}, indent=1))
    elif out is None:
        if history and history[-1]["step"] == step and end is not None and step >= end:
            val = history[-1]["val_loss"]  # the final report already holds the final weights' full loss
        else:
            val = validation_loss(ema, cond, data, device, autocast) if status == "ok" or step == 0 else None
        if val is not None and not math.isfinite(val):
            status, val = f"diverged at step {step}", None
        metrics = {"val_loss": val}
    metrics.update(throughput)
    if writer is not None:
        writer.close()
    ctx.barrier()
    return LoopResult(status, step, model, ema, images, seconds, history, metrics,
                      Path(last_ckpt) if last_ckpt else None, batches.digest)


def _throughput(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, config: LoopConfig, device,
                autocast: bool, steps: int, step_seconds: float) -> dict:
    """Achieved training FLOP/s of this process and its share of the host's measured matmul peak at the
    training dtype (training/throughput.py); the student's FLOPs only (a teacher's forward is not counted)."""
    if steps == 0:
        return {}
    flops = training_flops_per_step(spec, (data.channels, data.size, data.size), prompts.tokens.shape[1],
                                    prompts.dim, config.batch_size * config.grad_accum)
    peak = matmul_peak(device, torch.bfloat16 if autocast else torch.float32)
    return throughput_metrics(flops, steps, step_seconds, peak)


def replace_steps(config: LoopConfig, steps: int) -> LoopConfig:
    """The config whose schedule spans `steps` (a quality run's resolved budget)."""
    return replace(config, steps=steps) if steps != config.steps else config


def _restore(path: Path, identity: dict, model, ema, opt, objective, batches: StepStream, ctx: DistContext,
             config: LoopConfig) -> int:
    manifest, tensors = read_checkpoint(path)
    state = read_state(Path(manifest["path"]))
    saved = manifest["meta"]
    for key in ("spec_id", "data", "encoder", "objective"):
        if saved.get(key) != identity[key]:
            raise CheckpointError(f"checkpoint {path} does not match this run: {key} is {saved.get(key)!r} there "
                                  f"and {identity[key]!r} here; use the same {key} or another --out")
    if state["world_size"] != ctx.world:
        raise CheckpointError(f"checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{ctx.world}: the data order and RNG streams would differ; resume with "
                              f"--nproc_per_node {state['world_size']}")
    for key in ("batch_size", "grad_accum", "seed"):
        if state["config"][key] != getattr(config, key):
            raise CheckpointError(f"checkpoint {path} has {key}={state['config'][key]}, this run "
                                  f"{key}={getattr(config, key)}; a resumed run keeps the data order")
    try:
        model.load_state_dict(split_weights(tensors, "model."))
        ema.load_state_dict(split_weights(tensors, "ema."))
        opt.load_state_dict(state["optimizer"])
        for m, s in zip(objective.trainable(), state["extra"]):
            m.load_state_dict(s)
        objective.load_state_dict(state["objective"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
    set_rng_state(batches.gen, state["rng"][ctx.rank])
    step = int(state["step"])
    batches.k = step * config.grad_accum
    return step


@torch.no_grad()
def evaluate(ema, spec, data, prompts, config: LoopConfig, out: Path, step: int, device, autocast) -> dict:
    """Validation loss, a sample grid (pixel data) and the domain FD when fd_samples > 0."""
    from torchvision.utils import save_image

    metrics = {"val_loss": validation_loss(ema, Conditioner(spec, prompts, data.resolution, device), data, device,
                                           autocast)}
    n_classes = min(10, data.num_classes)
    labels = torch.arange(n_classes).repeat_interleave(SAMPLE_GRID_PER_CLASS)
    x = sample(ema, spec, data, prompts, labels, config.seed, config.sample_steps, config.cfg_scale,
               device=device, progress=False)
    if data.kind == "pixel" and torch.isfinite(x).all():
        (out / "samples").mkdir(parents=True, exist_ok=True)
        save_image(data.to_images(x).float() / 255, out / "samples" / f"step_{step:07d}.png",
                   nrow=SAMPLE_GRID_PER_CLASS)
    if config.fd_samples:
        from .fidelity import domain_metrics
        labels = torch.arange(config.fd_samples) % data.num_classes
        x = sample(ema, spec, data, prompts, labels, config.seed, config.sample_steps, config.cfg_scale,
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
