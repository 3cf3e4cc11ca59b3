"""The one op trace of a built model: one forward pass, walked aten op by aten op.

`trace_forward(module, inputs)` runs the forward pass under a TorchDispatchMode and records one `TracedOp` per
op: its aten name, the innermost module that ran it, its multiply-accumulates (torch's flop formulas, products
only: convs, linear layers, attention products), its data inputs and first output by tensor identity
(numbered in order of first appearance, so a later pass can fuse ops), and the element counts of its data
inputs, outputs and weight / constant inputs. A module built on the meta device runs without weights and
without arithmetic; a module with real weights runs with meta stand-ins swapped in. So the full-size SnapGen
UNet costs seconds and no memory.

Everything that measures a model is a view of this trace: the cost evaluator's MACs (evaluators/cost.py),
training's FLOPs per step (training/throughput.py) and the latency features, which classify each op and price
it in bytes at the export precision (latency_models/features.py). `stage_of` and `block_kind` group the
trace's module paths (and parameter names) by stage and block kind for every view that breaks a cost down.

What counts as work mirrors what a compiler keeps (the Core ML converter): ops whose inputs are all weights or
constants (RoPE tables, weight transposes) are folded and not recorded, and a layout op on a weight gives a
weight. Torch is imported on first use, so the path views load without it (docs/architecture.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Iterable

# Ops that only reinterpret or move data (Core ML lowers them to reshape / transpose / concat / slice ops); one
# of them applied to a weight gives a weight, not a constant.
LAYOUT_OPS = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "slice",
    "select", "split", "split_with_sizes", "chunk", "cat", "stack", "clone", "contiguous", "flatten",
    "unflatten", "repeat", "repeat_interleave", "upsample_nearest2d", "_unsafe_index", "constant_pad_nd",
    "pixel_shuffle", "unbind", "alias", "detach", "_to_copy", "copy_", "lift_fresh", "expand_as", "narrow",
    "roll", "index", "as_strided", "new_empty", "empty_like", "_reshape_alias", "lift_fresh_copy",
    "upsample_bilinear2d", "_upsample_nearest_exact2d",
}
# Ops with no data inputs (factories): their outputs are constants the converter folds.
FACTORY_OPS = {"arange", "zeros", "ones", "full", "empty", "scalar_tensor", "linspace", "zeros_like",
               "ones_like", "full_like", "randn", "rand", "tensor", "eye"}
# Fused attention kernels; torch's counter has no formula for some of them, the trace counts QK^T and PV itself.
SDPA_OPS = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
            "_scaled_dot_product_efficient_attention", "scaled_dot_product_attention",
            "_scaled_dot_product_attention_math"}
CONV_OPS = ("convolution", "_convolution")


@dataclasses.dataclass(frozen=True)
class TracedOp:
    """One aten op of a forward pass (the trace's row); views derive FLOPs, bytes and classes from it."""
    op: str  # aten op name without overload, e.g. "convolution", "addmm"
    module: str  # path of the innermost module that ran the op ("" = the root's own code)
    macs: float  # multiply-accumulates of conv / matmul / attention products (fvcore's convention)
    in_ids: tuple[int, ...]  # data inputs, numbered in order of first appearance in the trace
    out_id: int  # the first output, same numbering
    in_elems: tuple[int, ...]  # elements of each data input (aligned with in_ids)
    out_elems: int  # elements of all outputs
    out_shape: tuple[int, ...]  # shape of the first output
    const_elems: tuple[int, ...]  # elements of each weight or folded constant it reads
    groups: int = 1  # convolution groups (> 1: grouped or depthwise)


def numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def trace_forward(module, inputs: tuple) -> list[TracedOp]:
    """Walk one forward pass of `module` (ideally built on the meta device) and return its ops in order.

    `inputs` are the positional inputs (None allowed, passed through). The module itself is left alone: a
    module with real weights runs with meta stand-ins of them, never moved or copied.
    """
    import torch

    named = dict(module.named_parameters()) | dict(module.named_buffers())
    on_meta = all(t.device.type == "meta" for t in named.values())
    inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    swapped = named if on_meta else {k: torch.empty_like(v, device="meta") for k, v in named.items()}
    mode = _trace_mode()(swapped.values())
    with torch.no_grad(), _module_paths(module, mode.module_stack), mode:
        if on_meta:
            module(*inputs)
        else:
            torch.func.functional_call(module, swapped, inputs, tie_weights=True, strict=False)
    return mode.ops


@functools.lru_cache(maxsize=1)
def _trace_mode():
    """The dispatch mode class (built on first use: torch loads only when a model is traced)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    def op_name(func) -> str:
        return func.__name__.split(".")[0] if hasattr(func, "__name__") else str(func)

    class TraceMode(TorchDispatchMode):
        """Records one TracedOp per aten op run under it; tracks which tensors are weights or constants."""

        def __init__(self, weights):
            super().__init__()
            # Strong references keep ids unique while the walk runs (meta tensors cost no memory).
            self._keep = []
            self._weight_ids: set[int] = set()
            self._const_ids: set[int] = set()
            for w in weights:
                self._mark(w, self._weight_ids)
            self.ops: list[TracedOp] = []
            self.module_stack: list[str] = []  # maintained by the walk's module hooks
            self._tensor_no: dict[int, int] = {}  # id -> trace number (ids are unique while _keep holds them)

        def _number(self, t) -> int:
            key = id(t)
            if key not in self._tensor_no:
                self._keep.append(t)
                self._tensor_no[key] = len(self._tensor_no)
            return self._tensor_no[key]

        def _mark(self, t, ids: set[int]) -> None:
            self._keep.append(t)
            ids.add(id(t))

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = op_name(func.overloadpacket) if hasattr(func, "overloadpacket") else op_name(func)
            in_tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
            out_tensors = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            weights_in = [a for a in in_tensors if id(a) in self._weight_ids]
            consts_in = [a for a in in_tensors if id(a) in self._const_ids]
            data_in = [a for a in in_tensors if id(a) not in self._weight_ids and id(a) not in self._const_ids]

            if name in FACTORY_OPS or not data_in:
                # Folded by the converter: weights reshaped / transposed stay weights, anything else is a constant.
                target = self._weight_ids if weights_in and name in LAYOUT_OPS else self._const_ids
                for o in out_tensors:
                    self._mark(o, target)
                return out
            if not out_tensors:
                return out
            flops = 0.0
            packet = getattr(func, "overloadpacket", None)
            if packet in flop_registry:
                flops = float(flop_registry[packet](*args, out_val=out, **kwargs))
            if name in SDPA_OPS and not flops:
                q, k = args[0], args[1]
                flops = 4.0 * numel(q.shape[:-1]) * k.shape[-2] * q.shape[-1]  # QK^T and PV, 2 FLOPs per MAC
            self.ops.append(TracedOp(
                op=name, module=self.module_stack[-1] if self.module_stack else "",
                macs=flops / 2,  # torch's counter: 2 FLOPs per multiply-accumulate
                in_ids=tuple(self._number(a) for a in data_in), out_id=self._number(out_tensors[0]),
                in_elems=tuple(a.numel() for a in data_in), out_elems=sum(o.numel() for o in out_tensors),
                out_shape=tuple(int(s) for s in out_tensors[0].shape),
                const_elems=tuple(w.numel() for w in weights_in + consts_in),
                groups=int(args[8]) if name in CONV_OPS and len(args) > 8 else 1))
            return out

    return TraceMode


@contextlib.contextmanager
def _module_paths(root, stack: list[str]):
    """Keep `stack` equal to the paths of the modules running now (innermost last), for `root`'s submodules.

    Hooks on every submodule rather than global hooks: another model running meanwhile is not attributed.
    """
    hooks = []

    def pre(path):
        def f(_m, _inp):
            stack.append(path)
        return f

    def post(_m, _inp, _out):
        stack.pop()

    for path, mod in root.named_modules():
        if path:
            hooks.append(mod.register_forward_pre_hook(pre(path)))
            hooks.append(mod.register_forward_hook(post, always_call=True))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


# --- module paths -> stages and block kinds (views of the trace's `module` field) ------------------------

def stage_of(name: str, n_stages: int | None) -> str:
    """Stage label of a module path: 'stage1'..'stageN', 'mid', 'stem' (in/out convs, embeddings).

    For the workbench's UNet and decoder (`n_stages` given; both list up stages from the lowest resolution
    to the highest); any other model is labelled by its top-level module.
    """
    parts = name.split(".")
    if n_stages is None:
        return parts[0] or "root"
    if parts[0] == "down" and len(parts) > 1:
        return f"stage{int(parts[1]) + 1}"
    if parts[0] == "up" and len(parts) > 1:
        return f"stage{n_stages - int(parts[1])}"
    if parts[0] == "mid":
        return "mid"
    return "stem"


def block_kind(name: str) -> str:
    """Block kind of a module or parameter path: res, self_attn, cross_attn, ffn, transformer_io, resample,
    embed, stem_head (by path segment, so the ops a block runs in its own forward count as that block)."""
    parts = name.split(".")
    for segment, kind in (("attn1", "self_attn"), ("attn2", "cross_attn"), ("ff", "ffn"),
                          ("attn", "transformer_io")):  # attn: SpatialTransformer norm / proj, VAE attention
        if segment in parts:
            return kind
    if any(p in ("res", "res_in", "res_out") for p in parts):
        return "res"
    if any("downsample" in p or "upsample" in p for p in parts):
        return "resample"
    if "embedding" in name:
        return "embed"
    return "stem_head"
