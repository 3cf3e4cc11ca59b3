"""Proxy scaler: map any UNet spec to a small trainable proxy of the same structure, and record the mapping.

SNAPGEN.md section 4: "the workbench runs the same protocol at any scale, and on CPU at a proxy scale". The
proxy keeps every structural choice of the Figure 3 chain (which stages have self-/cross-attention, res blocks
or transformer-only layers, separable convs and their expansion, FFN ratio, MQA, QK norm, RoPE) and shrinks
only the sizes: widths by a multiplier, transformer depths, head width and norm groups. Input/output widths
follow the data and the text encoder (latent channels, text_dim, pooled_dim).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from search_space import UNetSpec

# [choose] widest stage of a proxy at most 128 channels: SnapGen's [256, 512, 896] scale by 1/8 to [32, 64, 112].
PROXY_MAX_CHANNELS = 128
# [choose] head width 16 and 8 norm groups: the smallest values that keep every SnapGen head count >= 2 at the
# proxy widths (896 * 1/8 = 112 = 7 heads of 16); both only ever shrink.
PROXY_HEAD_DIM = 16
PROXY_NORM_GROUPS = 8
# [choose] transformer depths halved (rounded up, so a stage with transformers keeps at least one block).
PROXY_DEPTH_MULT = 0.5


@dataclass(frozen=True)
class ProxyConfig:
    max_channels: int = PROXY_MAX_CHANNELS
    head_dim: int = PROXY_HEAD_DIM
    norm_groups: int = PROXY_NORM_GROUPS
    depth_mult: float = PROXY_DEPTH_MULT


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _depth(d: int, mult: float) -> int:
    return 0 if d == 0 else max(1, math.ceil(d * mult))


def proxy_spec(spec: UNetSpec, latent_channels: int, text_dim: int, pooled_dim: int = 0,
               config: ProxyConfig = ProxyConfig()) -> tuple[UNetSpec, dict]:
    """(proxy spec, mapping record). A spec already within the proxy sizes keeps its widths and depths and
    only adopts the data's channels and the encoder's widths."""
    # A power-of-two width multiplier, the same for every stage, so the proxies of a design chain share widths.
    width = 0.5 ** max(0, math.ceil(math.log2(max(spec.channels) / config.max_channels)))
    shrink = width < 1.0
    head_dim = min(spec.head_dim, config.head_dim) if shrink else spec.head_dim
    groups = min(spec.norm_groups, config.norm_groups) if shrink else spec.norm_groups
    depth_mult = config.depth_mult if shrink else 1.0
    stages = []
    multiple = math.lcm(groups, head_dim)  # one rounding for all stages: a res-only stage may gain attention
    for s in spec.stages:
        stages.append(dataclasses.replace(
            s, channels=_round_to(s.channels * width, multiple) if shrink else s.channels,
            down_transformer_depth=_depth(s.down_transformer_depth, depth_mult),
            up_transformer_depth=_depth(s.up_transformer_depth, depth_mult)))
    kv_heads = spec.kv_heads
    if spec.attention == "gqa":
        heads = [st.channels // head_dim for st in stages if st.has_transformer]
        kv_heads = max(k for k in range(1, min(heads) + 1) if all(h % k == 0 for h in heads) and k <= spec.kv_heads)
    proxy = spec.replace(
        stages=tuple(stages), latent_channels=latent_channels, text_dim=text_dim,
        pooled_dim=pooled_dim if spec.pooled_dim else 0, head_dim=head_dim, norm_groups=groups,
        mid_transformer_depth=_depth(spec.mid_transformer_depth, depth_mult), kv_heads=kv_heads)
    mapping = {
        "source_spec_id": spec.spec_id, "proxy_spec_id": proxy.spec_id, "width_mult": width,
        "depth_mult": depth_mult, "channels": [list(spec.channels), list(proxy.channels)],
        "transformer_depth": [[[s.down_transformer_depth, s.up_transformer_depth] for s in spec.stages],
                              [[s.down_transformer_depth, s.up_transformer_depth] for s in proxy.stages]],
        "mid_transformer_depth": [spec.mid_transformer_depth, proxy.mid_transformer_depth],
        "head_dim": [spec.head_dim, head_dim], "norm_groups": [spec.norm_groups, groups],
        "latent_channels": [spec.latent_channels, latent_channels], "text_dim": [spec.text_dim, text_dim],
        "pooled_dim": [spec.pooled_dim, proxy.pooled_dim],
    }
    return proxy, mapping
