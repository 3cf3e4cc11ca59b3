"""The "uib" separable block equals diffusers' ResnetBlock2DDreamLite: DreamLite's weights load and give its outputs.

SnapGen step c2, read as MobileNetV4's UIB (`sep_block="uib"`): a tiny block config, randomised weights, exact
parity; then every res block of a tiny DreamLiteUNetModel loads into the matching UNet spec.
"""
import re

import pytest
import torch

from search_space import build_model, example_inputs
from search_space.blocks import ResBlock
from search_space.diffusers_compat import (
    dreamlite_res_blocks_from_unet, resblock_state_dict_from_dreamlite, unet_key_from_diffusers,
)
from search_space.spec import StageSpec, UNetSpec

dreamlite = pytest.importorskip("diffusers.models.unets.unet_dreamlite")


def _randomise(module: torch.nn.Module) -> None:
    # diffusers' defaults leave GroupNorm at 1/0: random values make every tensor matter to the output
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)


@pytest.mark.parametrize("in_ch,out_ch", [(16, 32), (32, 32)])
def test_uib_res_block_matches_dreamlite(in_ch, out_ch):
    torch.manual_seed(0)
    ref = dreamlite.ResnetBlock2DDreamLite(in_channels=in_ch, out_channels=out_ch, temb_channels=24, groups=8,
                                           eps=1e-5, use_sep_conv=True).eval()
    _randomise(ref)
    ours = ResBlock(in_ch=in_ch, out_ch=out_ch, temb_dim=24, conv="separable", expansion=2.0, sep_block="uib",
                    groups=8, eps=1e-5).eval()
    missing, unexpected = ours.load_state_dict(resblock_state_dict_from_dreamlite(ref.state_dict()), strict=True)
    assert not missing and not unexpected
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x, temb = torch.randn(2, in_ch, 8, 8), torch.randn(2, 24)
    with torch.no_grad():
        expected, got = ref(x, temb), ours(x, temb)
    residual = x if in_ch == out_ch else ours.shortcut(x)
    assert (expected - residual).abs().max() > 1e-2  # a real signal through the convs, not just the shortcut
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The other reading has another layout: DreamLite's weights do not fit it
    per_conv = ResBlock(in_ch=in_ch, out_ch=out_ch, temb_dim=24, conv="separable", expansion=2.0,
                        sep_block="per_conv", groups=8, eps=1e-5)
    with pytest.raises(RuntimeError):
        per_conv.load_state_dict(resblock_state_dict_from_dreamlite(ref.state_dict()), strict=True)


def test_dreamlite_unet_res_blocks_load_where_the_layout_matches():
    torch.manual_seed(0)
    ref = dreamlite.DreamLiteUNetModel(
        in_channels=4, out_channels=4, block_out_channels=(16, 32, 64), layers_per_block=2, norm_num_groups=8,
        transformer_layers_per_block=1, attention_head_dim=8, cross_attention_dim=16, use_sep_conv=True,
        num_kv_heads=1, ff_mult=3,
    ).eval()
    _randomise(ref)
    spec = UNetSpec(stages=(StageSpec(16, 2, 3, 1, 1, self_attention=False), StageSpec(32, 2, 3, 1, 1, self_attention=False),
                            StageSpec(64, 2, 3, 1, 1)),
                    latent_channels=4, conv="separable", conv_expansion=2.0, sep_block="uib", ffn_ratio=3.0,
                    attention="mqa", share_kv_in_cross_attention=True, head_dim=8, text_dim=16, norm_groups=8)
    ours = build_model(spec).eval()
    weights, missing = dreamlite_res_blocks_from_unet(ref.state_dict(), ours)
    assert not missing
    assert set(weights) == {k for k in ours.state_dict() if re.search(r"\.(res|res_in|res_out)\.", k)}
    ours.load_state_dict(weights, strict=False)
    # Every res block now computes what DreamLite's block at the same place computes
    blocks = {name: m for name, m in ref.named_modules() if isinstance(m, dreamlite.ResnetBlock2DDreamLite)}
    assert len(blocks) == 6 + 2 + 9  # 2 per down stage, 2 in the mid block, 3 per up stage
    for name, block in blocks.items():
        mine = ours.get_submodule(unet_key_from_diffusers(name))
        x, temb = torch.randn(1, block.in_channels, 4, 4), torch.randn(1, spec.time_embed_dim)
        with torch.no_grad():
            torch.testing.assert_close(mine(x, temb), block(x, temb), atol=1e-5, rtol=1e-5)
    out = ours(*example_inputs(spec, latent=8, text_tokens=3))
    assert torch.isfinite(out).all()


def test_cost_walker_counts_the_uib_block_as_built():
    """Counting follows the built module: MACs of one uib block against the block's formula."""
    from evaluators.cost import count_macs_torch

    c_in, c, hw, temb = 16, 32, 8 * 8, 24
    block = ResBlock(in_ch=c_in, out_ch=c, temb_dim=temb, conv="separable", expansion=2.0, sep_block="uib", groups=8)
    hidden = 2 * c
    expected = (9 * c_in * hw + c_in * hidden * hw  # conv1: DW(C_in), PW(C_in -> 2C)
                + temb * hidden  # time embedding projected to the expanded width
                + 9 * hidden * hw + hidden * c * hw  # conv2: DW(2C), PW(2C -> C)
                + c_in * c * hw)  # 1x1 shortcut
    assert count_macs_torch(block, (torch.randn(1, c_in, 8, 8), torch.randn(1, temb))).total == expected
    assert sum(p.numel() for p in block.parameters()) == (
        2 * c_in + 9 * c_in + c_in * hidden + temb * hidden + hidden + 2 * hidden + 9 * hidden + hidden * c
        + c_in * c + c)  # norms, DW/PW without bias, time projection with bias, shortcut with bias
