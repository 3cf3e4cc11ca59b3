"""Large-model calibration rows: copied with sources, split by protocol, rebuilt on the meta device."""
from __future__ import annotations

import csv
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models.archs import arch_source  # noqa: E402
from latency_models.measurements import LARGE_MODELS_CSV, load_large_models, load_published  # noqa: E402
from latency_models.predictor import source_features  # noqa: E402


def test_large_rows_keep_sources_and_protocols_apart():
    rows = load_large_models()
    assert len(rows) == 74
    with LARGE_MODELS_CSV.open() as f:
        raw = list(csv.DictReader(f))
    assert all(r["source_url"].startswith("https://") and r["source_table"] for r in raw)
    fit = [m for m in rows if m.in_fit]
    # End-to-end pipelines and GPU rows are never pooled with per-inference Neural Engine rows.
    assert not any(m.protocol.startswith(("gpu:", "end-to-end:")) for m in fit)
    assert sum(m.protocol.startswith("gpu:") for m in rows) == sum("APPLE GPU ROW" in r["variant_note"] for r in raw)
    assert all(m.protocol.startswith("end-to-end:") for m, r in zip(rows, raw)
               if "END-TO-END" in r["variant_note"] and "APPLE GPU ROW" not in r["variant_note"])
    families = {m.family for m in fit}
    assert {"sd-unet", "segment-anything", "depth-anything", "distilbert", "conv-microbench"} <= families
    assert {m.chip for m in fit} >= {"a17pro", "m1", "m4", "m4pro", "m1max"}
    assert len(load_published()) == 51 + len(fit)


def test_microbenchmark_rebuild_matches_the_published_operation_count():
    # freedomtan: "total 2*B*H*W*Ci*Co*K*K*L = 3.87e11 ops" for 20 x conv3x3 128->128 at 256x256
    src = arch_source("microbench:conv3x3-c128-l20", (1, 128, 256, 256))
    table = source_features(src)
    assert 2 * sum(op.macs for op in table.ops) == pytest.approx(3.87e11, rel=0.01)
    assert next(src.module.parameters()).device.type == "meta"


def test_distilbert_rebuilds_on_meta_from_the_written_out_config():
    src = arch_source("transformers:distilbert", (1, 128))
    params = sum(p.numel() for p in src.module.parameters())
    assert params == pytest.approx(66.96e6, rel=0.01)  # distilbert-base + a 2-label head
    table = source_features(src)
    assert any(op.op_class == "attn_matmul" for op in table.ops)
    assert all(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in src.inputs)
