"""Per-op feature tables for the latency models: one row per op with its class, FLOPs, activation bytes and
weight bytes.

Two sources give the same table, so the predictor (predictor.py) fits and predicts on either:
- `features_from_torch`: the project's one op trace (search_space/trace.py: a meta-device walk of one forward
  pass, no weights allocated, no arithmetic), each op classified here and priced at fp16 activations and the
  stored weight precision. It keeps the trace's module path and tensor numbering, so the roofline (roofline.py)
  can fuse ops as the Neural Engine compiler does and the breakdown (explain.py) can group them by stage. It
  is the fallback when Core ML cannot convert a model, and the primary source for prediction (see predictor.py).
- `features_from_mil`: the ops of a converted Core ML program (what the Neural Engine actually runs).

Both mimic what the Core ML converter keeps: ops on constants only (RoPE tables, weight transposes) are folded
and cost nothing; shape-only ops (views) are counted as `layout` ops because the ANE runs Core ML's reshape /
transpose as real ops.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING

from search_space.trace import CONV_OPS, LAYOUT_OPS, SDPA_OPS, TracedOp, numel, trace_forward

if TYPE_CHECKING:
    from torch import nn

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
    # Query heads folded into the rows of one K/V head (MQA / GQA in the math form, attention._attend_folded):
    # the op's (B, Hkv, G*N, M) rows are G heads' independent rows, which the engine runs as G slices as it
    # runs the (B, H, N, M) scores of MHSA as H. 1 for every other op.
    head_group: int = 1


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


# --- the torch trace, classified ---------------------------------------------------------------------------

# Op classes of the trace's aten ops (search_space/trace.py); anything else is element-wise.
_REDUCE_OPS = {"mean", "sum", "amax", "max", "min", "avg_pool2d", "max_pool2d", "max_pool2d_with_indices",
               "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool2d", "var", "var_mean",
               "std", "prod", "cumsum"}
_NORM_OPS = {"native_layer_norm", "native_group_norm", "native_batch_norm", "_native_batch_norm_legit",
             "_native_batch_norm_legit_no_training", "layer_norm", "group_norm", "batch_norm", "instance_norm",
             "rms_norm", "_fused_rms_norm"}
_SOFTMAX_OPS = {"_softmax", "softmax", "_log_softmax", "log_softmax"}
_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}


def op_feature(op: TracedOp, weight_bits: int = FP16_WEIGHT_BITS) -> OpFeature:
    """One traced op as a latency feature: its class, FLOPs, and bytes at fp16 activations and `weight_bits`
    weights. Matmul-class FLOPs are 2 per multiply-accumulate of the trace; the rest count their elements."""
    flops = 2 * op.macs
    if op.op in CONV_OPS:
        op_class = "dwconv" if op.groups > 1 else "conv"
    elif op.op in _MATMUL_OPS:
        op_class = "linear" if op.const_elems else "attn_matmul"
    elif op.op in SDPA_OPS:
        op_class = "attn_matmul"
    elif op.op in _SOFTMAX_OPS:
        op_class, flops = "softmax", float(SOFTMAX_FLOPS_PER_ELEMENT * op.out_elems)
    elif op.op in _NORM_OPS:
        op_class, flops = "norm", float(NORM_FLOPS_PER_ELEMENT * numel(op.out_shape))
    elif op.op in _REDUCE_OPS:
        op_class, flops = "reduce", float(sum(op.in_elems))
    elif op.op in LAYOUT_OPS:
        op_class, flops = "layout", 0.0
    else:
        op_class, flops = "elementwise", float(op.out_elems)
    return OpFeature(op.op, op_class, flops, float((sum(op.in_elems) + op.out_elems) * ACTIVATION_BYTES),
                     float(sum(op.const_elems) * (weight_bits / 8)), op.out_shape, macs=op.macs, module=op.module,
                     in_ids=op.in_ids, out_id=op.out_id,
                     in_bytes=tuple(float(n * ACTIVATION_BYTES) for n in op.in_elems))


def features_from_torch(module: nn.Module, inputs: tuple, weight_bits: int = FP16_WEIGHT_BITS,
                        note: str = "") -> FeatureTable:
    """The feature table of one forward pass of `module` (ideally built on the meta device): the project's one
    op trace (search_space/trace.py), each op classified and priced.

    `inputs` are the positional inputs (None allowed, passed through). `weight_bits` is the stored weight
    precision (16 for fp16, 6 for 6-bit palettized weights) and scales the weight bytes.
    """
    ops = _fold_head_groups([op_feature(op, weight_bits) for op in trace_forward(module, inputs)], module)
    return FeatureTable(_group_norm_reshapes(_drop_decomposition_artifacts(ops)), "torch-meta", note)


def _fold_head_groups(ops: list[OpFeature], module: nn.Module) -> list[OpFeature]:
    """Mark the attention products and softmaxes of shared-K/V attention in the folded form with the query heads
    per K/V head (OpFeature.head_group). An attention module is one with `heads` and `kv_heads` (the project's
    search_space.attention.Attention); its folded ops are the 4-d ones whose second dimension is kv_heads < heads
    (the per-head split form has 3-d ops, MHSA's second dimension is `heads`)."""
    kv_heads = {path: (mod.kv_heads, mod.heads // mod.kv_heads) for path, mod in module.named_modules()
                if isinstance(getattr(mod, "heads", None), int) and isinstance(getattr(mod, "kv_heads", None), int)
                and 0 < mod.kv_heads < mod.heads}
    if not kv_heads:
        return ops
    out = []
    for f in ops:
        kv, g = kv_heads.get(f.module, (0, 1))
        if g > 1 and f.op_class in ("attn_matmul", "softmax") and len(f.out_shape) == 4 and f.out_shape[1] == kv:
            f = dataclasses.replace(f, head_group=g)
        out.append(f)
    return out


# Ops of torch's decompositions that the Core ML converter never emits: it converts `matmul`, `linear` and
# broadcasting from the TorchScript graph, where the walk sees aten's expand + view + bmm + _unsafe_view, and
# `contiguous` copies have no counterpart.
_ARTIFACT_OPS = {"expand", "expand_as", "clone", "contiguous", "_unsafe_view", "_reshape_alias"}
_MATMUL_CORE = {"mm", "addmm", "bmm", "baddbmm"}


_GROUP_NORM_OPS = {"native_group_norm", "group_norm"}


def _group_norm_reshapes(ops: list[OpFeature]) -> list[OpFeature]:
    """Core ML lowers a group norm into reshape (to groups) + reductions + reshape back; the walk sees one op.
    Add the two reshapes as layout ops around it (their reductions stay priced inside the norm), with fresh
    tensor ids so the graph stays connected and fusion treats them as the free views they are."""
    next_id = max((op.out_id for op in ops), default=0) + 1
    renamed: dict[int, int] = {}
    out = []
    for op in ops:
        if any(i in renamed for i in op.in_ids):
            op = dataclasses.replace(op, in_ids=tuple(renamed.get(i, i) for i in op.in_ids))
        if op.op not in _GROUP_NORM_OPS or not op.in_ids:
            out.append(op)
            continue
        size = op.in_bytes[0] if op.in_bytes else op.act_bytes / 2
        grouped, back = next_id, next_id + 1
        next_id += 2
        out.append(OpFeature("reshape", "layout", 0.0, 2 * size, 0.0, op.out_shape, module=op.module,
                             in_ids=op.in_ids[:1], out_id=grouped, in_bytes=(size,)))
        out.append(dataclasses.replace(op, in_ids=(grouped,) + op.in_ids[1:]))
        out.append(OpFeature("reshape", "layout", 0.0, 2 * size, 0.0, op.out_shape, module=op.module,
                             in_ids=(op.out_id,), out_id=back, in_bytes=(size,)))
        renamed[op.out_id] = back
    return out


_RESHAPE_LIKE = {"view", "reshape", "unsqueeze", "squeeze", "flatten", "unflatten"}


def _drop_decomposition_artifacts(ops: list[OpFeature]) -> list[OpFeature]:
    """The walk as the converted program has it, by the converter's own rules, applied until nothing changes:
    - drop the layout ops a decomposition adds (_ARTIFACT_OPS; a `view` that only flattens an operand for a
      2D/3D matmul core or unflattens its result);
    - merge a reshape-like op into the reshape-like op it alone reads (merge_consecutive_reshapes).
    A dropped op's consumers read the tensor it came from, so fusion (roofline.py) sees a connected graph.
    The first two rules read the graph as traced (a view that becomes adjacent to a matmul only because an
    artifact was dropped is the model's own reshape, which the program keeps)."""
    first = True
    while True:
        producer = {op.out_id: op for op in ops}
        consumers: dict[int, list[OpFeature]] = {}
        for op in ops:
            for i in op.in_ids:
                consumers.setdefault(i, []).append(op)

        def feeds_only_matmul(op: OpFeature) -> bool:
            users = consumers.get(op.out_id, [])
            return bool(users) and all(u.op in _MATMUL_CORE for u in users)

        def artifact(op: OpFeature) -> bool:
            if op.op_class != "layout" or len(op.in_ids) != 1:
                return False
            src = producer.get(op.in_ids[0])
            if first and op.op in _ARTIFACT_OPS:
                return True
            if first and op.op == "view" and ((src is not None and src.op in _MATMUL_CORE)
                                              or feeds_only_matmul(op)):
                return True
            return (not first and op.op in _RESHAPE_LIKE and src is not None and src.op in _RESHAPE_LIKE
                    and len(consumers.get(src.out_id, [])) == 1)

        alias: dict[int, int] = {}
        kept = []
        for op in ops:
            if artifact(op):
                alias[op.out_id] = alias.get(op.in_ids[0], op.in_ids[0])  # a chain resolves to its start
                continue
            if any(i in alias for i in op.in_ids):
                op = dataclasses.replace(op, in_ids=tuple(alias.get(i, i) for i in op.in_ids))
            kept.append(op)
        if len(kept) == len(ops) and not first:
            return kept
        ops, first = kept, False


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
        return numel(shape)
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
            macs = out_elems * numel(w.shape[1:])
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
