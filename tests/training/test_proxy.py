"""Proxy scaler: one width multiplier per study, monotone in every size knob, counts kept, and no two specs of a
shipped study grid (or the Figure 3 chain) that differ in a represented knob share a proxy."""
import itertools
import random
from pathlib import Path

import optuna
import pytest
import torch

from search_space import PRESETS, UNetSpec, apply_overrides, build_model
from search_space.compact import encode
from search_space.errors import SpecError
from studies.config import load_study_file
from training.data import FlowData
from training.proxy import (NOT_REPRESENTED, PROXY_MAX_CHANNELS, ProxyConfig, ProxyError, proxy_spec, represented,
                            study_width_mult, widest_channels)
from training.text import PromptEmbeddings
from training.config import LoopConfig
from training.quality_run import train
from tests.toys import toy_flow

UNETS = sorted(n for n, s in PRESETS.items() if isinstance(s, UNetSpec))
FIG3 = sorted(n for n in UNETS if n.startswith("fig3-"))
STUDIES = sorted(p for p in (Path(__file__).resolve().parents[2] / "studies").glob("*.toml"))
FULL_GRID_MAX = 5000  # grids up to this size are enumerated in full; larger ones (ranges) are sampled
SAMPLED = 1000


@pytest.mark.parametrize("name", UNETS)
def test_proxy_keeps_structure_and_counts(name):
    spec = PRESETS[name]
    proxy, mapping = proxy_spec(spec, latent_channels=4, text_dim=384, pooled_dim=384)
    assert max(proxy.channels) <= PROXY_MAX_CHANNELS
    assert (proxy.latent_channels, proxy.text_dim) == (4, 384)
    assert proxy.pooled_dim == (384 if spec.pooled_dim else 0)
    for a, b in zip(spec.stages, proxy.stages):
        assert (a.self_attention, a.cross_attention, a.res_block) == (b.self_attention, b.cross_attention, b.res_block)
        assert (a.down_layers, a.up_layers) == (b.down_layers, b.up_layers)
        assert (a.down_transformer_depth, a.up_transformer_depth) == (b.down_transformer_depth, b.up_transformer_depth)
        if a.has_transformer:
            assert spec.heads(a.channels) == proxy.heads(b.channels)  # heads kept: the head width scales
            assert spec.kv_heads_for(a.channels) == proxy.kv_heads_for(b.channels)
    assert proxy.mid_transformer_depth == spec.mid_transformer_depth and proxy.kv_heads == spec.kv_heads
    for field in ("conv", "conv_expansion", "ffn_ratio", "attention", "qk_norm", "pos_embed", "mid_block"):
        assert getattr(proxy, field) == getattr(spec, field)
    assert mapping["source_spec_id"] == spec.spec_id and mapping["proxy_spec_id"] == proxy.spec_id
    assert mapping["channels"] == [list(spec.channels), list(proxy.channels)]
    assert set(mapping["not_represented"]) == set(NOT_REPRESENTED)


def test_one_multiplier_keeps_widths_monotone_and_distinct():
    """The cases that once went wrong: 192/256/320 merged, 1088 got a smaller proxy than 1024; GQA became MQA."""
    base = PRESETS["snapgen-unet"]
    config = ProxyConfig(width_mult=128 / 1088)
    for i in range(3):
        widths = [192, 256, 320, 384, 512, 640, 768, 896, 1024, 1088]
        proxies = []
        for w in widths:
            try:
                spec = apply_overrides(base, [f"stages.{i}.channels={w}"])
            except SpecError:
                continue
            # one data channel: the rank rule (RANK_MARGIN per data channel) would refuse stage 0 at 12 channels
            proxies.append(proxy_spec(spec, 1, 384, 0, config)[0].stages[i].channels)
        assert proxies == sorted(proxies) and len(set(proxies)) == len(proxies), (i, proxies)
    gqa = apply_overrides(base, ["attention=gqa", "kv_heads=2"])
    proxy = proxy_spec(gqa, 4, 384, 0, config)[0]
    assert proxy.attention == "gqa" and proxy.kv_heads == 2
    depths = {proxy_spec(apply_overrides(base, [f"stages.2.down_transformer_depth={d}"]), 4, 384)[0].spec_id
              for d in (1, 2, 3, 4)}
    assert len(depths) == 4
    heads = {proxy_spec(apply_overrides(PRESETS["fig3-a"], [f"head_dim={h}"]), 4, 384, 0, config)[0].spec_id
             for h in (32, 64, 128)}
    assert len(heads) == 3


def test_small_spec_keeps_its_sizes():
    spec = PRESETS["tiny-debug"]
    proxy, mapping = proxy_spec(spec, latent_channels=4, text_dim=384)
    assert proxy.channels == spec.channels and proxy.head_dim == spec.head_dim
    assert mapping["width_mult"] == 1.0 and proxy == spec.replace(text_dim=384)


def test_study_width_mult_comes_from_the_widest_candidate():
    quick = load_study_file(STUDIES[0].parent / "quick.toml")
    assert widest_channels(quick.space) == 896
    assert study_width_mult(quick.space) == pytest.approx(128 / 896)
    assert study_width_mult(quick.space, ProxyConfig(width_mult=0.25)) == 0.25
    with pytest.raises(ProxyError, match="width_mult"):
        ProxyConfig(width_mult=1.5)


def _random_value(knob, rng: random.Random):
    if knob.choices is not None:
        return rng.choice(knob.choices)
    if knob.is_fixed:
        return knob.fixed
    if all(isinstance(x, int) for x in (knob.low, knob.high, knob.step or 1)):
        return rng.randrange(int(knob.low), int(knob.high) + 1, int(knob.step or 1))
    if knob.step:
        return knob.low + knob.step * rng.randrange(int(round((knob.high - knob.low) / knob.step)) + 1)
    return rng.uniform(knob.low, knob.high)


def _grid_specs(cfg):
    """Every spec of a categorical grid; a seeded random sample of larger or range spaces."""
    grid = cfg.space.grid()
    size = 1
    for values in (grid or {}).values():
        size *= len(values)
    if grid is not None and size <= FULL_GRID_MAX:
        for combo in itertools.product(*grid.values()):
            yield optuna.trial.FixedTrial(dict(zip(grid, combo)))
        return
    rng = random.Random(0)
    for _ in range(SAMPLED):
        yield optuna.trial.FixedTrial({k.path: _random_value(k, rng) for k in cfg.space.knobs if not k.is_fixed})


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_no_two_specs_of_a_shipped_study_share_a_proxy(path):
    cfg = load_study_file(path)
    if cfg.quality_evaluator != "flow":
        pytest.skip(f"{path.name} does not train UNet proxies")
    config = ProxyConfig(width_mult=study_width_mult(cfg.space))
    seen: dict[str, tuple] = {}
    n = 0
    for trial in _grid_specs(cfg):
        try:
            spec = cfg.space.sample(trial)
        except SpecError:
            continue
        proxy, _ = proxy_spec(spec, 4, 384, 0, config)
        view = represented(spec)
        if proxy.spec_id in seen:
            other_view, other = seen[proxy.spec_id]
            assert other_view == view, f"{encode(spec)} and {other} differ in a represented knob but share a proxy"
        seen[proxy.spec_id] = (view, encode(spec))
        n += 1
    assert n > 0 and len(seen) > 1


def test_figure3_chain_gets_one_proxy_per_step():
    config = ProxyConfig(width_mult=128 / 896)
    proxies = {n: proxy_spec(PRESETS[n], 4, 384, 0, config)[0] for n in FIG3}
    assert len({p.spec_id for p in proxies.values()}) == len(FIG3)
    assert {p.channels for p in proxies.values()} == {(32, 64, 112)}  # the chain compares structure, not width


def test_collision_check_catches_a_merging_map(monkeypatch):
    """The check can fail: a map that ignores a represented knob (stage-0 width) is caught."""
    import training.proxy as tp

    real = tp.proxy_spec

    def merging(spec, *args, **kwargs):
        return real(apply_overrides(spec, ["stages.0.channels=256"]), *args, **kwargs)

    a = apply_overrides(PRESETS["snapgen-unet"], ["stages.0.channels=192"])
    b = PRESETS["snapgen-unet"]
    pa, pb = merging(a, 4, 384)[0], merging(b, 4, 384)[0]
    assert pa.spec_id == pb.spec_id and represented(a) != represented(b)


def _toy_data(channels=4, size=8, n=16, classes=3) -> tuple[FlowData, PromptEmbeddings]:
    return toy_flow(n, classes, channels, size, n_val=4, text_dim=24, tokens=5)


@pytest.mark.parametrize("name", ["fig3-a", "fig3-g"])
def test_fig3_chain_trains_at_proxy_scale(name):
    data, prompts = _toy_data()
    proxy, _ = proxy_spec(PRESETS[name], data.channels, prompts.dim, prompts.pooled_dim, ProxyConfig(width_mult=1 / 14))
    result = train(proxy, data, prompts, "2steps", LoopConfig.quality_preset(batch_size=4, warmup_steps=1),
                   progress=False)
    assert result.status == "ok" and result.step == 2
    assert result.val_loss is not None and torch.isfinite(torch.tensor(result.val_loss))
    n_params = sum(p.numel() for p in build_model(proxy).parameters())
    assert n_params < 12e6  # the full-size model has ~380-630M


def test_describe_proxy_lists_what_is_not_represented(monkeypatch, capsys):
    import pocketdiff.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pocketdiff.cmd_describe",))
    assert cli.main(["describe", "fig3-e", "--proxy", "--no-memory", "--latent", "16"]) == 0
    out = capsys.readouterr().out
    assert "not represented at proxy scale" in out and all(k in out for k in NOT_REPRESENTED)
    assert "[256, 512, 896] -> [32, 64, 112]" in out
    assert cli.main(["describe", "tiny-debug-decoder", "--proxy", "--no-memory"]) == 2
    assert "--proxy applies to UNet specs" in capsys.readouterr().err
