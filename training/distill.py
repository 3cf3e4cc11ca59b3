"""Multi-level knowledge distillation from a teacher of another architecture (SNAPGEN.md section 3).

- Teachers: a trained checkpoint of any spec of ours (training/full.py), or a diffusers model from a local
  folder: `SD3Transformer2DModel` (SD3 / SD3.5, a transformer: the distillation crosses architectures) or a
  flow-matching `UNet2DConditionModel`. The teacher runs frozen (eval mode, no grad), optionally in lower precision.
- Output KD: student velocity vs teacher velocity. Feature KD [choose: layers]: the student's mid block and the
  last layer of every up stage, the teacher's mid/up blocks (UNet) or evenly spaced joint blocks (SD3, tokens
  reshaped to the patch grid); each teacher feature is paired with the student feature of the same spatial size
  (or the nearest, resized), through a learned 1x1 conv from student to teacher width.
- Weighting: the timestep-aware scaling S(L_task, L_kd) = E_t[a_t L_task(t) + (1 - a_t) |L_task(t)|/|L_kd(t)|
  L_kd(t)], total L = S(L_task, L_kd_out) + S(L_task, L_kd_feat); or a plain fixed weighting for comparison.
A teacher whose latent channels or text conditioning do not fit the student fails before training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search_space import UNetSpec

from .flow import LOGIT_NORMAL_MEAN, LOGIT_NORMAL_STD, TIMESTEP_SCALE, interpolate, velocity_target
from .distributed import DistContext
from .objectives import Objective
from .text import PromptEmbeddings
from .trainer import Conditioner, velocity

WEIGHTINGS = ("timestep", "fixed")
# [choose] fixed weighting for comparison: L = L_task + 1.0 L_kd_out + 1.0 L_kd_feat (BK-SDM uses 1 / 1).
FIXED_OUT_WEIGHT = 1.0
FIXED_FEAT_WEIGHT = 1.0
MAX_SD3_TAPS = 3  # [choose] three evenly spaced joint blocks (first third, middle, last)
EPS = 1e-8


class TeacherError(ValueError):
    """A teacher that cannot teach this student (channels, conditioning, missing weights)."""

    user_error = True


def logit_normal_density(t: torch.Tensor, mean: float = LOGIT_NORMAL_MEAN, std: float = LOGIT_NORMAL_STD
                         ) -> torch.Tensor:
    t = t.clamp(1e-6, 1 - 1e-6)
    logit = torch.log(t / (1 - t))
    return torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi) * t * (1 - t))


def task_weight(t: torch.Tensor) -> torch.Tensor:
    """a_t [choose: the best reading of the secondary source]: the logit-normal training density normalised to
    1 at its mode t = 0.5. Mid timesteps, where the data term is informative, lean on the task loss; near pure
    noise or clean data, where the task target is nearly deterministic noise, the teacher's term dominates."""
    return (logit_normal_density(t) / logit_normal_density(torch.tensor(0.5))).clamp(max=1.0)


def timestep_aware(task: torch.Tensor, kd: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """S(L_task, L_kd) over per-sample losses (B,): the KD term rescaled to the task loss's magnitude."""
    a = task_weight(t).to(task.dtype)
    scale = task.detach().abs() / kd.detach().abs().clamp_min(EPS)
    return (a * task + (1 - a) * scale * kd).mean()


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).flatten(1).mean(1)


# --- teachers -----------------------------------------------------------------------------------------------

class Teacher(nn.Module):
    """Frozen velocity predictor that also returns intermediate features (B, C, H, W) from forward hooks."""

    latent_channels: int
    text_dim: int
    pooled_dim: int  # 0 = takes no pooled vector
    description: str

    def __init__(self, model: nn.Module, taps: list[str], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        if dtype != torch.float32:
            self.model.to(dtype)
        self.dtype = dtype
        self.taps = taps
        self._features: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for name in taps:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module, args, output):
            self._features[name] = self._feature(output, args)
        return hook

    def _feature(self, output, args) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output

    def train(self, mode: bool = True):  # stays in inference mode whatever the caller does
        return super().train(False)

    def predict(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, pooled: torch.Tensor | None,
                time_ids: torch.Tensor | None) -> torch.Tensor:
        """The teacher's velocity; each adapter (our specs, SD3 transformers, diffusers UNets) defines it."""
        raise NotImplementedError(f"{type(self).__name__} is a teacher base class; use one of its adapters")

    def forward(self, x, t, tokens, pooled=None, time_ids=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(velocity (B, C, H, W) float32, features) for x_t at t in [0, 1]."""
        self._features = {}
        cast = lambda v: v.to(self.dtype) if v is not None else None
        v = self.predict(cast(x), t, cast(tokens), cast(pooled), cast(time_ids)).float()
        return v, [self._features[name].float() for name in self.taps]

    def identity(self) -> str:
        return self.description


class SpecTeacher(Teacher):
    """A trained UNet of our search space (a checkpoint written by training/full.py)."""

    def __init__(self, model: nn.Module, spec: UNetSpec, description: str, dtype=torch.float32):
        self.spec = spec
        super().__init__(model, student_taps(model), dtype)
        self.latent_channels, self.text_dim, self.pooled_dim = spec.latent_channels, spec.text_dim, spec.pooled_dim
        self.size_conditioning = spec.size_conditioning
        self.description = description

    def predict(self, x, t, tokens, pooled, time_ids):
        return self.model(x, t * TIMESTEP_SCALE, tokens, pooled if self.pooled_dim else None,
                          time_ids if self.size_conditioning else None)


class SD3Teacher(Teacher):
    """diffusers SD3Transformer2DModel (SD3 / SD3.5): a flow-matching transformer predicting noise - x0."""

    def __init__(self, model: nn.Module, description: str, dtype=torch.float32):
        n = len(model.transformer_blocks)
        picks = sorted({max(0, round(n * (i + 1) / MAX_SD3_TAPS) - 1) for i in range(MAX_SD3_TAPS)})
        super().__init__(model, [f"transformer_blocks.{i}" for i in picks], dtype)
        cfg = model.config
        self.latent_channels, self.text_dim = cfg.in_channels, cfg.joint_attention_dim
        self.pooled_dim, self.patch = cfg.pooled_projection_dim, cfg.patch_size
        if cfg.out_channels not in (None, cfg.in_channels):
            raise TeacherError(f"teacher {description} predicts {cfg.out_channels} channels from {cfg.in_channels}")
        self.description = description
        self._hw = (0, 0)

    def _feature(self, output, args) -> torch.Tensor:
        hidden = output[1] if isinstance(output, tuple) else output  # joint blocks return (context, image tokens)
        h, w = self._hw
        return hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], h, w)  # (B, N, D) -> (B, D, h, w)

    def predict(self, x, t, tokens, pooled, time_ids):
        self._hw = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        return self.model(hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled,
                          timestep=t * TIMESTEP_SCALE, return_dict=False)[0]


class DiffusersUNetTeacher(Teacher):
    """diffusers UNet2DConditionModel trained with the flow-matching (velocity) objective; SDXL-style
    text_time conditioning takes the pooled vector and size ids."""

    def __init__(self, model: nn.Module, description: str, dtype=torch.float32):
        taps = (["mid_block"] if model.mid_block is not None else []) + \
               [f"up_blocks.{i}" for i in range(len(model.up_blocks))]
        super().__init__(model, taps, dtype)
        cfg = model.config
        self.latent_channels, self.text_dim = cfg.in_channels, cfg.cross_attention_dim
        self.text_time = cfg.addition_embed_type == "text_time"
        self.pooled_dim = (cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
                           if self.text_time else 0)
        self.description = description

    def predict(self, x, t, tokens, pooled, time_ids):
        kwargs = {}
        if self.text_time:
            if time_ids is None:
                time_ids = x.new_tensor([x.shape[-1] * 8, x.shape[-2] * 8, 0, 0, x.shape[-1] * 8,
                                         x.shape[-2] * 8]).expand(x.shape[0], -1)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return self.model(x, t * TIMESTEP_SCALE, encoder_hidden_states=tokens, return_dict=False, **kwargs)[0]


def load_teacher(source: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                 ) -> Teacher:
    """A run folder / checkpoint of ours, or a local diffusers model folder (config.json with _class_name)."""
    from .checkpoint import CheckpointError, load_trained

    path = Path(source)
    config_file = path / "config.json"
    if config_file.is_file():
        cls_name = json.loads(config_file.read_text()).get("_class_name")
        import diffusers
        if cls_name == "SD3Transformer2DModel":
            model = diffusers.SD3Transformer2DModel.from_pretrained(path, local_files_only=True)
            return SD3Teacher(model, f"diffusers:{cls_name}:{path}", dtype).to(device)
        if cls_name == "UNet2DConditionModel":
            scheduler = path.parent / "scheduler" / "scheduler_config.json"  # a pipeline's unet/ sub-folder
            if scheduler.is_file() and "FlowMatch" not in json.loads(scheduler.read_text()).get("_class_name", ""):
                raise TeacherError(f"teacher {path} belongs to a pipeline with scheduler "
                                   f"{json.loads(scheduler.read_text()).get('_class_name')}: an epsilon/v-prediction "
                                   f"DDPM UNet (SDXL) is not supported, only flow-matching (velocity) UNets")
            model = diffusers.UNet2DConditionModel.from_pretrained(path, local_files_only=True)
            return DiffusersUNetTeacher(model, f"diffusers:{cls_name}:{path}", dtype).to(device)
        raise TeacherError(f"teacher {path}: diffusers class {cls_name!r} is not supported; use an "
                           f"SD3Transformer2DModel or UNet2DConditionModel folder")
    try:
        model, spec, manifest = load_trained(path)
    except CheckpointError as e:
        raise TeacherError(f"teacher {source} is neither a diffusers model folder (config.json) nor a trained "
                           f"checkpoint of ours: {e}") from None
    return SpecTeacher(model, spec, f"checkpoint:{spec.spec_id}@{manifest['step']}", dtype).to(device)


def check_teacher(teacher: Teacher, student: UNetSpec, prompts: PromptEmbeddings, size: int) -> None:
    """Refuse a teacher that cannot see the student's inputs, before any training step."""
    problems = []
    if teacher.latent_channels != student.latent_channels:
        problems.append(f"latent channels: teacher {teacher.latent_channels}, student {student.latent_channels}")
    if teacher.text_dim != prompts.dim:
        problems.append(f"text token width: teacher {teacher.text_dim}, text encoder {prompts.encoder} "
                        f"gives {prompts.dim}")
    if teacher.pooled_dim and teacher.pooled_dim != prompts.pooled_dim:
        problems.append(f"pooled text width: teacher {teacher.pooled_dim}, text encoder gives {prompts.pooled_dim}")
    patch = getattr(teacher, "patch", 1)
    if size % patch:
        problems.append(f"latent size {size} is not a multiple of the teacher's patch size {patch}")
    if problems:
        raise TeacherError(f"teacher {teacher.description} does not match the student {student.spec_id}: "
                           + "; ".join(problems) + ". Use a teacher trained on the same latents and text encoder.")


def student_taps(model: nn.Module) -> list[str]:
    """The mid block and the last layer of every up stage (one feature map per resolution)."""
    taps = ["mid"] if getattr(model, "mid", None) is not None else [f"down.{len(model.down) - 1}.layers.0"]
    taps += [f"up.{i}.layers.{len(stage.layers) - 1}" for i, stage in enumerate(model.up)]
    return taps


class KDObjective(Objective):
    """Task loss + output KD + feature KD, combined by the timestep-aware scaling or a fixed weighting."""

    kind = "kd"

    def __init__(self, teacher: Teacher, prompts: PromptEmbeddings, resolution: int, size: int,
                 weighting: str = "timestep",
                 feature_kd: bool = True, out_weight: float = FIXED_OUT_WEIGHT,
                 feat_weight: float = FIXED_FEAT_WEIGHT):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        self.teacher, self.prompts, self.resolution, self.size = teacher, prompts, resolution, size
        self.weighting, self.feature_kd = weighting, feature_kd
        self.out_weight, self.feat_weight = out_weight, feat_weight
        self.projections = nn.ModuleList()
        self.pairs: list[tuple[int, int]] = []  # (student tap index, teacher tap index)
        self._student_feats: dict[str, torch.Tensor] = {}

    def trainable(self) -> list[nn.Module]:
        return [self.projections]

    def attach(self, model: nn.Module, device: torch.device, ctx: DistContext) -> None:
        spec: UNetSpec = model.spec
        self.teacher.to(device)
        self.tcond = _TeacherConditioner(self.prompts, self.resolution, device)
        self.taps = student_taps(model)
        modules = dict(model.named_modules())
        for name in self.taps:
            modules[name].register_forward_hook(self._hook(name))
        if not self.feature_kd:
            return
        # One dry pass at the data's size gives every feature's width and resolution.
        x = torch.zeros(1, spec.latent_channels, self.size, self.size, device=device)
        t = torch.full((1,), 0.5, device=device)
        cond = Conditioner(spec, self.prompts, self.resolution, device)
        with torch.no_grad():
            velocity(model, cond, x, t, torch.zeros(1, dtype=torch.long, device=device))
            _, t_feats = self.teacher(x, t, *self.tcond(torch.zeros(1, dtype=torch.long, device=device)))
        s_feats = [self._student_feats[n] for n in self.taps]
        torch.manual_seed(0)  # the projections start the same on every rank
        for j, tf in enumerate(t_feats):
            i = min(range(len(s_feats)), key=lambda k: (abs(s_feats[k].shape[-1] - tf.shape[-1]), -k))
            self.pairs.append((i, j))
            self.projections.append(nn.Conv2d(s_feats[i].shape[1], tf.shape[1], 1).to(device))

    def _hook(self, name: str):
        def hook(module, args, output):
            self._student_feats[name] = output
        return hook

    def loss(self, model, cond, x0, noise, t, labels, autocast):
        x_t = interpolate(x0, noise, t)
        pred = velocity(model, cond, x_t, t, labels, autocast)
        task = _per_sample(pred - velocity_target(x0, noise))
        with torch.no_grad():
            v_teacher, t_feats = self.teacher(x_t, t, *self.tcond(labels))
        kd_out = _per_sample(pred - v_teacher)
        logs = {"loss_task": task.mean().detach(), "loss_kd_out": kd_out.mean().detach()}
        kd_feat = None
        if self.feature_kd and self.pairs:
            terms = []
            for proj, (i, j) in zip(self.projections, self.pairs):
                s = proj(self._student_feats[self.taps[i]].float())
                tf = t_feats[j]
                if tf.shape[-2:] != s.shape[-2:]:
                    tf = F.interpolate(tf, size=s.shape[-2:], mode="bilinear", align_corners=False)
                terms.append(_per_sample(s - tf) / tf.pow(2).flatten(1).mean(1).clamp_min(EPS))  # width-free scale
            kd_feat = torch.stack(terms).mean(0)
            logs["loss_kd_feat"] = kd_feat.mean().detach()
        if self.weighting == "timestep":
            loss = timestep_aware(task, kd_out, t)
            if kd_feat is not None:
                loss = loss + timestep_aware(task, kd_feat, t)
        else:
            loss = task.mean() + self.out_weight * kd_out.mean()
            if kd_feat is not None:
                loss = loss + self.feat_weight * kd_feat.mean()
        return loss, logs

    def identity(self) -> dict:
        return {"kind": self.kind, "teacher": self.teacher.identity(), "weighting": self.weighting,
                "feature_kd": self.feature_kd}


class _TeacherConditioner:
    """The teacher's conditioning from the same class prompts: tokens, pooled vector, size ids."""

    def __init__(self, prompts: PromptEmbeddings, resolution: int, device):
        self.tokens, self.pooled = prompts.tokens.to(device), prompts.pooled.to(device)
        self.time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device,
                                     dtype=torch.float32)

    def __call__(self, labels):
        return self.tokens[labels], self.pooled[labels], self.time_ids.expand(len(labels), -1)
