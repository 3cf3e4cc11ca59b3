"""At-scale rectified-flow training: DDP through torchrun, EMA, LR schedule, accumulation, resumable checkpoints.

SNAPGEN.md section 3 (objective [paper]: flow matching as SD3) at any scale, from a CPU smoke run to many GPUs:
- data parallel: `torchrun --nproc_per_node N -m pocketdiff.cli train ...` starts one process per device; the
  process group uses NCCL on GPU and gloo on CPU. Every rank reads a disjoint slice of one shared permutation.
- bf16 autocast and activation checkpointing (non-reentrant, per UNet layer) on GPU; CPU stays float32.
- AdamW, linear warm-up then cosine decay, gradient clipping, gradient accumulation, an EMA of the weights.
- checkpoints: `checkpoints/step_XXXXXXX/` holds `model.safetensors` (student + EMA weights, the spec JSON in the
  metadata), `state.pt` (optimiser, scheduler, every rank's RNG states, objective state: KD projections,
  discriminator) and `checkpoint.json` (step, spec_id, sha256 of both files). Resuming checks all of it and
  refuses a corrupt or mismatched checkpoint, naming the mismatch. On CPU a resumed run repeats the
  uninterrupted one exactly: batches are a function of the step, and the RNG states are restored.
- a NaN/inf loss stops the run before the optimiser step; the last good checkpoint stays the latest.
- logs: TensorBoard scalars under `tb/`, one JSON line per logged step in `metrics.jsonl`, sample grids and the
  domain FD (training.fidelity) every `sample_every` steps.
The loss is an `Objective`: plain flow matching here, knowledge distillation in training/distill.py, adversarial
step distillation in training/step_distill.py.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from search_space import UNetSpec, build_model
from search_space.spec import spec_from_dict
from search_space.errors import UserError

from .data import FlowData, file_sha256
from .flow import flow_loss, interpolate, sample_timesteps
from .text import PromptEmbeddings
from .trainer import Conditioner, ema_update, sample, validation_loss, velocity

CHECKPOINT_FORMAT = "pocketdiff-train-1"
# [choose] full runs: lr 1e-3 (the proxy trainer's 3e-3 is tuned for 100-step runs), 1% warm-up, cosine to 10%.
LEARNING_RATE = 1e-3
MIN_LR_RATIO = 0.1
SCHEDULES = ("constant", "cosine", "linear")
AUTO_ON_OFF = ("auto", "on", "off")
SAMPLE_GRID_PER_CLASS = 8


class TrainError(UserError, RuntimeError):
    """A run that cannot start or continue (bad data/spec pairing, bad config); the message says why."""



class CheckpointError(TrainError):
    """A checkpoint that is corrupt or belongs to another run; the message names the mismatch."""


@dataclass(frozen=True)
class FullConfig:
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


@dataclass
class FullResult:
    status: str  # "ok" or "diverged at step N (...)"
    step: int
    out_dir: Path
    checkpoint: Path | None  # the latest good checkpoint
    history: list[dict] = field(default_factory=list)  # this process's logged steps
    metrics: dict = field(default_factory=dict)  # final val loss / FD


# --- objectives ---------------------------------------------------------------------------------------------

class Objective:
    """Plain rectified flow. Subclasses add KD terms, extra trainable modules and an auxiliary update."""

    kind = "flow"

    def trainable(self) -> list[nn.Module]:
        """Modules trained with the student (KD projections); their gradients are averaged over ranks."""
        return []

    def attach(self, model: nn.Module, device: torch.device, dist_ctx: "DistContext") -> None:
        """Called once with the unwrapped student before training (hooks, devices)."""

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return sample_timesteps(n, gen)

    def loss(self, model: nn.Module, cond: Conditioner, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             labels: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict]:
        pred = velocity(model, cond, interpolate(x0, noise, t), t, labels, autocast)
        loss = flow_loss(pred, x0, noise)
        return loss, {"loss_task": loss.detach()}

    def aux_step(self, step: int) -> dict:
        """After the student's optimiser step (a discriminator update); returns scalars to log."""
        return {}

    def identity(self) -> dict:
        """What a resumed run must share with the checkpoint (teacher, weighting)."""
        return {"kind": self.kind}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# --- distributed --------------------------------------------------------------------------------------------

@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    started_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def average_grads(self, params) -> None:
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def close(self) -> None:
        if self.started_here and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | None = None) -> DistContext:
    """torchrun's environment -> a process group (NCCL on GPU, gloo on CPU); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda and world > 1 else ("cuda" if use_cuda else "cpu"))
    if use_cuda:
        torch.cuda.set_device(dev)
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        started = True
    return DistContext(rank, world, local, dev, started)


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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


# --- batches ------------------------------------------------------------------------------------------------

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


def lr_lambda(config: FullConfig):
    def fn(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * shape
    return fn


# --- checkpoints --------------------------------------------------------------------------------------------


def _rng_state(gen: torch.Generator) -> dict:
    state = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(gen: torch.Generator, state: dict) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(ckpt_dir: Path, step: int, model: nn.Module, ema: nn.Module, spec: UNetSpec, meta: dict,
                    state: dict, keep: int) -> Path:
    """Write checkpoints/step_XXXXXXX atomically (temp folder, then rename), update `latest`, prune old ones."""
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    metadata = {"format": CHECKPOINT_FORMAT, "spec": spec.to_json(), "spec_id": spec.spec_id, "step": str(step),
                "meta": json.dumps(meta)}
    save_file(tensors, tmp / "model.safetensors", metadata=metadata)
    torch.save(state, tmp / "state.pt")
    manifest = {"format": CHECKPOINT_FORMAT, "step": step, "spec_id": spec.spec_id, "spec": json.loads(spec.to_json()),
                "meta": meta, "files": {name: file_sha256(tmp / name) for name in ("model.safetensors", "state.pt")}}
    (tmp / "checkpoint.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (ckpt_dir / "latest.tmp").write_text(final.name)
    (ckpt_dir / "latest.tmp").replace(ckpt_dir / "latest")
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A run folder (-> its latest checkpoint), a checkpoints folder, or one step folder."""
    path = Path(path)
    for candidate in (path / "checkpoints" / "latest", path / "latest"):
        if candidate.is_file():
            return candidate.parent / candidate.read_text().strip()
    if (path / "checkpoint.json").is_file() or (path / "model.safetensors").is_file():
        return path
    if path.is_file() and path.name == "model.safetensors":
        return path.parent
    raise CheckpointError(f"no checkpoint at {path}: expected a run folder with checkpoints/latest, or a "
                          f"checkpoints/step_XXXXXXX folder")


def read_checkpoint(path: str | Path, verify: bool = True) -> tuple[dict, dict]:
    """(manifest, tensors) of a checkpoint folder; a missing, truncated or altered file raises CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = find_checkpoint(path)
    manifest_path = path / "checkpoint.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no checkpoint.json (incomplete write?)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {manifest_path} is corrupt: {e}") from None
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {manifest.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"checkpoint {manifest_path} has no valid 'files' table (name -> sha256); it was not "
                              f"written by `pocketdiff train`, or was edited")
    if verify:
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"checkpoint {path} is missing {name}")
            if file_sha256(f) != digest:
                raise CheckpointError(f"checkpoint file {f} is corrupt: its sha256 does not match checkpoint.json "
                                      f"(truncated or altered); resume from an older checkpoint")
    try:
        tensors = load_file(path / "model.safetensors")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {path / 'model.safetensors'} is corrupt: {e}") from None
    manifest["path"] = str(path)
    return manifest, tensors


def load_trained(path: str | Path, use_ema: bool = True) -> tuple[nn.Module, UNetSpec, dict]:
    """(model in eval mode, spec, manifest) from a checkpoint; the EMA weights by default."""
    manifest, tensors = read_checkpoint(path)
    spec = spec_from_dict(manifest["spec"])
    model = build_model(spec)
    prefix = "ema." if use_ema else "model."
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval(), spec, manifest


# --- the loop -----------------------------------------------------------------------------------------------

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


def train_full(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, out_dir: str | Path,
               config: FullConfig = FullConfig(), objective: Objective | None = None,
               resume: str | Path | bool | None = None, meta: dict | None = None, init: str | Path | None = None,
               device: str | None = None, progress: bool = True, stop_at: int | None = None) -> FullResult:
    """Train `spec` (already fitted to the data; see training.proxy) into `out_dir`.

    resume: True = the latest checkpoint under out_dir if any; a path = that checkpoint. init: a checkpoint whose
    EMA weights start the student (step distillation starts from a trained model). stop_at: checkpoint and return
    at this step, keeping the schedule of `config.steps` (time-sliced jobs). Run under torchrun for DDP.
    """
    from tqdm import tqdm

    config.validate()
    _check_pairing(spec, data, prompts)
    objective = objective or Objective()
    ctx = init_distributed(device)
    try:
        return _train(spec, data, prompts, Path(out_dir), config, objective, resume, meta or {}, init, ctx,
                      progress, tqdm, stop_at or config.steps)
    finally:
        ctx.close()


def _train(spec, data, prompts, out, config, objective, resume, meta, init, ctx, progress, tqdm, stop_at: int
           ) -> FullResult:
    device = ctx.device
    autocast = config.autocast == "on" or (config.autocast == "auto" and device.type == "cuda")
    grad_ckpt = config.grad_checkpoint == "on" or (config.grad_checkpoint == "auto" and device.type == "cuda")
    torch.manual_seed(config.seed + ctx.rank)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + 101 * (ctx.rank + 1))
    model = build_model(spec)
    if init is not None:
        init_model, init_spec, _ = load_trained(init)
        if init_spec.spec_id != spec.spec_id:
            raise CheckpointError(f"--init checkpoint is for spec {init_spec.spec_id}, this run trains {spec.spec_id}")
        model.load_state_dict(init_model.state_dict())
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
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
    opt = torch.optim.AdamW([{"params": list(model.parameters())}, {"params": extra_params}],
                            lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(config))
    identity = {"spec_id": spec.spec_id, "data": data.name, "encoder": prompts.encoder,
                "objective": objective.identity()}
    run_meta = {**meta, **identity, "config": asdict(config), "world_size": ctx.world,
                "class_names": list(data.class_names), "resolution": data.resolution, "data_kind": data.kind,
                "patch": data.patch, "channels": data.channels, "size": data.size}
    ckpt_dir = out / "checkpoints"
    metrics_path = out / "metrics.jsonl" if ctx.main else None
    step = 0
    resume_from = None
    if resume:
        if resume is True:
            if (ckpt_dir / "latest").is_file():
                resume_from = find_checkpoint(out)
            elif ctx.main and progress:
                print(f"no checkpoint under {out}; starting from step 0", flush=True)
        else:
            resume_from = find_checkpoint(resume)
    if resume_from is not None:
        step = _restore(resume_from, identity, model, ema, opt, sched, objective, gen, ctx, config)
    elif (ckpt_dir / "latest").is_file():  # every rank sees the same run folder and stops together
        raise TrainError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({**run_meta, "spec": json.loads(spec.to_json())}, indent=1))
        if resume_from is not None:
            _truncate_log(out / "metrics.jsonl", step)
        elif metrics_path.exists():
            metrics_path.unlink()
    writer = None
    if ctx.main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"), purge_step=step if resume_from is not None else None)
    ctx.barrier()

    batches = StepBatches(data, config.batch_size, config.seed, ctx.rank, ctx.world)
    history: list[dict] = []
    last_ckpt = resume_from
    status = "ok"
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not (progress and ctx.main))
    start = time.perf_counter()
    images = 0
    while step < min(stop_at, config.steps):
        opt.zero_grad(set_to_none=True)
        logs_sum: dict[str, float] = {}
        finite = True
        for micro in range(config.grad_accum):
            x0, labels = batches.get(step * config.grad_accum + micro)
            x0, labels = x0.to(device, non_blocking=True), labels.to(device)
            drop = torch.rand(len(labels), generator=gen) < config.cond_dropout
            labels = torch.where(drop.to(device), torch.full_like(labels, cond.null), labels)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = objective.sample_t(len(x0), gen).to(device)
            sync = not ctx.enabled or micro == config.grad_accum - 1
            with nullcontext() if sync else train_model.no_sync():
                loss, logs = objective.loss(train_model, cond, x0, noise, t, labels, autocast)
                logs = {"loss": loss.detach(), **logs}
                finite = bool(torch.isfinite(loss))
                if ctx.enabled:  # every rank stops together
                    flag = torch.tensor([0.0 if finite else 1.0], device=device)
                    dist.all_reduce(flag)
                    finite = flag.item() == 0
                if not finite:
                    break
                (loss / config.grad_accum).backward()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / config.grad_accum
            images += len(x0) * ctx.world
        if not finite:
            status = (f"diverged at step {step} (non-finite loss); "
                      + (f"last good checkpoint {last_ckpt}" if last_ckpt else "no checkpoint was written"))
            break
        ctx.average_grads(extra_params)
        grad_norm = nn.utils.clip_grad_norm_(list(model.parameters()) + extra_params, config.grad_clip)
        if not torch.isfinite(grad_norm):  # gradients are all-reduced: every rank sees the same norm
            status = (f"diverged at step {step} (non-finite gradient); "
                      + (f"last good checkpoint {last_ckpt}" if last_ckpt else "no checkpoint was written"))
            break
        opt.step()
        sched.step()
        step += 1
        ema_update(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        logs_sum.update(objective.aux_step(step))
        bar.update(1)
        record = None
        if step % config.log_every == 0 or step == config.steps or step == 1:
            if ctx.enabled:  # the logged losses are averages over ranks
                keys = sorted(logs_sum)
                values = torch.tensor([logs_sum[k] for k in keys], dtype=torch.float64, device=device)
                dist.all_reduce(values)
                logs_sum = dict(zip(keys, (values / ctx.world).tolist()))
            loss_avg = logs_sum.get("loss", None)
            record = {"step": step, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                      "images": images, "seconds": round(time.perf_counter() - start, 3), **logs_sum}
            if ctx.enabled:
                record["world_size"] = ctx.world
            bar.set_postfix(loss=f"{loss_avg if loss_avg is not None else logs_sum.get('loss_task', 0):.4f}")
        final = step == config.steps or step == stop_at
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
            rng = ctx.gather(_rng_state(gen))
            if ctx.main:
                state = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng": rng, "objective": objective.state_dict(),
                         "extra": [m.state_dict() for m in extra], "identity": identity,
                         "config": asdict(config), "world_size": ctx.world}
                last_ckpt = save_checkpoint(ckpt_dir, step, model, ema, spec, run_meta, state,
                                            config.keep_checkpoints)
            ctx.barrier()
            last_ckpt = ckpt_dir / f"step_{step:07d}"
        if ctx.main and config.sample_every and step % config.sample_every == 0 and step < config.steps:
            evaluation = {"step": step, **_evaluate(ema, spec, data, prompts, config, out, step, device, autocast)}
            history.append(evaluation)
            _log(writer, metrics_path, evaluation)
    bar.close()
    metrics = {}
    if status == "ok" and step < config.steps:
        status = f"stopped at step {step} of {config.steps}; continue with --resume"
    elif status == "ok" and ctx.main:
        metrics = _evaluate(ema, spec, data, prompts, config, out, step, device, autocast)
        _log(writer, metrics_path, {"step": step, **metrics})
        (out / "summary.json").write_text(json.dumps({"status": status, "step": step, "checkpoint": str(last_ckpt),
                                                      **metrics}, indent=1))
    elif ctx.main:
        (out / "summary.json").write_text(json.dumps({"status": status, "step": step,
                                                      "checkpoint": str(last_ckpt) if last_ckpt else None}))
    if writer is not None:
        writer.close()
    ctx.barrier()
    return FullResult(status, step, out, Path(last_ckpt) if last_ckpt else None, history, metrics)


def _restore(path: Path, identity: dict, model, ema, opt, sched, objective, gen, ctx: DistContext,
             config: FullConfig) -> int:
    manifest, tensors = read_checkpoint(path)
    saved = manifest["meta"]
    for key in ("spec_id", "data", "encoder", "objective"):
        if saved.get(key) != identity[key]:
            raise CheckpointError(f"checkpoint {path} does not match this run: {key} is {saved.get(key)!r} there "
                                  f"and {identity[key]!r} here; use the same {key} or another --out")
    try:
        # weights_only: tensors, numbers, strings and containers only. A state file from elsewhere cannot run
        # code on load (a full unpickler would execute whatever the file names before any check of ours).
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt or unsafe file
        raise CheckpointError(f"checkpoint file {path / 'state.pt'} is corrupt or holds more than tensors and "
                              f"plain data (refused): {str(e).splitlines()[0]}") from None
    if state["world_size"] != ctx.world:
        raise CheckpointError(f"checkpoint {path} was written by {state['world_size']} process(es), this run has "
                              f"{ctx.world}: the data order and RNG streams would differ; resume with "
                              f"--nproc_per_node {state['world_size']}")
    for key in ("batch_size", "grad_accum", "seed"):
        if state["config"][key] != getattr(config, key):
            raise CheckpointError(f"checkpoint {path} has {key}={state['config'][key]}, this run "
                                  f"{key}={getattr(config, key)}; a resumed run keeps the data order")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        opt.load_state_dict(state["optimizer"])
        for m, s in zip(objective.trainable(), state["extra"]):
            m.load_state_dict(s)
        objective.load_state_dict(state["objective"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
    sched.load_state_dict(state["scheduler"])
    _set_rng_state(gen, state["rng"][ctx.rank])
    return int(state["step"])


@torch.no_grad()
def _evaluate(ema, spec, data, prompts, config, out: Path, step: int, device, autocast) -> dict:
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
