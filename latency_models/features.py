"""Per-op feature tables: one row per op with its class, FLOPs, activation bytes and weight bytes.

This is the project's one op trace: `features_from_torch` walks a forward pass once and records, per op, the
module that ran it, its multiply-accumulates, its data inputs and output (by tensor identity, so a later pass
can fuse ops as the Neural Engine compiler does: roofline.py), and its shapes. Parameter-free views of that
trace give the cost evaluator's MACs (evaluators/cost.py), the op-class totals of the linear predictor
(predictor.py), the fused roofline ops (roofline.py) and the per-stage / per-op breakdown (explain.py).

Two sources give the same table, so the predictor (predictor.py) fits and predicts on either:
- `features_from_mil`: the ops of a converted Core ML program (what the Neural Engine actually runs).
- `features_from_torch`: a TorchDispatchMode walk of one forward pass on the meta device. No weights are
  allocated and no arithmetic runs, so the full-size SnapGen UNet costs seconds and no memory. It is the
  fallback when Core ML cannot convert a model, and the primary source for prediction (see predictor.py).

Both walks mimic what the Core ML converter keeps: ops on constants only (RoPE tables, weight transposes)
are folded and cost nothing; shape-only ops (views) are counted as `layout` ops because the ANE runs Core ML's
reshape / transpose as real ops.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from typing import Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

FEATURE_SOURCES = ("coreml", "torch-meta")

# The op classes every op maps to; the predictor fits one compute, one memory and one overhead term each.
OP_CLASSES = ("conv", "dwconv", "linear", "attn_matmul", "softmax", "norm", "elementwise", "reduce", "layout")

ACTIVATION_BYTES = 2  # fp16 activations: the converter's compute_precision=FLOAT16 (export.py)
FP16_WEIGHT_BITS = 16

# Per-element FLOPs of the non-matmul classes, counting the arithmetic a straightforward kernel does:
# softmax = max, sub, exp, sum, div; a norm = mean, sub, square, mean, rsqrt-mul, affine.
SOFTMAX_FLOPS_PER_ELEMENT = 5
NORM_FLOPS_PER_ELEMENT = 7


@dataclasses.dataclass(frozen=True)
class OpFeature:
    """One op: its source-specific name, its class, and the cost terms the predictors use."""
    op: str
    op_class: str
    flops: float
    act_bytes: float  # input activations read + output written
    weight_bytes: float
    out_shape: tuple[int, ...]
    # Trace fields (torch walk; the Core ML walk leaves the defaults):
    macs: float = 0.0  # multiply-accumulates of conv / matmul / attention products (fvcore's convention)
    module: str = ""  # path of the innermost module that ran the op ("" = the root's own code)
    in_ids: tuple[int, ...] = ()  # data inputs, numbered in order of first appearance in the trace
    out_id: int = -1  # the first output, same numbering
    in_bytes: tuple[float, ...] = ()  # bytes of each data input (aligned with in_ids)


@dataclasses.dataclass
class FeatureTable:
    """The per-op table of one model at one input shape, plus where it came from."""
    ops: list[OpFeature]
    source: str  # one of FEATURE_SOURCES
    note: str = ""  # e.g. why the torch fallback was used

    def totals(self) -> dict[str, float]:
        """Whole-model sums: flops, act_bytes, weight_bytes, ops, and the same per op class."""
        out: dict[str, float] = {"flops": 0.0, "act_bytes": 0.0, "weight_bytes": 0.0, "ops": 0.0}
        for c in OP_CLASSES:
            for k in ("flops", "bytes", "ops"):
                out[f"{c}.{k}"] = 0.0
        for f in self.ops:
            out["flops"] += f.flops
            out["act_bytes"] += f.act_bytes
            out["weight_bytes"] += f.weight_bytes
            out["ops"] += 1
            out[f"{f.op_class}.flops"] += f.flops
            out[f"{f.op_class}.bytes"] += f.act_bytes + f.weight_bytes
            out[f"{f.op_class}.ops"] += 1
        return out

    def by_class(self) -> list[dict]:
        """One summary row per op class that occurs: count, GFLOPs, MB moved."""
        rows = []
        counts = Counter(f.op_class for f in self.ops)
        for c in OP_CLASSES:
            if counts[c]:
                sel = [f for f in self.ops if f.op_class == c]
                rows.append({"op_class": c, "ops": counts[c], "gflops": sum(f.flops for f in sel) / 1e9,
                             "act_mb": sum(f.act_bytes for f in sel) / 1e6,
                             "weight_mb": sum(f.weight_bytes for f in sel) / 1e6})
        return rows

    def to_rows(self) -> list[dict]:
        return [dataclasses.asdict(f) for f in self.ops]


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


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# --- torch graph on the meta device ------------------------------------------------------------------------

_aten = torch.ops.aten
# Ops that only reinterpret or move data; Core ML lowers them to reshape / transpose / concat / slice ops.
_LAYOUT_OPS = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "slice",
    "select", "split", "split_with_sizes", "chunk", "cat", "stack", "clone", "contiguous", "flatten",
    "unflatten", "repeat", "repeat_interleave", "upsample_nearest2d", "_unsafe_index", "constant_pad_nd",
    "pixel_shuffle", "unbind", "alias", "detach", "_to_copy", "copy_", "lift_fresh", "expand_as", "narrow",
    "roll", "index", "as_strided", "new_empty", "empty_like", "_reshape_alias", "lift_fresh_copy",
    "upsample_bilinear2d", "_upsample_nearest_exact2d",
}
# Ops with no data inputs (factories): their outputs are constants the converter folds.
_FACTORY_OPS = {"arange", "zeros", "ones", "full", "empty", "scalar_tensor", "linspace", "zeros_like",
                "ones_like", "full_like", "randn", "rand", "tensor", "eye"}
_REDUCE_OPS = {"mean", "sum", "amax", "max", "min", "avg_pool2d", "max_pool2d", "max_pool2d_with_indices",
               "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d", "var", "var_mean",
               "std", "prod", "cumsum"}
_NORM_OPS = {"native_layer_norm", "native_group_norm", "native_batch_norm", "_native_batch_norm_legit",
             "_native_batch_norm_legit_no_training", "layer_norm", "group_norm", "batch_norm", "instance_norm",
             "rms_norm", "_fused_rms_norm"}
_SOFTMAX_OPS = {"_softmax", "softmax", "_log_softmax", "log_softmax"}
_SDPA_OPS = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "scaled_dot_product_attention",
             "_scaled_dot_product_attention_math"}
_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


def _op_name(func) -> str:
    return func.__name__.split(".")[0] if hasattr(func, "__name__") else str(func)


class _FeatureMode(TorchDispatchMode):
    """Records one OpFeature per aten op run under it; tracks which tensors are weights or constants."""

    def __init__(self, weights: Iterable[torch.Tensor], weight_bits: int):
        super().__init__()
        # Strong references keep ids unique while the walk runs (meta tensors cost no memory).
        self._keep: list[torch.Tensor] = []
        self._weight_ids: set[int] = set()
        self._const_ids: set[int] = set()
        for w in weights:
            self._mark(w, self._weight_ids)
        self.weight_bytes_per_element = weight_bits / 8
        self.ops: list[OpFeature] = []
        self.module_stack: list[str] = []  # maintained by the walk's module hooks
        self._tensor_no: dict[int, int] = {}  # id -> trace number (ids are unique while _keep holds them)

    def _number(self, t: torch.Tensor) -> int:
        key = id(t)
        if key not in self._tensor_no:
            self._keep.append(t)
            self._tensor_no[key] = len(self._tensor_no)
        return self._tensor_no[key]

    def _mark(self, t: torch.Tensor, ids: set[int]) -> None:
        self._keep.append(t)
        ids.add(id(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _op_name(func.overloadpacket) if hasattr(func, "overloadpacket") else _op_name(func)
        in_tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        out_tensors = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        weights_in = [a for a in in_tensors if id(a) in self._weight_ids]
        consts_in = [a for a in in_tensors if id(a) in self._const_ids]
        data_in = [a for a in in_tensors if id(a) not in self._weight_ids and id(a) not in self._const_ids]

        if name in _FACTORY_OPS or not data_in:
            # Folded by the converter: weights reshaped / transposed stay weights, anything else is a constant.
            target = self._weight_ids if weights_in and name in _LAYOUT_OPS else self._const_ids
            for o in out_tensors:
                self._mark(o, target)
            return out
        if not out_tensors:
            return out
        self.ops.append(self._feature(func, name, args, kwargs, out, data_in, weights_in + consts_in,
                                      out_tensors))
        return out

    def _feature(self, func, name, args, kwargs, out, data_in, const_in, out_tensors) -> OpFeature:
        out_elems = sum(o.numel() for o in out_tensors)
        act_bytes = (sum(a.numel() for a in data_in) + out_elems) * ACTIVATION_BYTES
        weight_bytes = sum(w.numel() for w in const_in) * self.weight_bytes_per_element
        flops = 0.0
        packet = getattr(func, "overloadpacket", None)
        if packet in flop_registry:
            flops = float(flop_registry[packet](*args, out_val=out, **kwargs))
        macs = flops / 2  # torch's counter: 2 FLOPs per multiply-accumulate, products only
        if name in ("convolution", "_convolution"):
            groups = int(args[8]) if len(args) > 8 else 1
            op_class = "dwconv" if groups > 1 else "conv"
        elif name in _MATMUL_OPS:
            op_class = "linear" if const_in else "attn_matmul"
        elif name in _SDPA_OPS:
            op_class = "attn_matmul"
            q, k = args[0], args[1]
            # QK^T and PV: 2 matmuls of (N x d) by (d x M), 2 FLOPs per MAC
            flops = flops or 4.0 * _numel(q.shape[:-1]) * k.shape[-2] * q.shape[-1]
            macs = flops / 2
        elif name in _SOFTMAX_OPS:
            op_class, flops = "softmax", float(SOFTMAX_FLOPS_PER_ELEMENT * out_elems)
        elif name in _NORM_OPS:
            op_class, flops = "norm", float(NORM_FLOPS_PER_ELEMENT * out_tensors[0].numel())
        elif name in _REDUCE_OPS:
            op_class, flops = "reduce", float(sum(a.numel() for a in data_in))
        elif name in _LAYOUT_OPS:
            op_class, flops = "layout", 0.0
        else:
            op_class, flops = "elementwise", float(out_elems)
        return OpFeature(name, op_class, flops, float(act_bytes), float(weight_bytes),
                         tuple(int(s) for s in out_tensors[0].shape), macs=macs,
                         module=self.module_stack[-1] if self.module_stack else "",
                         in_ids=tuple(self._number(a) for a in data_in), out_id=self._number(out_tensors[0]),
                         in_bytes=tuple(float(a.numel() * ACTIVATION_BYTES) for a in data_in))


def features_from_torch(module: nn.Module, inputs: tuple, weight_bits: int = FP16_WEIGHT_BITS,
                        note: str = "") -> FeatureTable:
    """Walk one forward pass of `module` (ideally built on the meta device) and tabulate its ops.

    `inputs` are the positional inputs (None allowed, passed through). `weight_bits` is the stored weight
    precision (16 for fp16, 6 for 6-bit palettized weights) and scales the weight bytes.
    """
    named = dict(module.named_parameters()) | dict(module.named_buffers())
    on_meta = all(t.device.type == "meta" for t in named.values())
    inputs = tuple(x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs)
    # A module with real weights runs with meta stand-ins swapped in: no arithmetic, no weight copies.
    swapped = named if on_meta else {k: torch.empty_like(v, device="meta") for k, v in named.items()}
    mode = _FeatureMode(swapped.values(), weight_bits)
    with torch.no_grad(), _module_paths(module, mode.module_stack), mode:
        if on_meta:
            module(*inputs)
        else:
            torch.func.functional_call(module, swapped, inputs, tie_weights=True, strict=False)
    return FeatureTable(mode.ops, "torch-meta", note)


@contextlib.contextmanager
def _module_paths(root: nn.Module, stack: list[str]):
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


# --- Core ML program (MIL) ---------------------------------------------------------------------------------

_MIL_LAYOUT = {"reshape", "transpose", "concat", "split", "slice_by_index", "slice_by_size", "expand_dims",
               "squeeze", "tile", "gather", "upsample_nearest_neighbor", "upsample_bilinear", "pad",
               "pixel_shuffle", "identity", "cast", "reshape_like", "stack", "resize", "gather_nd",
               "sliding_windows", "space_to_depth", "depth_to_space", "flatten2d", "crop"}
_MIL_REDUCE = {"reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2_norm",
               "avg_pool", "max_pool", "l2_pool", "reduce_sum_square", "reduce_argmax", "cumsum"}
_MIL_NORM = {"layer_norm", "batch_norm", "instance_norm", "l2_norm", "local_response_norm"}
_MIL_SKIP = {"const", "constexpr_lut_to_dense", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
             "constexpr_sparse_to_dense", "constexpr_cast"}


def _var_elems(v) -> int:
    shape = getattr(v, "shape", None) or ()
    try:
        return _numel(shape)
    except TypeError:  # symbolic dims; fixed-shape export never produces them
        return 0


def _is_const(v) -> bool:
    """Weights and folded values; the program's inputs (no producing op, no value) are activations."""
    return getattr(v, "val", None) is not None or (v.op is not None and v.op.op_type in _MIL_SKIP)


def features_from_mil(program, weight_bits: int = FP16_WEIGHT_BITS) -> FeatureTable:
    """Tabulate the ops of a Core ML program (`mlmodel._mil_program`, or a `coremltools` MIL Program)."""
    ops: list[OpFeature] = []
    for op in program.functions["main"].operations:
        t = op.op_type
        if t in _MIL_SKIP:
            continue
        ins = [v for v in op.inputs.values() if hasattr(v, "shape") or isinstance(v, (list, tuple))]
        flat = []
        for v in ins:
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        flat = [v for v in flat if getattr(v, "shape", None) is not None and len(v.shape) > 0]
        data_in = [v for v in flat if not _is_const(v)]
        const_in = [v for v in flat if _is_const(v)]
        outs = [v for v in op.outputs if getattr(v, "shape", None) is not None]
        out_elems = sum(_var_elems(v) for v in outs)
        act_bytes = (sum(_var_elems(v) for v in data_in) + out_elems) * ACTIVATION_BYTES
        weight_bytes = sum(_var_elems(v) for v in const_in) * weight_bits / 8
        if t in ("conv", "conv_transpose"):
            w = op.inputs["weight"]
            groups = int(op.inputs["groups"].val) if "groups" in op.inputs else 1
            # (Cout, Cin/groups, kh, kw): each output element is Cin/groups*kh*kw MACs
            macs = out_elems * _numel(w.shape[1:])
            flops, op_class = 2.0 * macs, ("dwconv" if groups > 1 else "conv")
        elif t in ("linear", "matmul", "einsum"):
            x = op.inputs.get("x")
            k = x.shape[-2] if t == "matmul" and op.inputs.get("transpose_x") is not None and \
                op.inputs["transpose_x"].val else x.shape[-1]
            flops = 2.0 * out_elems * int(k)
            op_class = "linear" if const_in and t != "einsum" else "attn_matmul"
            if t == "matmul" and not _is_const(op.inputs["y"]):
                op_class = "attn_matmul"
        elif t == "softmax":
            flops, op_class = float(SOFTMAX_FLOPS_PER_ELEMENT * out_elems), "softmax"
        elif t in _MIL_NORM:
            flops, op_class = float(NORM_FLOPS_PER_ELEMENT * out_elems), "norm"
        elif t in _MIL_REDUCE:
            flops, op_class = float(sum(_var_elems(v) for v in data_in)), "reduce"
        elif t in _MIL_LAYOUT:
            flops, op_class = 0.0, "layout"
        else:
            flops, op_class = float(out_elems), "elementwise"
        if not data_in and t not in ("conv", "linear"):
            continue  # constant subgraph the runtime folds
        shape = tuple(int(s) for s in outs[0].shape) if outs else ()
        ops.append(OpFeature(t, op_class, flops, float(act_bytes), float(weight_bytes), shape))
    return FeatureTable(ops, "coreml")
