"""Spec -> module and example inputs for any spec (spec loading is torch-free: presets.load_spec)."""
from __future__ import annotations

import torch
from torch import nn

from .decoder import Decoder
from .errors import SpecError
from .init import build_paired
from .spec import DecoderSpec, Spec, UNetSpec
from .unet import SIZE_COND_COUNT, UNet

DEFAULT_TEXT_TOKENS = 77  # CLIP's context length: the cross-attention sequence length used for costing


def build_model(spec: Spec, device: str | torch.device | None = None, *, seed: int = 0) -> nn.Module:
    """Build the module for a spec with paired initial weights (search_space/init.py): every module's weights
    are a function of (seed, its module path) alone, so specs one knob apart share every weight the knob does
    not reach, and every rank and device gets the same ones. `device="meta"` builds it without weights."""
    return build_paired(lambda: UNet(spec) if isinstance(spec, UNetSpec) else Decoder(spec), seed, device=device)


def example_inputs(spec: Spec, latent: int = 128, batch: int = 1, text_tokens: int = DEFAULT_TEXT_TOKENS,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple:
    """Positional inputs for one forward pass at a `latent` x `latent` latent."""
    if isinstance(spec, DecoderSpec):
        return (torch.randn(batch, spec.latent_channels, latent, latent, device=device, dtype=dtype),)
    if latent % spec.downsample_factor:
        raise SpecError(f"latent size {latent} is not a multiple of {spec.downsample_factor} "
                        f"(2 ** (stages - 1)); pick e.g. {latent // spec.downsample_factor * spec.downsample_factor or spec.downsample_factor}")
    x = torch.randn(batch, spec.latent_channels, latent, latent, device=device, dtype=dtype)
    t = torch.full((batch,), 500.0, device=device)
    tokens = torch.randn(batch, text_tokens, spec.text_dim, device=device, dtype=dtype)
    pooled = torch.randn(batch, spec.pooled_dim, device=device, dtype=dtype) if spec.pooled_dim else None
    time_ids = (torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]] * batch, device=device,
                             dtype=dtype) if spec.size_conditioning else None)
    assert time_ids is None or time_ids.shape[1] == SIZE_COND_COUNT
    return (x, t, tokens, pooled, time_ids)
