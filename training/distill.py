"""Multi-level knowledge distillation from a teacher of another architecture (SNAPGEN.md section 3).

- Teachers, each with ITS OWN conditioning (issue 12): a checkpoint of ours (any run, a quality run's included;
  class prompts through the text encoder it was trained with), a diffusers SD3-family pipeline folder
  (`SD3Transformer2DModel` with its CLIP-L, CLIP-G and T5 encoders and tokenizers from the same local folder,
  prompts encoded as SD3 does: penultimate CLIP states padded to the T5 width and joined with the T5 tokens,
  pooled = both CLIP projections), or a bare diffusers transformer / flow-matching UNet folder, which reads the
  student's text embeddings and must match their widths. The teacher runs frozen, optionally in lower precision.
- Output KD: student velocity vs teacher velocity at the same x_t, t and class prompt.
- Feature KD, paired by depth (monotone): the student's taps in forward order (last layer of every down stage,
  the mid block, last layer of every up stage) each take the teacher block at the same relative depth (early
  teacher blocks -> down/mid, late -> up); the teacher map is average-pooled (or interpolated) to the student
  map's resolution and standardised per channel with running statistics (transformer states carry a few huge
  channels that would otherwise own the MSE); a learned 1x1 conv maps student width to teacher width.
- Weighting (training/kd_scaling.py): S(L_task, L_kd_out) + S(L_task, L_kd_feat) with loss magnitudes per
  timestep bin, or the fixed weighting at the same KD share. Gradient norms of each term are logged.
A teacher whose latent channels or text conditioning do not fit fails before training, naming what is missing.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search_space import UNetSpec
from search_space.errors import UserError

from .distributed import DistContext
from .flow import TIMESTEP_SCALE, interpolate, velocity_target
from .kd_scaling import WEIGHTINGS, KDWeighting, LossMagnitudes, task_weight  # noqa: F401 (API)
from .objectives import Objective
from .text import NULL_PROMPT, PromptEmbeddings, class_prompt_embeddings, class_prompts
from .trainer import Conditioner, velocity

FEATURE_MOMENTUM = 0.99  # [choose] running per-channel statistics of teacher features (about 100 steps)
EPS = 1e-6
# diffusers' StableDiffusion3Pipeline defaults: CLIP prompts padded to 77 tokens, T5 to 256.
SD3_CLIP_MAX_LENGTH = 77
SD3_T5_MAX_LENGTH = 256
SD3_COMPONENTS = ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                  "tokenizer_3")


class TeacherError(UserError):
    """A teacher that cannot teach this student (channels, conditioning, missing files)."""


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.float().pow(2).flatten(1).mean(1)


def monotone_pairs(n_student: int, n_teacher: int) -> list[int]:
    """For each student tap (depth order) the teacher tap at the same relative depth: non-decreasing, first to
    first, last to last."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def resize_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A teacher map at the student map's resolution: average-pooled down, bilinear up."""
    if feature.shape[-2:] == size:
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


# --- teachers -----------------------------------------------------------------------------------------------

class Teacher(nn.Module):
    """Frozen velocity predictor that also returns intermediate features (B, C, H, W) of the selected taps.

    `candidates` are its feature taps in depth order; `use_taps` picks which ones `forward` returns."""

    latent_channels: int
    text_dim: int
    pooled_dim: int  # 0 = takes no pooled vector
    description: str
    candidates: list[str]

    def __init__(self, model: nn.Module, candidates: list[str], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        if dtype != torch.float32:
            self.model.to(dtype)
        self.dtype = dtype
        self.candidates = candidates
        self.taps: list[str] = []
        self._features: dict[str, torch.Tensor] = {}
        self._handles = []

    def use_taps(self, names: list[str]) -> None:
        for h in self._handles:
            h.remove()
        modules = dict(self.model.named_modules())
        self.taps = list(names)
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in dict.fromkeys(names)]

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
        """(velocity (B, C, H, W) float32, features of the selected taps) for x_t at t in [0, 1]."""
        self._features = {}
        cast = lambda v: v.to(self.dtype) if v is not None else None
        v = self.predict(cast(x), t, cast(tokens), cast(pooled), cast(time_ids)).float()
        return v, [self._features[name].float() for name in self.taps]

    def prompt_table(self, class_names: list[str] | None, student: PromptEmbeddings) -> PromptEmbeddings:
        """The teacher's conditioning for every class prompt plus the empty prompt (row K: guidance); a teacher
        without text encoders of its own reads the student's."""
        return student

    def identity(self) -> str:
        return self.description


class SpecTeacher(Teacher):
    """A trained UNet of our search space (any checkpoint of ours), with the text encoder it was trained with."""

    def __init__(self, model: nn.Module, spec: UNetSpec, description: str, dtype=torch.float32,
                 encoder: str | None = None):
        self.spec = spec
        super().__init__(model, student_taps(model), dtype)
        self.latent_channels, self.text_dim, self.pooled_dim = spec.latent_channels, spec.text_dim, spec.pooled_dim
        self.size_conditioning = spec.size_conditioning
        self.description = description
        self.encoder = encoder

    def prompt_table(self, class_names, student):
        if self.encoder is None or self.encoder == student.encoder:
            return student
        if class_names is None:
            raise TeacherError(f"teacher {self.description} was trained with text encoder {self.encoder}: its "
                               f"conditioning needs the class names")
        return class_prompt_embeddings(class_names, self.encoder)

    def predict(self, x, t, tokens, pooled, time_ids):
        return self.model(x, t * TIMESTEP_SCALE, tokens, pooled if self.pooled_dim else None,
                          time_ids if self.size_conditioning else None)


class SD3Teacher(Teacher):
    """diffusers SD3Transformer2DModel (SD3 / SD3.5): a flow-matching transformer predicting noise - x0."""

    def __init__(self, model: nn.Module, description: str, dtype=torch.float32, pipeline_root: Path | None = None):
        super().__init__(model, [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))], dtype)
        self.pipeline_root = pipeline_root  # a pipeline folder: the teacher's own text encoders live there
        self._tables: dict[tuple, PromptEmbeddings] = {}
        cfg = model.config
        self.latent_channels, self.text_dim = cfg.in_channels, cfg.joint_attention_dim
        self.pooled_dim, self.patch = cfg.pooled_projection_dim, cfg.patch_size
        if cfg.out_channels not in (None, cfg.in_channels):
            raise TeacherError(f"teacher {description} predicts {cfg.out_channels} channels from {cfg.in_channels}")
        self.description = description
        self._hw = (0, 0)

    def prompt_table(self, class_names, student):
        if self.pipeline_root is None:
            return student  # a bare transformer folder reads the student's embeddings (widths must match)
        if class_names is None:
            raise TeacherError(f"teacher {self.description} brings its own text encoders: its conditioning needs "
                               f"the class names")
        key = tuple(class_names)
        if key not in self._tables:
            try:
                tokens, pooled = encode_sd3_prompts(self.pipeline_root, class_prompts(class_names) + [NULL_PROMPT])
            except (OSError, ValueError) as e:
                if isinstance(e, TeacherError):
                    raise
                raise TeacherError(f"teacher {self.pipeline_root}: its text encoders do not load from the local "
                                   f"files: {str(e).splitlines()[0]}") from None
            self._tables[key] = PromptEmbeddings(tokens=tokens, pooled=pooled, encoder=f"sd3:{self.pipeline_root}")
        return self._tables[key]

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
        taps = [f"down_blocks.{i}" for i in range(len(model.down_blocks))] + \
               (["mid_block"] if model.mid_block is not None else []) + \
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


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise TeacherError(f"teacher file missing: {path} ({what}); copy it from the model's release or point "
                           f"--teacher at a complete local folder")
    return path


@torch.no_grad()
def encode_sd3_prompts(root: Path, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's text conditioning from local folders (as diffusers' StableDiffusion3Pipeline.encode_prompt):
    tokens = [CLIP-L penultimate | CLIP-G penultimate, zero-padded to the T5 width] ++ T5 tokens along the
    sequence; pooled = [CLIP-L projection | CLIP-G projection]. A pipeline saved without T5 gets zero tokens."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    index = json.loads(_require(root / "model_index.json", "the pipeline's component list").read_text())
    clip_states, clip_pooled = [], []
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        _require(root / enc / "config.json", f"CLIP text encoder {enc}")
        _require(root / tok, f"tokenizer {tok}")
        tokenizer = AutoTokenizer.from_pretrained(root / tok, local_files_only=True)
        model = CLIPTextModelWithProjection.from_pretrained(root / enc, local_files_only=True).eval()
        ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                        max_length=min(SD3_CLIP_MAX_LENGTH, tokenizer.model_max_length)).input_ids
        out = model(ids, output_hidden_states=True)
        clip_states.append(out.hidden_states[-2].float())  # SD3 takes the penultimate layer (clip_skip None)
        clip_pooled.append(out.text_embeds.float())
    clip = torch.cat(clip_states, dim=-1)
    t5_listed = (index.get("text_encoder_3") or [None])[0] is not None
    transformer_cfg = json.loads(_require(root / "transformer" / "config.json", "the SD3 transformer").read_text())
    width = transformer_cfg["joint_attention_dim"]
    if t5_listed:
        _require(root / "text_encoder_3" / "config.json", "T5 text encoder text_encoder_3")
        _require(root / "tokenizer_3", "tokenizer tokenizer_3")
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer_3", local_files_only=True)
        model = T5EncoderModel.from_pretrained(root / "text_encoder_3", local_files_only=True).eval()
        ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                        max_length=min(SD3_T5_MAX_LENGTH, tokenizer.model_max_length)).input_ids
        t5 = model(ids).last_hidden_state.float()
    else:
        t5 = torch.zeros(len(prompts), SD3_T5_MAX_LENGTH, width)
    if clip.shape[-1] > t5.shape[-1]:
        raise TeacherError(f"teacher {root}: the CLIP states are {clip.shape[-1]} wide, wider than the T5 tokens "
                           f"({t5.shape[-1]}); not an SD3-family pipeline")
    tokens = torch.cat([F.pad(clip, (0, t5.shape[-1] - clip.shape[-1])), t5], dim=-2)  # (N, 77 + 256, D)
    return tokens, torch.cat(clip_pooled, dim=-1)


def load_teacher(source: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                 ) -> Teacher:
    """A run folder / checkpoint of ours, a diffusers SD3 pipeline folder (model_index.json: the teacher brings
    its own text encoders, which encode the class prompts in `prompt_table`), or a bare diffusers model folder."""
    from .checkpoint import CheckpointError, load_trained

    path = Path(source)
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        if (index.get("transformer") or [None, None])[1] != "SD3Transformer2DModel":
            raise TeacherError(f"teacher {path}: pipeline {index.get('_class_name')!r} has no SD3Transformer2DModel; "
                               f"only SD3-family pipelines bring their own text encoders")
        _require(path / "transformer" / "config.json", "the SD3 transformer")
        import diffusers
        model = diffusers.SD3Transformer2DModel.from_pretrained(path / "transformer", local_files_only=True)
        teacher = SD3Teacher(model, f"diffusers:StableDiffusion3Pipeline:{path}", dtype, pipeline_root=path)
        for name in SD3_COMPONENTS[1:]:  # every local file the conditioning needs, checked before any work
            if name != "tokenizer_3" and name != "text_encoder_3" or (index.get(name) or [None])[0] is not None:
                _require(path / name, f"pipeline component {name}")
        return teacher.to(device)
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
        raise TeacherError(f"teacher {path}: diffusers class {cls_name!r} is not supported; use an SD3 pipeline "
                           f"folder, an SD3Transformer2DModel or a UNet2DConditionModel folder")
    try:
        model, spec, manifest = load_trained(path)
    except CheckpointError as e:
        raise TeacherError(f"teacher {source} is neither a diffusers model folder (model_index.json or "
                           f"config.json) nor a trained checkpoint of ours: {e}") from None
    return SpecTeacher(model, spec, f"checkpoint:{spec.spec_id}@{manifest['step']}", dtype,
                       encoder=manifest["meta"].get("encoder")).to(device)


def check_teacher(teacher: Teacher, student: UNetSpec, prompts: PromptEmbeddings, size: int,
                  class_names: list[str] | None = None) -> None:
    """Refuse a teacher that cannot see the student's inputs, before any training step."""
    problems = []
    if teacher.latent_channels != student.latent_channels:
        problems.append(f"latent channels: teacher {teacher.latent_channels}, student {student.latent_channels}")
    own = teacher.prompt_table(class_names, prompts)
    if teacher.text_dim != own.dim:
        problems.append(f"text token width: teacher {teacher.text_dim}, text encoder {own.encoder} gives {own.dim}")
    if teacher.pooled_dim and teacher.pooled_dim != own.pooled_dim:
        problems.append(f"pooled text width: teacher {teacher.pooled_dim}, text encoder {own.encoder} gives "
                        f"{own.pooled_dim}")
    if own.num_classes != prompts.num_classes:
        problems.append(f"class prompts: teacher {own.num_classes}, student {prompts.num_classes}")
    patch = getattr(teacher, "patch", 1)
    if size % patch:
        problems.append(f"latent size {size} is not a multiple of the teacher's patch size {patch}")
    if problems:
        raise TeacherError(f"teacher {teacher.description} does not match the student {student.spec_id}: "
                           + "; ".join(problems) + ". Use a teacher trained on the same latents, or one that "
                           "brings its own text encoders (an SD3 pipeline folder).")


def student_taps(model: nn.Module) -> list[str]:
    """Feature taps in forward (depth) order: the last layer of every down stage, the mid block, the last layer
    of every up stage."""
    taps = [f"down.{i}.layers.{len(s.layers) - 1}" for i, s in enumerate(model.down) if len(s.layers)]
    taps += ["mid"] if getattr(model, "mid", None) is not None else []
    taps += [f"up.{i}.layers.{len(s.layers) - 1}" for i, s in enumerate(model.up) if len(s.layers)]
    return taps


class TeacherConditioner:
    """The teacher's conditioning for class labels: its own tokens, pooled vector and size ids."""

    def __init__(self, prompts: PromptEmbeddings, resolution: int, device):
        self.tokens, self.pooled = prompts.tokens.to(device), prompts.pooled.to(device)
        self.null = prompts.null_index
        self.time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device,
                                     dtype=torch.float32)

    def __call__(self, labels):
        return self.tokens[labels], self.pooled[labels], self.time_ids.expand(len(labels), -1)


class FeatureStandardizer(nn.Module):
    """Running per-channel mean and variance of one teacher feature map; standardises it (issue 12)."""

    def __init__(self, channels: int, momentum: float = FEATURE_MOMENTUM):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> None:
        mean, var = f.mean(dim=(0, 2, 3)), f.var(dim=(0, 2, 3), unbiased=False)
        m = self.momentum if self.seen > 0 else 0.0  # the first batch sets the statistics
        self.mean.mul_(m).add_((1 - m) * mean)
        self.var.mul_(m).add_((1 - m) * var)
        self.seen += 1

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean.view(1, -1, 1, 1)) / (self.var.view(1, -1, 1, 1) + EPS).sqrt()


class KDObjective(Objective):
    """Task loss + output KD + feature KD, combined by the timestep-aware scaling or a fixed weighting."""

    kind = "kd"

    def __init__(self, teacher: Teacher, prompts: PromptEmbeddings, resolution: int, size: int,
                 weighting: str | KDWeighting = "timestep", feature_kd: bool = True,
                 class_names: list[str] | None = None):
        self.weighting = weighting if isinstance(weighting, KDWeighting) else KDWeighting(weighting)
        self.teacher, self.prompts, self.resolution, self.size = teacher, prompts, resolution, size
        self.feature_kd, self.class_names = feature_kd, class_names
        self.projections = nn.ModuleList()
        self.standardizers = nn.ModuleList()
        self.pairs: list[tuple[int, int]] = []  # (student tap index, teacher tap index)
        self.magnitudes = LossMagnitudes()
        self._student_feats: dict[str, torch.Tensor] = {}

    def trainable(self) -> list[nn.Module]:
        return [self.projections]

    def attach(self, model: nn.Module, device: torch.device, ctx: DistContext) -> None:
        spec: UNetSpec = model.spec
        self.teacher.to(device)
        self.tcond = TeacherConditioner(self.teacher.prompt_table(self.class_names, self.prompts), self.resolution,
                                        device)
        if ctx.enabled:
            self.magnitudes.reduce = _all_reduce_pair
        self.taps = student_taps(model)
        modules = dict(model.named_modules())
        for name in self.taps:
            modules[name].register_forward_hook(self._hook(name))
        if not self.feature_kd:
            self.teacher.use_taps([])
            return
        picks = monotone_pairs(len(self.taps), len(self.teacher.candidates))
        self.teacher.use_taps([self.teacher.candidates[j] for j in picks])
        self.pairs = list(zip(range(len(self.taps)), range(len(picks))))
        # One dry pass at the data's size gives every feature's width and resolution.
        x = torch.zeros(1, spec.latent_channels, self.size, self.size, device=device)
        t = torch.full((1,), 0.5, device=device)
        cond = Conditioner(spec, self.prompts, self.resolution, device)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        with torch.no_grad():
            velocity(model, cond, x, t, zero)
            _, t_feats = self.teacher(x, t, *self.tcond(zero))
        torch.manual_seed(0)  # the projections start the same on every rank
        for i, j in self.pairs:
            s = self._student_feats[self.taps[i]]
            self.projections.append(nn.Conv2d(s.shape[1], t_feats[j].shape[1], 1).to(device))
            self.standardizers.append(FeatureStandardizer(t_feats[j].shape[1]).to(device))

    def _hook(self, name: str):
        def hook(module, args, output):
            self._student_feats[name] = output
        return hook

    def feature_loss(self, t_feats: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-sample feature KD (B,) over all depth pairs, and the student maps it reads (for gradient norms)."""
        terms, maps = [], []
        for proj, std, (i, j) in zip(self.projections, self.standardizers, self.pairs):
            s = self._student_feats[self.taps[i]]
            maps.append(s)
            tf = resize_to(t_feats[j], s.shape[-2:])
            std.update(tf)
            terms.append(_per_sample(proj(s.float()) - std(tf)))
        return torch.stack(terms).mean(0), maps

    def loss(self, model, cond, x0, noise, t, labels, autocast):
        x_t = interpolate(x0, noise, t)
        pred = velocity(model, cond, x_t, t, labels, autocast)
        task = _per_sample(pred - velocity_target(x0, noise))
        with torch.no_grad():
            v_teacher, t_feats = self.teacher(x_t, t, *self.tcond(labels))
        kd_out = _per_sample(pred - v_teacher)
        m = self.magnitudes
        m.update("task", t, task)
        m.update("kd_out", t, kd_out)
        # S(L_task, L_kd) = task part + KD part; each S carries the task part once (the paper's sum of two S).
        loss, kd_value = self.weighting.combine(task, kd_out, t, m, "task", "kd_out")
        task_part = (self.weighting.task_weights(t).to(task.dtype) * task).mean()
        logs = {"loss_task": task.mean().detach(), "loss_kd_out": kd_out.mean().detach()}
        terms = {"task": task_part, "kd_out": loss - task_part}
        wrt = [pred]
        if self.feature_kd and self.pairs:
            kd_feat, maps = self.feature_loss(t_feats)
            m.update("kd_feat", t, kd_feat)
            s_feat, kd_feat_value = self.weighting.combine(task, kd_feat, t, m, "task", "kd_feat")
            terms["kd_feat"] = s_feat - task_part
            loss, kd_value = loss + s_feat, kd_value + kd_feat_value
            logs["loss_kd_feat"] = kd_feat.mean().detach()
            wrt += maps
        logs["kd_share"] = kd_value / loss.detach().clamp_min(EPS)
        logs.update(_grad_norms(terms, wrt))
        return loss, logs

    def identity(self) -> dict:
        return {"kind": self.kind, "teacher": self.teacher.identity(), "weighting": self.weighting.identity(),
                "feature_kd": self.feature_kd}

    def state_dict(self) -> dict:
        return {"magnitudes": self.magnitudes.state_dict(), "standardizers": self.standardizers.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.magnitudes.load_state_dict(state["magnitudes"])
        self.standardizers.load_state_dict(state["standardizers"])


def _grad_norms(terms: dict[str, torch.Tensor], wrt: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """||d term / d (student output and tapped features)|| per loss term: how hard each term pulls the student
    (the per-sample ratio of the old scaling made the KD one grow without bound near the teacher)."""
    out = {}
    for name, term in terms.items():
        if not term.requires_grad:
            continue
        grads = torch.autograd.grad(term, wrt, retain_graph=True, allow_unused=True)
        out[f"grad_{name}"] = torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None)).detach()
    return out


def _all_reduce_pair(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import torch.distributed as dist

    both = torch.cat([sums, counts])
    if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
        both = both.cuda()
    dist.all_reduce(both)
    both = both.cpu()
    return both[:len(sums)], both[len(sums):]


TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def distillation_objective(teacher: str | Path | None, student: UNetSpec, prompts: PromptEmbeddings, data,
                           weighting: KDWeighting, feature_kd: bool = True, teacher_dtype: str = "fp32",
                           step_distill=None, init: str | None = None) -> tuple[Objective | None, str]:
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
    from .step_distill import StepDistillObjective

    return (StepDistillObjective(frozen, prompts, data.resolution, data.size, step_distill, data.class_names),
            f"teacher {frozen.description}  {step_distill.sampler_steps}-step sampler, teacher CFG "
            f"{step_distill.teacher_cfg:g}, student CFG 1")
