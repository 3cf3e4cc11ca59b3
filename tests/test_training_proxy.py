"""Proxy scaler: every registered UNet maps to a small proxy of the same structure that trains on CPU."""
import pytest
import torch

from search_space import PRESETS, UNetSpec, build_model
from training.data import FlowData
from training.proxy import PROXY_MAX_CHANNELS, proxy_spec
from training.text import PromptEmbeddings
from training.trainer import train

UNETS = sorted(n for n, s in PRESETS.items() if isinstance(s, UNetSpec))
FIG3 = sorted(n for n in UNETS if n.startswith("fig3-"))


@pytest.mark.parametrize("name", UNETS)
def test_proxy_keeps_structure_and_fits(name):
    spec = PRESETS[name]
    proxy, mapping = proxy_spec(spec, latent_channels=4, text_dim=384, pooled_dim=384)
    assert max(proxy.channels) <= PROXY_MAX_CHANNELS
    assert (proxy.latent_channels, proxy.text_dim) == (4, 384)
    assert proxy.pooled_dim == (384 if spec.pooled_dim else 0)
    for a, b in zip(spec.stages, proxy.stages):
        assert (a.self_attention, a.cross_attention, a.res_block) == (b.self_attention, b.cross_attention, b.res_block)
        assert (a.down_layers, a.up_layers) == (b.down_layers, b.up_layers)
        assert (a.down_transformer_depth > 0) == (b.down_transformer_depth > 0)
        assert b.channels % proxy.norm_groups == 0 and b.channels % proxy.head_dim == 0
    for field in ("conv", "conv_expansion", "ffn_ratio", "attention", "qk_norm", "pos_embed", "mid_block"):
        assert getattr(proxy, field) == getattr(spec, field)
    assert mapping["source_spec_id"] == spec.spec_id and mapping["proxy_spec_id"] == proxy.spec_id
    assert mapping["channels"] == [list(spec.channels), list(proxy.channels)]


def test_snapgen_chain_proxies_share_widths():
    widths = {proxy_spec(PRESETS[n], 4, 384)[0].channels for n in FIG3}
    assert widths == {(32, 64, 112)}  # 1/8 of [256, 512, 896]: the chain compares structure, not width


def test_small_spec_keeps_its_sizes():
    spec = PRESETS["tiny-debug"]
    proxy, mapping = proxy_spec(spec, latent_channels=4, text_dim=384)
    assert proxy.channels == spec.channels and proxy.head_dim == spec.head_dim
    assert mapping["width_mult"] == 1.0 and proxy == spec.replace(text_dim=384)


def _toy_data(channels=4, size=8, n=16, classes=3) -> tuple[FlowData, PromptEmbeddings]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, channels, size, size, generator=g), torch.arange(n) % classes
    data = FlowData(name="toy", kind="latent", class_names=[f"c{i}" for i in range(classes)], resolution=size,
                    channels=channels, size=size, val_x=x[:4], val_y=y[:4], ref_x=x, ref_y=y, train_x=x, train_y=y)
    prompts = PromptEmbeddings(tokens=torch.randn(classes + 1, 5, 24, generator=g),
                               pooled=torch.randn(classes + 1, 24, generator=g), encoder="toy")
    return data, prompts


@pytest.mark.parametrize("name", FIG3 + ["snapgen-unet"])
def test_fig3_chain_trains_at_proxy_scale(name):
    data, prompts = _toy_data()
    proxy, _ = proxy_spec(PRESETS[name], data.channels, prompts.dim, prompts.pooled_dim)
    result = train(proxy, data, prompts, "2steps", seed=0, progress=False)
    assert result.status == "ok" and result.steps == 2
    assert result.val_loss is not None and torch.isfinite(torch.tensor(result.val_loss))
    n_params = sum(p.numel() for p in build_model(proxy).parameters())
    assert n_params < 12e6  # the full-size model has ~380-630M
