"""Cost evaluator: parameters, MACs and peak activation memory of any spec at any latent size.

Everything is counted on the meta device by default: the model is built without weights and one forward
pass is walked op by op, so the full SDXL UNet at a 128x128 latent costs about a second and no memory. The
walk is the latency evaluator's (`traced_costs`: one op trace per spec and latent, cached in memory and on
disk with the code fingerprint), so a study trial walks its candidate once for both evaluators.
- Parameters: total, per stage and per block kind, from the module tree.
- MACs: one multiply-accumulate per conv/linear/matmul/attention product, the convention of fvcore and of
  the paper's tables (docs/paper.md section 1: "38 GFLOPs" for SnapGen is 38 G multiply-accumulates). Two engines:
  "torch" is a view of the project's one op trace, which the latency models also use (search_space/trace.py:
  aten ops with torch.utils.flop_counter's formulas, on meta tensors); "fvcore" traces with
  fvcore's FlopCountAnalysis plus our handler for scaled_dot_product_attention (fvcore has none) and
  needs real weights, so it is for small models and for cross-checking. Norms, activations and
  element-wise ops are not counted by either.
- Peak activation memory: bytes of live intermediate tensors during one inference forward pass, tracked
  by a dispatch mode that adds each new tensor's size and subtracts it when the tensor is freed
  (search_space/memory.py, which also refuses work that cannot fit in memory).

`evaluate(spec, latent=128) -> dict of floats` counts one spec; studies run the cost evaluator
(evaluators/plugins/cost.py), which stores `stage_costs` on each trial.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict

import torch
from torch import nn

from search_space import DecoderSpec, Spec, UNetSpec, build_model, example_inputs
from search_space.attention import attention_backend
from search_space.memory import peak_activation_bytes, peak_live_bytes  # noqa: F401 (tests and callers use both)
from search_space.trace import block_kind, stage_of as trace_stage_of, trace_forward

DEFAULT_LATENT = 128  # docs/paper.md section 1: FLOPs reported at a 128x128 latent (1024 px) unless stated otherwise

BLOCK_KINDS = ("res", "self_attn", "cross_attn", "ffn", "transformer_io", "resample", "embed", "stem_head")


# --- parameters -----------------------------------------------------------------------------------------

def stage_of(name: str, spec: Spec) -> str:
    """Map a module path to its stage label: 'stage1'..'stageN', 'mid', 'stem' (in/out convs, embeddings)."""
    return trace_stage_of(name, len(spec.stages) if isinstance(spec, UNetSpec) else len(spec.channels))


def count_params(model: nn.Module, spec: Spec) -> dict:
    return group_params({name: p.numel() for name, p in model.named_parameters()}, spec)


def group_params(numel: dict[str, int], spec: Spec) -> dict:
    """Total, per-stage and per-block-kind parameter counts from the count of each named parameter."""
    per_stage: dict[str, int] = defaultdict(int)
    per_kind: dict[str, int] = defaultdict(int)
    for name, n in numel.items():
        per_stage[stage_of(name, spec)] += n
        per_kind[block_kind(name)] += n
    return {"total": sum(numel.values()), "per_stage": dict(per_stage), "per_kind": dict(per_kind)}


# --- MACs ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MacReport:
    total: int
    per_module: dict[str, int]  # module path (without the root class) -> MACs, leaves and containers
    per_op: dict[str, int]  # aten op name -> MACs

    def under(self, prefix: str) -> int:
        """MACs of the module at `prefix` and everything below it.

        Containers that are never called (a ModuleList iterated by its parent) have no entry of their own,
        so sum the outermost entries below the prefix.
        """
        if prefix in self.per_module:
            return self.per_module[prefix]
        keys = [k for k in self.per_module if k.startswith(prefix + ".")]
        outermost = [k for k in keys if not any(k.startswith(o + ".") for o in keys if o != k)]
        return sum(self.per_module[k] for k in outermost)


def count_macs_torch(model: nn.Module, inputs: tuple) -> MacReport:
    """MACs as a view of the project's one op trace (search_space.trace.trace_forward), so the
    cost evaluator, the latency features and the latency breakdown all count the same walk; meta device.

    Attention runs through the explicit-matmul backend so that its products are counted the same on every
    device (the fused CPU/CUDA kernels have no flop formula in torch's counter). Each op's MACs go to the
    module that ran it and to every module above it, as torch's FlopCounterMode attributes them.
    """
    with attention_backend("math"):
        ops = trace_forward(model, inputs)
    return mac_report([op.macs for op in ops], [op.op for op in ops], [op.module for op in ops])


def mac_report(macs: list[float], ops: list[str], modules: list[str]) -> MacReport:
    """The MAC view of an op trace, given per op its MACs, aten op name and module path."""
    per_module: dict[str, int] = defaultdict(int)
    per_op: dict[str, int] = defaultdict(int)
    for m, op, module in zip(macs, ops, modules):
        if not m:
            continue
        m = int(m)
        per_op[op] += m
        per_module[""] += m
        parts = module.split(".") if module else []
        for i in range(1, len(parts) + 1):
            per_module[".".join(parts[:i])] += m
    return MacReport(total=sum(per_op.values()), per_module=dict(per_module), per_op=dict(per_op))


def traced_costs(spec: Spec, latent: int) -> tuple[dict, MacReport]:
    """(grouped params, MACs) of the full-size model as views of its one op trace: the walk the latency
    evaluator predicts from (latency_models.api.model_features: batch 1, the math attention backend, fp16
    weights), cached in memory and on disk by spec_id, latent and the code fingerprint, so a trial walks and
    builds its model once, and a spec seen before not at all."""
    from latency_models.api import model_features

    feats = model_features(spec, None, latent=latent, batch=1)[0]
    ops = feats.ops
    return group_params(feats.params, spec), mac_report(ops["macs"], ops["op"], ops["module"])


def _sdpa_handle(inputs, outputs) -> int:
    """fvcore handler for aten::scaled_dot_product_attention: QK^T and AV, B*H*N*M*d MACs each."""
    from fvcore.nn.jit_handles import get_shape
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    *batch, n, d = q
    m = k[-2]
    return 2 * math.prod(batch) * n * m * d


def _zero_handle(inputs, outputs) -> int:
    return 0


def count_macs_fvcore(model: nn.Module, inputs: tuple) -> MacReport:
    """fvcore's FlopCountAnalysis (one MAC per 'flop') restricted to conv / matmul / attention.

    Needs real tensors (fvcore traces with torch.jit, which meta tensors break), so use it on small models.
    """
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(model.eval(), tuple(inputs))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle)
    # Same convention as the torch engine: norms and resampling are not multiply-accumulates of weights.
    for op in ("aten::group_norm", "aten::layer_norm", "aten::batch_norm", "aten::upsample_nearest2d",
               "aten::instance_norm", "aten::upsample_bilinear2d", "aten::adaptive_avg_pool2d"):
        analysis.set_op_handle(op, _zero_handle)  # a None handle does not override fvcore's defaults
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        per_module = {k: int(v) for k, v in analysis.by_module().items()}
        per_op = {k: int(v) for k, v in analysis.by_operator().items() if v}
    return MacReport(total=int(analysis.total()), per_module=per_module, per_op=per_op)


# --- per-stage table ----------------------------------------------------------------------------------

def stage_table(spec: Spec, params: dict, macs: MacReport, latent: int, text_tokens: int = 77) -> list[dict]:
    rows = []
    if isinstance(spec, UNetSpec):
        n = len(spec.stages)
        for i, st in enumerate(spec.stages):
            res = latent // 2 ** i
            attn = []
            if st.has_transformer:
                attn = [a for a, on in (("SA", st.self_attention), ("CA", st.cross_attention)) if on]
            rows.append({
                "stage": f"stage{i + 1}", "channels": st.channels, "layers": f"{st.down_layers}/{st.up_layers}",
                "transformer": f"{st.down_transformer_depth}/{st.up_transformer_depth}",
                "res_block": st.res_block, "attention": "+".join(attn) or "-", "resolution": res,
                "tokens": res * res if attn else 0,
                "params": params["per_stage"].get(f"stage{i + 1}", 0),
                "macs": macs.under(f"down.{i}") + macs.under(f"up.{n - 1 - i}"),
            })
        if spec.mid_block:
            res = latent // 2 ** (n - 1)
            st = spec.stages[-1]
            attn = [a for a, on in (("SA", st.self_attention), ("CA", st.cross_attention)) if on] \
                if spec.mid_transformer_depth else []
            rows.append({"stage": "mid", "channels": st.channels, "layers": "1", "transformer":
                         str(spec.mid_transformer_depth), "res_block": True, "attention": "+".join(attn) or "-",
                         "resolution": res, "tokens": res * res if attn else 0,
                         "params": params["per_stage"].get("mid", 0), "macs": macs.under("mid")})
    else:
        n = len(spec.channels)
        for i, c in enumerate(spec.channels):
            res = latent * 2 ** (n - 1 - i)  # stage 1 is the output side
            rows.append({"stage": f"stage{i + 1}", "channels": c, "layers": str(spec.res_blocks[i]),
                         "transformer": "-", "res_block": True, "attention": "-", "resolution": res, "tokens": 0,
                         "norm": spec.norm_stages[i], "params": params["per_stage"].get(f"stage{i + 1}", 0),
                         "macs": macs.under(f"up.{n - 1 - i}")})
        if spec.mid_res_blocks:
            rows.append({"stage": "mid", "channels": spec.channels[-1], "layers": str(spec.mid_res_blocks),
                         "transformer": "-", "res_block": True, "attention": "SA" if spec.mid_attention else "-",
                         "resolution": latent, "tokens": latent * latent if spec.mid_attention else 0,
                         "norm": spec.norm_mid, "params": params["per_stage"].get("mid", 0),
                         "macs": macs.under("mid")})
    rows.append({"stage": "stem", "channels": None, "layers": "", "transformer": "", "res_block": None,
                 "attention": "", "resolution": latent, "tokens": 0, "params": params["per_stage"].get("stem", 0),
                 "macs": macs.total - sum(r["macs"] for r in rows)})
    return rows


def describe_cost(spec: Spec, latent: int = DEFAULT_LATENT, memory: bool = True) -> dict:
    """Everything `pocketdiff describe` prints: totals, per-stage rows, per-kind params, per-op MACs (views of
    the cached op trace, `traced_costs`), and with `memory` the peak activation memory of one forward."""
    params, macs = traced_costs(spec, latent)
    # attention products: the sdpa kernels, or the bmm they decompose into (no other layer here uses bmm)
    attention_macs = sum(v for k, v in macs.per_op.items() if k == "bmm" or "attention" in k)
    out = {
        "params": params["total"],
        "macs": macs.total,
        "gmacs": macs.total / 1e9,
        "gmacs_no_attention": (macs.total - attention_macs) / 1e9,
        "latent": latent,
        "params_per_stage": params["per_stage"],
        "params_per_kind": params["per_kind"],
        "macs_per_op": macs.per_op,
        "stages": stage_table(spec, params, macs, latent),
    }
    if memory:
        out["peak_activation_bytes"] = peak_activation_bytes(build_model(spec, "meta"),
                                                             example_inputs(spec, latent, device="meta"))
    return out


def evaluate(spec: Spec, latent: int = DEFAULT_LATENT, seed: int = 0) -> dict[str, float]:
    """Flat dict of floats with the peak activation memory (seed unused: counting is deterministic)."""
    d = describe_cost(spec, latent)
    return {"params_m": d["params"] / 1e6, "gmacs": d["gmacs"], "gmacs_no_attention": d["gmacs_no_attention"],
            "peak_activation_mb": d["peak_activation_bytes"] / 2 ** 20}


def stage_costs(spec: Spec, latent: int) -> dict:
    """The per-stage table and per-kind params / per-op MACs of the full-size model (meta device: no weights);
    stored on each study trial, so the explorer reads it back instead of building the model."""
    d = describe_cost(spec, latent, memory=False)
    return {"stages": d["stages"], "params_per_kind": d["params_per_kind"], "macs_per_op": d["macs_per_op"],
            "params": d["params"], "gmacs": d["gmacs"], "gmacs_no_attention": d["gmacs_no_attention"]}
