"""Memory: the bytes a model's tensors take, estimated on the meta device, against the memory this machine has free.

- `peak_live_bytes(fn)`: peak bytes of the tensors alive while `fn()` runs, tracked by a dispatch mode that adds
  each new tensor's size and subtracts it when the tensor is freed; on meta tensors it costs no memory. The cost
  evaluator's peak activation memory (evaluators/cost.py) and the estimates below are views of it.
- `inference_bytes` / `training_bytes`: a model's weights plus the activations of one forward at a batch size
  (attention counted as the fused kernels run it),
  measured at batch 1 on the meta device and scaled (activations grow linearly with the batch). A training
  forward keeps what backward needs alive, so its peak is what a step holds; with activation checkpointing only
  the inference peak is certain, so that is what counts then.
- `available_bytes(device)` / `require_memory(need, ...)`: refuse, before anything is allocated, work whose
  estimate exceeds what the device has free (the host's MemAvailable, or the GPU's free memory), with one line
  that states both and the flag to lower. The estimates are lower bounds (no allocator slack, no optimizer
  workspace), so a refusal is certain to be right; a run that passes can still be tight.
"""
from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import UserError

# Copies of the weights a training step holds in fp32: the weights, their gradients, AdamW's two moments, the EMA.
TRAINING_WEIGHT_COPIES = 5


class _LiveBytes(TorchDispatchMode):
    """Adds each newly allocated (non-view) output's bytes; a finalizer subtracts them when it is freed."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def add(self, t: torch.Tensor) -> None:
        nbytes = t.untyped_storage().nbytes()
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for ret, o in zip(returns, outs):
            if isinstance(o, torch.Tensor) and ret.alias_info is None:  # views and in-place results alias
                self.add(o)
        return out


class _FusedAttention(TorchFunctionMode):
    """scaled_dot_product_attention as its fused kernels run it (flash / memory-efficient on CUDA, flash on the
    CPU): the output is allocated, the L x L score matrix is not. The meta device decomposes it into the
    explicit matmuls, which would count that matrix; an explicit-matmul backend still counts it, as it runs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, v = args[0], args[2] if len(args) > 2 else kwargs["value"]
            return q.new_empty(*q.shape[:-1], v.shape[-1])
        return func(*args, **(kwargs or {}))


def peak_live_bytes(fn: Callable[[], Any], inputs: tuple = (), fused_attention: bool = False) -> int:
    """Peak bytes of tensors created while `fn()` runs (plus `inputs`), on any device, meta included; with
    `fused_attention`, scaled_dot_product_attention counts as a fused kernel (`_FusedAttention`).

    Allocator-independent, so two implementations compare on CPU where torch has no max_memory_allocated.
    """
    mode = _LiveBytes()
    with mode, (_FusedAttention() if fused_attention else contextlib.nullcontext()):
        for x in inputs:
            if isinstance(x, torch.Tensor):
                mode.live += x.untyped_storage().nbytes()
        fn()
    return mode.peak


def peak_activation_bytes(model: nn.Module, inputs: tuple, grad: bool = False, fused_attention: bool = False) -> int:
    """Peak bytes of intermediate tensors (inputs included, weights excluded) in one forward; with `grad`, a
    training forward, whose graph keeps what backward needs alive until it returns."""
    def forward() -> None:
        with torch.set_grad_enabled(grad):
            out = model(*inputs)
        del out
    return peak_live_bytes(forward, inputs, fused_attention)


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + \
        sum(b.numel() * b.element_size() for b in model.buffers())


def inference_bytes(model: nn.Module, inputs: tuple, batch: int = 1) -> int:
    """Weights plus `batch` times the peak activations of one no-grad forward on `inputs` (batch 1, meta)."""
    return weight_bytes(model) + batch * peak_activation_bytes(model, inputs, fused_attention=True)


def training_bytes(model: nn.Module, inputs: tuple, batch: int, checkpointing: bool = False) -> int:
    """What a training step holds: TRAINING_WEIGHT_COPIES of the weights plus `batch` times the activations of
    one training forward on `inputs` (batch 1, meta); under activation checkpointing, one inference forward's."""
    model.train()
    return (TRAINING_WEIGHT_COPIES * weight_bytes(model)
            + batch * peak_activation_bytes(model, inputs, grad=not checkpointing, fused_attention=True))


def available_bytes(device: Any = "cpu") -> int | None:
    """Memory free for new tensors on `device`: the GPU's free memory on CUDA, else the host's MemAvailable
    (/proc/meminfo; the free physical pages where that is missing). None where the platform says nothing."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def require_memory(need: float, what: str, lower: str, device: Any = "cpu",
                   error: type[UserError] = UserError) -> None:
    """Refuse, before anything is allocated, work whose estimated tensors (`need` bytes) exceed the memory free
    on `device`: one line naming the work (`what`), both numbers and the flag(s) that shrink it (`lower`)."""
    free = available_bytes(device)
    if free is not None and need > free:
        raise error(f"{what} needs at least {gib(need)} of tensors (estimated before allocating) but "
                    f"{torch.device(device)} has {gib(free)} free; lower {lower}")
