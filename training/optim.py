"""The parts of one optimiser step of the training loop: AdamW, gradient clipping, the EMA of the weights, and
activation checkpointing (what the backward pass recomputes instead of storing).

`fast` (LoopConfig.fast_step) picks fused and multi-tensor kernels where they are measured to help: the same
arithmetic as torch's per-tensor loops up to float rounding (benchmarks/proxy_throughput.md).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint


def make_optimizer(groups: list[dict], lr: float, weight_decay: float, fast: bool = True) -> torch.optim.Optimizer:
    """AdamW (torch's default betas and eps); `fast`: the fused kernel (one pass over each parameter for all of
    Adam's arithmetic; CPU and CUDA) instead of torch's per-tensor loop on CPU."""
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True if fast else None)


def clip_gradients(params: list[torch.Tensor], max_norm: float, fast: bool = True) -> torch.Tensor:
    """Clip the global gradient norm; returns the norm before clipping. `fast`: multi-tensor kernels (torch only
    picks them by itself on GPU)."""
    return nn.utils.clip_grad_norm_(params, max_norm, foreach=True if fast else None)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, fast: bool = True) -> None:
    """ema <- ema + (1 - decay) (model - ema); `fast`: one multi-tensor kernel per dtype instead of a Python
    loop over tensors (the same arithmetic)."""
    pairs = [(e, p.detach()) for e, p in zip(ema.parameters(), model.parameters())]
    if fast and pairs:
        torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1 - decay)
    else:
        for e, p in pairs:
            e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay after update `step` (1-based), with TensorFlow's ExponentialMovingAverage num_updates
    warm-up: a short run's EMA must not be dominated by the random initialisation."""
    return min(decay, (1 + step) / (10 + step))


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
