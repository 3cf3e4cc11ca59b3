"""Teachers for distillation, each with ITS OWN conditioning (docs/training.md; docs/paper.md section 3).

A teacher is a frozen velocity predictor that also returns intermediate features of chosen taps:
- a checkpoint of ours (any run, a quality run's included): class prompts through the text encoder it was
  trained with (`SpecTeacher`);
- a diffusers SD3-family pipeline folder (`SD3Teacher`): `SD3Transformer2DModel` with its CLIP-L, CLIP-G and T5
  encoders and tokenizers from the same local folder, prompts encoded as SD3 does (penultimate CLIP states
  padded to the T5 width and joined with the T5 tokens; pooled = both CLIP projections);
- a bare diffusers transformer or flow-matching UNet folder (`SD3Teacher`, `DiffusersUNetTeacher`), which reads
  the student's text embeddings and must match their widths.
The teacher runs frozen, optionally in lower precision (TEACHER_DTYPES). A teacher whose latent channels or
text conditioning do not fit the student fails in `check_teacher`, before training, naming what is missing.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search_space import UNetSpec
from search_space.errors import UserError
from search_space.limits import read_json

from .flow import TIMESTEP_SCALE
from .text import NULL_PROMPT, PromptEmbeddings, class_prompt_embeddings, class_prompts
from .weights import check_model_folder

# diffusers' StableDiffusion3Pipeline defaults: CLIP prompts padded to 77 tokens, T5 to 256.
SD3_CLIP_MAX_LENGTH = 77
SD3_T5_MAX_LENGTH = 256
SD3_COMPONENTS = ("transformer", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                  "tokenizer_3")
SD3_PREFIX = "sd3:"  # --teacher sd3:PATH: PATH must be an SD3 pipeline folder
TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TeacherError(UserError):
    """A teacher that cannot teach this student (channels, conditioning, missing files)."""


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
    index = read_json(root / "model_index.json", "teacher pipeline index", TeacherError, expect=dict)
    clip_states, clip_pooled = [], []
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        check_model_folder(root / enc, f"teacher CLIP text encoder {enc}", TeacherError)
        _require(root / tok, f"tokenizer {tok}")
        tokenizer = AutoTokenizer.from_pretrained(root / tok, local_files_only=True)
        model = CLIPTextModelWithProjection.from_pretrained(root / enc, local_files_only=True).eval()
        ids = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                        max_length=min(SD3_CLIP_MAX_LENGTH, tokenizer.model_max_length)).input_ids
        out = model(ids, output_hidden_states=True)
        clip_states.append(out.hidden_states[-2].float())  # SD3 takes the penultimate layer (clip_skip None)
        clip_pooled.append(out.text_embeds.float())
    clip = torch.cat(clip_states, dim=-1)
    transformer_cfg = read_json(root / "transformer" / "config.json", "teacher SD3 transformer config", TeacherError,
                                expect=dict)
    width = transformer_cfg.get("joint_attention_dim")
    if type(width) is not int or width < 1:
        raise TeacherError(f"teacher {root / 'transformer' / 'config.json'}: joint_attention_dim is {width!r}, "
                           f"expected a positive whole number")
    if _listed(index, "text_encoder_3"):
        check_model_folder(root / "text_encoder_3", "teacher T5 text encoder text_encoder_3", TeacherError)
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
    its own text encoders, which encode the class prompts in `prompt_table`; `sd3:PATH` insists on one), or a
    bare diffusers model folder. Every file is checked (JSON, weights present and plain) before diffusers loads."""
    from .checkpoint import NoCheckpoint, find_checkpoint, load_trained

    text = str(source)
    pipeline_only = text.startswith(SD3_PREFIX)
    path = Path(text[len(SD3_PREFIX):] if pipeline_only else text)
    if pipeline_only and not (path / "model_index.json").is_file():
        raise TeacherError(f"teacher {source}: {path / 'model_index.json'} not found; {SD3_PREFIX}PATH names an SD3 "
                           f"pipeline folder saved with save_pretrained")
    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json", "teacher pipeline index", TeacherError, expect=dict)
        listed = index.get("transformer")
        if not (isinstance(listed, list) and len(listed) == 2 and listed[1] == "SD3Transformer2DModel"):
            raise TeacherError(f"teacher {path}: pipeline {index.get('_class_name')!r} has no SD3Transformer2DModel "
                               f"(model_index.json's 'transformer' entry is {listed!r}); only SD3-family pipelines "
                               f"bring their own text encoders")
        check_model_folder(path / "transformer", "teacher SD3 transformer", TeacherError)
        for name in SD3_COMPONENTS[1:]:  # every local file the conditioning needs, checked before any work
            if name in ("tokenizer_3", "text_encoder_3") and not _listed(index, name):
                continue
            _require(path / name, f"pipeline component {name}")
            if name.startswith("text_encoder"):
                check_model_folder(path / name, f"teacher pipeline component {name}", TeacherError)
        import diffusers
        model = diffusers.SD3Transformer2DModel.from_pretrained(path / "transformer", local_files_only=True)
        teacher = SD3Teacher(model, f"diffusers:StableDiffusion3Pipeline:{path}", dtype, pipeline_root=path)
        return teacher.to(device)
    if (path / "config.json").is_file():
        cls_name = check_model_folder(path, "teacher model folder", TeacherError).get("_class_name")
        import diffusers
        if cls_name == "SD3Transformer2DModel":
            model = diffusers.SD3Transformer2DModel.from_pretrained(path, local_files_only=True)
            return SD3Teacher(model, f"diffusers:{cls_name}:{path}", dtype).to(device)
        if cls_name == "UNet2DConditionModel":
            scheduler = path.parent / "scheduler" / "scheduler_config.json"  # a pipeline's unet/ sub-folder
            kind = (read_json(scheduler, "teacher scheduler config", TeacherError, expect=dict).get("_class_name")
                    if scheduler.is_file() else None)
            if kind is not None and "FlowMatch" not in str(kind):
                raise TeacherError(f"teacher {path} belongs to a pipeline with scheduler {kind}: an "
                                   f"epsilon/v-prediction DDPM UNet (SDXL) is not supported, only flow-matching "
                                   f"(velocity) UNets")
            model = diffusers.UNet2DConditionModel.from_pretrained(path, local_files_only=True)
            return DiffusersUNetTeacher(model, f"diffusers:{cls_name}:{path}", dtype).to(device)
        raise TeacherError(f"teacher {path}: diffusers class {cls_name!r} is not supported; use an SD3 pipeline "
                           f"folder, an SD3Transformer2DModel or a UNet2DConditionModel folder")
    try:
        find_checkpoint(path)
    except NoCheckpoint:
        raise TeacherError(f"teacher {source} is neither a diffusers model folder (model_index.json or "
                           f"config.json) nor a run folder or checkpoint of ours") from None
    model, spec, manifest = load_trained(path)  # a damaged checkpoint of ours: its own one-line error
    return SpecTeacher(model, spec, f"checkpoint:{spec.spec_id}@{manifest['step']}", dtype,
                       encoder=manifest["meta"].get("encoder")).to(device)


def _listed(index: dict, name: str) -> bool:
    """Whether a pipeline's model_index.json lists component `name` (a pipeline saved without T5 lists None)."""
    entry = index.get(name)
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


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
