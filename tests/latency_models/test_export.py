"""Core ML export on tiny presets: conversion, the cache key, targets, library models and bad input."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models import export  # noqa: E402
from latency_models.export import ExportError, export_coreml, model_for, parse_arch  # noqa: E402
from latency_models.measurements import parse_shape  # noqa: E402
from pocketdiff.cli import main  # noqa: E402
from search_space import SpecError  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))


def test_tiny_unet_with_rope_exports_and_is_cached(tmp_path):
    src = model_for("tiny-debug", latent=16)
    first = export_coreml(src, "iOS17", out=tmp_path / "t.mlpackage")
    assert not first.cached and (tmp_path / "t.mlpackage" / "Manifest.json").exists()
    assert first.model_id == src.spec.spec_id and first.shape.startswith("1x4x16x16")
    again = export_coreml(model_for("tiny-debug", latent=16), "iOS17")
    assert again.cached and again.path == export.cache_path(src.model_id, first.shape, "iOS17")
    # Another shape is another cache entry
    assert export.shape_key(model_for("tiny-debug", latent=32)) != first.shape


def test_ios18_target_and_decoder_program_is_fp16(tmp_path):
    import coremltools as ct

    res = export_coreml(model_for("tiny-debug-decoder", latent=8), "iOS18", out=tmp_path / "d.mlpackage")
    spec = ct.models.MLModel(str(res.path), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 9  # iOS18 / macOS15 programs are specification version 9
    from coremltools.converters.mil.mil import types

    program = export.load_program(res.path)
    convs = [op for op in program.functions["main"].operations if op.op_type == "conv"]
    assert convs and {types.builtin_to_string(op.outputs[0].dtype) for op in convs} == {"fp16"}


def test_timm_model_is_reparameterized_before_export():
    src = model_for(timm="mobileone_s0", input_shape=(1, 3, 64, 64), device="meta")
    names = [n for n, _ in src.module.named_modules()]
    assert any(n.endswith("reparam_conv") for n in names)
    assert not any("conv_kxk" in n for n in names)  # the training-time branches are fused away
    assert src.arch == "timm:mobileone_s0"


class _Unconvertible(nn.Module):
    """Singular values: coremltools has no conversion for linalg_svd."""

    def forward(self, x):
        return torch.linalg.svd(x)[1]


def test_unconvertible_module_raises_export_error():
    src = model_for(module=_Unconvertible(), input_shape=(1, 8, 8))
    with pytest.raises(ExportError, match="Core ML conversion of _Unconvertible failed"):
        export_coreml(src)


def test_parse_arch_and_shape():
    assert parse_arch("mobilenet_v2(width_mult=1.4)") == ("mobilenet_v2", {"width_mult": 1.4})
    assert parse_arch("mobileone_s0 (reparameterized)") == ("mobileone_s0", {})
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(SpecError, match="like 1x3x224x224"):
        parse_shape("1x3xbig")
    with pytest.raises(SpecError, match="timm has no model"):
        model_for(timm="not_a_model", input_shape=(1, 3, 8, 8))
    with pytest.raises(SpecError, match="target"):
        export.convert(model_for("tiny-debug-decoder", latent=8), target="iOS12")


@pytest.mark.parametrize("heads, kv_heads, tokens", [(4, 4, 64), (4, 1, 64), (2, 2, 1100)])
def test_split_einsum_attention_agrees_with_math_and_sdpa(heads, kv_heads, tokens):
    from search_space.attention import Attention, attention_backend

    torch.manual_seed(0)
    m = Attention(32, None, heads, kv_heads, 8).eval()
    x = torch.randn(2, tokens, 32)
    with torch.no_grad():
        outs = {}
        for form in ("sdpa", "math", "split_einsum"):
            with attention_backend(form):
                outs[form] = m(x)
    assert torch.allclose(outs["split_einsum"], outs["math"], atol=1e-5)
    assert torch.allclose(outs["split_einsum"], outs["sdpa"], atol=1e-5)


def test_tiny_unet_converts_in_both_attention_forms(tmp_path, capsys):
    pytest.importorskip("coremltools")
    from search_space.attention import attention_backend

    src = model_for("tiny-debug", latent=16)
    with torch.no_grad():
        with attention_backend("math"):
            ref = src.module(*src.inputs)
        with attention_backend("split_einsum"):
            got = src.module(*src.inputs)
    assert torch.allclose(ref, got, atol=1e-4)  # the same function, so a Mac runs the same model either way
    programs = {}
    for form in ("math", "split_einsum"):
        mlmodel = export.convert(model_for("tiny-debug", latent=16), "iOS17", attention=form)
        programs[form] = [op.op_type for op in mlmodel._mil_program.functions["main"].operations]
    # per head: more, smaller score matmuls (einsum lowers to matmul) and softmaxes, no tiling of K/V
    assert programs["split_einsum"].count("softmax") > programs["math"].count("softmax")
    assert "tile" not in programs["split_einsum"]
    assert main(["export", "coreml", "tiny-debug", "--latent", "16", "--attention", "split_einsum", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["attention"] == "split_einsum" and "split_einsum" in out["path"]
    with pytest.raises(SpecError, match="unknown attention form 'flash'"):
        export.convert(model_for("tiny-debug", latent=16), "iOS17", attention="flash")
