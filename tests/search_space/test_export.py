"""Both readings of the separable block (`sep_block`) convert to Core ML through latency_models' export."""
import pytest
import torch

from search_space import PRESETS, UNetSpec, StageSpec

export = pytest.importorskip("latency_models.export")
pytest.importorskip("coremltools")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))


# The per_conv reading's export is tested on tiny-debug in tests/latency_models/test_export.py. Converting is the
# slow part and grows with the op count, so the UNet here is one stage of uib res blocks and a mid block.
RES_ONLY_UNET = UNetSpec(stages=(StageSpec(16, 1, 2, 0, 0),), latent_channels=4, mid_transformer_depth=0,
                         conv="separable", conv_expansion=2.0, sep_block="uib", text_dim=8, norm_groups=8)


@pytest.mark.parametrize("spec", [RES_ONLY_UNET, PRESETS["tiny-debug-decoder"].replace(sep_block="uib")],
                         ids=["unet", "decoder"])
def test_uib_reading_exports_with_one_conv_op_per_conv_layer(spec):
    src = export.model_for(spec, latent=8)
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in src.module.modules())
    res = export.export_coreml(src, "iOS17")
    assert res.model_id == spec.spec_id != spec.replace(sep_block="per_conv").spec_id
    ops = export.load_program(res.path).functions["main"].operations
    # Each Conv2d of the uib blocks (no bias, DW and PW at the expanded width) is one conv op in the program
    assert sum(op.op_type == "conv" for op in ops) == n_convs
