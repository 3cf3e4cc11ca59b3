"""Exact parity with diffusers: same parameter counts and, with diffusers' weights loaded, same outputs."""
import pytest
import torch

from search_space import PRESETS, build_model
from search_space.errors import SpecError
from search_space.diffusers_compat import (
    decoder_spec_from_diffusers, decoder_state_dict_from_diffusers, diffusers_decoder_config, diffusers_unet_config,
    unet_spec_from_diffusers, unet_state_dict_from_diffusers,
)

diffusers = pytest.importorskip("diffusers")

# SDXL-shaped but tiny: DownBlock2D then two CrossAttn blocks, linear projections, text_time embedding.
TINY_SDXL = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64, 128], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 3], attention_head_dim=[2, 4, 8], cross_attention_dim=48,
    use_linear_projection=True, norm_num_groups=8, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=24 + 6 * 256,
)
SDXL_BASE = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD3_VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
               latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
SDXL_VAE = dict(SD3_VAE, latent_channels=4, use_quant_conv=True, use_post_quant_conv=True)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_sdxl_unet_param_count_matches_diffusers_on_meta():
    with torch.device("meta"):
        ref = diffusers.UNet2DConditionModel(**SDXL_BASE)
    ours = build_model(PRESETS["sdxl-unet"], "meta")
    assert _n_params(ref) == _n_params(ours) == 2_567_463_684
    assert unet_spec_from_diffusers(ref.config) == PRESETS["sdxl-unet"]


@pytest.mark.parametrize("preset,config", [("sd3-decoder", SD3_VAE), ("sdxl-decoder", SDXL_VAE)])
def test_decoder_param_count_matches_diffusers(preset, config):
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL(**config)
    ref_decoder = _n_params(ref.decoder) + (_n_params(ref.post_quant_conv) if ref.post_quant_conv else 0)
    ours = build_model(PRESETS[preset], "meta")
    assert _n_params(ours) == ref_decoder
    assert decoder_spec_from_diffusers(ref.config) == PRESETS[preset]
    # and the other way: the preset's own AutoencoderKL config builds the same decoder
    written = diffusers_decoder_config(PRESETS[preset])
    assert {k: written[k] for k in config} == config


def test_tiny_sdxl_unet_outputs_match_diffusers():
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**TINY_SDXL).eval()
    # diffusers zero-inits nothing: randomise every weight so that no path is trivially zero
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    spec = unet_spec_from_diffusers(ref.config)
    ours = build_model(spec).eval()
    missing, unexpected = ours.load_state_dict(unet_state_dict_from_diffusers(ref.state_dict()), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10.0, 700.0])
    tokens = torch.randn(2, 7, 48)
    pooled = torch.randn(2, 24)
    time_ids = torch.tensor([[256.0, 256, 0, 0, 256, 256], [512, 384, 16, 8, 256, 256]])
    with torch.no_grad():
        expected = ref(x, t, tokens, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        got = ours(x, t, tokens, pooled, time_ids)
    assert expected.abs().max() > 1e-2  # a real signal, not zeros
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_diffusers_config_round_trip():
    spec = unet_spec_from_diffusers(TINY_SDXL)
    cfg = diffusers_unet_config(spec)
    assert unet_spec_from_diffusers(cfg) == spec
    for name in ("sd3-decoder", "sdxl-decoder"):
        assert decoder_spec_from_diffusers(diffusers_decoder_config(PRESETS[name])) == PRESETS[name]
    with pytest.raises(SpecError, match="shortcut='none' has no diffusers AutoencoderKL equivalent"):
        diffusers_decoder_config(PRESETS["sd3-decoder"].replace(shortcut="none"))


@pytest.mark.parametrize("config", [
    dict(SD3_VAE, block_out_channels=[32, 32, 64], down_block_types=["DownEncoderBlock2D"] * 3,
         up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=8),
    dict(SDXL_VAE, block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
         up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=8),
])
def test_tiny_decoder_outputs_match_diffusers(config):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    ours = build_model(decoder_spec_from_diffusers(ref.config)).eval()
    ours.load_state_dict(decoder_state_dict_from_diffusers(ref.state_dict()), strict=True)
    z = torch.randn(1, config["latent_channels"], 8, 8)
    with torch.no_grad():
        expected = ref.decode(z).sample
        got = ours(z)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
