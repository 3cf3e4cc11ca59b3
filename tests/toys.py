"""Toy data and prompts for training tests: random latents with class labels and random text embeddings, drawn
from one seeded generator (the same tensors in every test that asks for the same sizes)."""
from __future__ import annotations

import torch

from training.data import FlowData
from training.text import PromptEmbeddings


def toy_flow(n: int = 32, classes: int = 2, channels: int = 4, size: int = 8, n_val: int = 8,
             text_dim: int | None = None, tokens: int = 4, nan: bool = False):
    """A latent FlowData of `n` images (`n_val` of them also the validation set) and, when `text_dim` is given,
    PromptEmbeddings for its classes plus the empty prompt: (data, prompts)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, channels, size, size, generator=g), torch.arange(n) % classes
    if nan:
        x[:] = float("nan")
    data = FlowData(name="toy", kind="latent", class_names=[f"c{i}" for i in range(classes)], resolution=size,
                    channels=channels, size=size, val_x=x[:n_val], val_y=y[:n_val], ref_x=x, ref_y=y, train_x=x,
                    train_y=y)
    if text_dim is None:
        return data
    prompts = PromptEmbeddings(tokens=torch.randn(classes + 1, tokens, text_dim, generator=g),
                               pooled=torch.randn(classes + 1, text_dim, generator=g), encoder="toy")
    return data, prompts
