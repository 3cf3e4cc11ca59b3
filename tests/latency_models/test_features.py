"""Per-op features: the meta-device torch walk, the Core ML program walk, and their agreement."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models.export import convert, model_for  # noqa: E402
from latency_models.features import OP_CLASSES, features_from_mil, features_from_torch  # noqa: E402
from latency_models.predictor import source_features  # noqa: E402
from search_space import build_model, example_inputs, load_spec  # noqa: E402
from search_space.attention import attention_backend  # noqa: E402

MAC_CLASSES = ("conv", "dwconv", "linear", "attn_matmul")


def _macs(table) -> float:
    return sum(f.flops for f in table.ops if f.op_class in MAC_CLASSES) / 2


def test_torch_walk_matches_fvcore_macs_on_tiny_unet():
    """Independent count: fvcore traces the real-weight model; our walk never runs arithmetic."""
    from evaluators.cost import count_macs_fvcore

    spec = load_spec("tiny-debug")
    meta = source_features(model_for(spec, latent=16, device="meta"))
    model = build_model(spec).eval()
    with attention_backend("math"):
        ref = count_macs_fvcore(model, example_inputs(spec, latent=16))
    assert _macs(meta) == pytest.approx(ref.total, rel=0.01)
    assert {f.op_class for f in meta.ops} <= set(OP_CLASSES)
    assert meta.source == "torch-meta"


def test_real_weights_walk_equals_meta_walk_and_leaves_module_alone():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    real = features_from_torch(model, (x,))
    meta = features_from_torch(torchvision.models.get_model("resnet18", weights=None).to("meta"), (x.to("meta"),))
    assert real.totals() == meta.totals()
    assert next(model.parameters()).device.type == "cpu"  # the walk swapped in meta stand-ins, not moved it
    # resnet18: 20 convs, 1.82 GMACs at 224 -> 64/224 squared of that at 64x64 (torchvision's documented count)
    assert sum(1 for f in real.ops if f.op_class == "conv") == 20
    assert _macs(real) == pytest.approx(1.814e9 * (64 / 224) ** 2, rel=0.02)


def test_weight_bits_scale_weight_bytes_only():
    m = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).to("meta")
    x = torch.randn(4, 64, device="meta")
    t16, t6 = features_from_torch(m, (x,)).totals(), features_from_torch(m, (x,), weight_bits=6).totals()
    assert t6["weight_bytes"] == pytest.approx(t16["weight_bytes"] * 6 / 16)
    assert t6["act_bytes"] == t16["act_bytes"] and t6["flops"] == t16["flops"]
    assert t16["weight_bytes"] == pytest.approx((64 * 64 + 64 + 64 * 8 + 8) * 2)


class _TableUser(nn.Module):
    """Builds a table from arange at run time: the converter folds it, so it must cost nothing."""

    def forward(self, x):
        table = torch.arange(x.shape[-1], dtype=torch.float32, device=x.device).cos() * 2
        return x + table


def test_constant_subgraphs_are_folded():
    ops = features_from_torch(_TableUser(), (torch.randn(2, 8, device="meta"),)).ops
    assert [f.op for f in ops] == ["add"]


def test_coreml_program_features_agree_with_torch_on_convs():
    spec = load_spec("tiny-debug-decoder")
    mil = features_from_mil(convert(model_for(spec, latent=8))._mil_program)
    torch_walk = source_features(model_for(spec, latent=8, device="meta"))
    assert mil.source == "coreml"
    conv_mil = sum(f.flops for f in mil.ops if f.op_class in ("conv", "dwconv"))
    conv_torch = sum(f.flops for f in torch_walk.ops if f.op_class in ("conv", "dwconv"))
    assert conv_mil == pytest.approx(conv_torch, rel=1e-6)
    assert sum(f.weight_bytes for f in mil.ops if f.op_class == "conv") > 0


@pytest.mark.parametrize("name, latent", [("tiny-debug", 16), ("tiny-debug-decoder", 8)])
def test_walk_layout_accounting_agrees_with_the_converted_program(name, latent):
    """What the Neural Engine receives: layout ops and their traffic within 1.2x of the converted program
    (the walk drops torch's decomposition artifacts and adds Core ML's group-norm reshapes)."""
    mil = features_from_mil(convert(model_for(name, latent=latent))._mil_program)
    walk = features_from_torch(*_meta(name, latent))
    for what in ("ops", "bytes"):
        got, want = (sum(1 if what == "ops" else f.act_bytes for f in t.ops if f.op_class == "layout")
                     for t in (walk, mil))
        assert 1 / 1.2 <= got / want <= 1.2, (what, got, want)


def _meta(name, latent):
    src = model_for(name, latent=latent, device="meta")
    return src.module, src.inputs


def _op(op, op_class, in_ids, out_id, shape=(2, 4)):
    from latency_models.features import OpFeature
    return OpFeature(op, op_class, 0.0, 16.0, 0.0, shape, in_ids=in_ids, out_id=out_id, in_bytes=(8.0,) * len(in_ids))


def test_decomposition_artifacts_are_dropped_and_the_graph_stays_connected():
    from latency_models.features import _drop_decomposition_artifacts

    ops = [_op("view", "layout", (0,), 1),  # flattens x for mm: an artifact
           _op("mm", "linear", (1,), 2),
           _op("_unsafe_view", "layout", (2,), 3),  # unflattens the result: an artifact
           _op("view", "layout", (3,), 4),  # the model's own split into heads: kept
           _op("unsqueeze", "layout", (4,), 5),  # merged into the view it alone reads
           _op("add", "elementwise", (5, 0), 6)]
    kept = _drop_decomposition_artifacts(ops)
    assert [o.op for o in kept] == ["mm", "view", "add"]
    mm, view, add = kept
    assert mm.in_ids == (0,) and view.in_ids == (2,) and add.in_ids == (4, 0)
    # a reshape whose input is read elsewhere too is not merged (the program needs both shapes)
    ops[5] = _op("add", "elementwise", (5, 4), 6)
    assert [o.op for o in _drop_decomposition_artifacts(ops)] == ["mm", "view", "unsqueeze", "add"]
