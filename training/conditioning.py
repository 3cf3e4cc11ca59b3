"""Class labels -> the UNet's conditioning inputs, and the network's velocity for a batch.

Every objective, the loop's validation and the samplers call the network through `velocity`, so the timestep
scale, the conditioning inputs and bf16 autocast are applied in one place (docs/training.md).
"""
from __future__ import annotations

import torch
from torch import nn

from search_space import UNetSpec

from .flow import TIMESTEP_SCALE
from .text import PromptEmbeddings


class Conditioner:
    """Class labels -> the UNet's conditioning inputs (tokens, pooled vector, size ids)."""

    def __init__(self, spec: UNetSpec, prompts: PromptEmbeddings, resolution: int, device: torch.device):
        self.tokens = prompts.tokens.to(device)
        self.pooled = prompts.pooled.to(device) if spec.pooled_dim else None
        self.null = prompts.null_index
        self.time_ids = (torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=device,
                                      dtype=torch.float32) if spec.size_conditioning else None)

    def __call__(self, labels: torch.Tensor) -> tuple:
        pooled = self.pooled[labels] if self.pooled is not None else None
        time_ids = self.time_ids.expand(len(labels), -1) if self.time_ids is not None else None
        return self.tokens[labels], pooled, time_ids


def velocity(model: nn.Module, cond: Conditioner, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
             autocast: bool = False) -> torch.Tensor:
    """The model's velocity at x_t, t in [0, 1], for class labels (float32 out, bf16 inside when `autocast`)."""
    tokens, pooled, time_ids = cond(labels)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
        return model(x, t * TIMESTEP_SCALE, tokens, pooled, time_ids).float()
