"""Sampling a trained UNet with the Euler ODE sampler (training/flow.py) and classifier-free guidance.

Two entry points, one per kind of conditioning (docs/training.md):
- `sample_classes`: class-conditional samples in model space from a model in memory, one class prompt per label
  (the loop's sample grids and FD, the quality evaluator's scored samples).
- `sample_prompt`: images for a text prompt from a trained checkpoint (`pocketdiff sample`). The checkpoint's
  own conditioning (text encoder, resolution, data kind) is read from its manifest; guidance pairs the prompt
  with the empty prompt. Latent models are decoded with the VAE they were trained on; pixel models unpatchify.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search_space import UNetSpec
from search_space.errors import UserError

from .checkpoint import load_trained
from .conditioning import Conditioner, velocity
from .data import FlowData, decoding_vae, load_vae
from .flow import cfg_velocity, euler_sample
from .text import PromptEmbeddings, encode_prompts


class SampleError(UserError):
    """The sampling request cannot be met (bad counts, a latent model without its VAE)."""


@dataclass(frozen=True)
class Samples:
    images: torch.Tensor  # (N, C, H, W) in [0, 1]
    spec_id: str
    step: int
    cfg_scale: float
    steps: int


@torch.no_grad()
def sample_classes(model: nn.Module, spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, labels: torch.Tensor,
                   seed: int, steps: int, cfg_scale: float, batch_size: int = 250,
                   device: str | torch.device | None = None, progress: bool = True) -> torch.Tensor:
    """Class-conditional samples in model space; CFG runs the conditional and unconditional halves in one batch."""
    from tqdm import tqdm

    device = torch.device(device or next(model.parameters()).device)
    autocast = device.type == "cuda"
    cond = Conditioner(spec, prompts, data.resolution, device)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(labels), data.channels, data.size, data.size), generator=gen)
    model.eval()
    out = []
    for i in tqdm(range(0, len(labels), batch_size), desc="sample", disable=not progress, leave=False):
        y = labels[i:i + batch_size].to(device)
        null = torch.full_like(y, cond.null)

        def plain(x: torch.Tensor, t: torch.Tensor, y=y) -> torch.Tensor:
            return velocity(model, cond, x, t, y, autocast)

        def pair(x: torch.Tensor, t: torch.Tensor, y=y, null=null) -> tuple[torch.Tensor, torch.Tensor]:
            v = velocity(model, cond, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), autocast)
            return v.chunk(2)  # (v_cond, v_uncond)

        fn = plain if cfg_scale == 1.0 else cfg_velocity(pair, cfg_scale)
        out.append(euler_sample(fn, noise[i:i + batch_size].to(device), steps).cpu())
    return torch.cat(out)


@torch.no_grad()
def sample_prompt(checkpoint: str | Path, prompt: str, steps: int | None = None, num: int = 8,
                  cfg_scale: float | None = None, seed: int = 0, use_ema: bool = True, vae: str | None = None
                  ) -> Samples:
    """`num` images of `prompt` from `checkpoint` with `steps` Euler steps and guidance `cfg_scale` (each
    defaults to the run's own sampler: a 4-step student samples 4 steps at CFG 1; else 4 steps)."""
    if (steps is not None and steps < 1) or num < 1:
        raise SampleError("--steps and --num must be >= 1")
    model, spec, manifest = load_trained(checkpoint, use_ema=use_ema)
    meta = manifest["meta"]
    if steps is None:
        steps = int(meta.get("sample_steps", meta.get("config", {}).get("sample_steps", 4)))
    if meta["data_kind"] == "latent" and vae is None:
        raise SampleError("this model was trained on VAE latents; pass --vae PATH to decode them")
    decoding_vae(vae, meta["data_kind"])  # a VAE for pixel data, or a folder that cannot decode: refused here
    tokens, pooled = encode_prompts([prompt, ""], meta["encoder"])
    prompts = PromptEmbeddings(tokens=tokens, pooled=pooled, encoder=meta["encoder"])
    cond = Conditioner(spec, prompts, meta["resolution"], torch.device("cpu"))
    scale = meta.get("cfg_scale", meta.get("config", {}).get("cfg_scale", 1.0)) if cfg_scale is None else cfg_scale
    y, null = torch.zeros(num, dtype=torch.long), torch.ones(num, dtype=torch.long)  # rows 0 / 1 of `prompts`

    def pair(x, t):
        return velocity(model, cond, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)

    fn = (lambda x, t: velocity(model, cond, x, t, y)) if scale == 1.0 else cfg_velocity(pair, scale)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((num, meta["channels"], meta["size"], meta["size"]), generator=gen)
    x = euler_sample(fn, noise, steps)
    if meta["data_kind"] == "latent":
        s, shift = meta["latent_scaling"]
        img = load_vae(vae).decode(x / s + shift).sample
    else:
        img = F.pixel_shuffle(x, meta["patch"]) if meta["patch"] > 1 else x  # (B, C*p*p, h, w) -> (B, C, H, W)
    return Samples(images=(img.clamp(-1, 1) + 1) / 2, spec_id=spec.spec_id, step=manifest["step"], cfg_scale=scale,
                   steps=steps)


def save_grid(images: torch.Tensor, path: str | Path, per_row: int = 8) -> Path:
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=min(len(images), per_row))
    return path
