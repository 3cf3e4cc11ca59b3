"""Proxy scaler: map a UNet spec to a small trainable proxy of the same structure, and record the mapping.

docs/paper.md section 4: "the workbench runs the same protocol at any scale, and on CPU at a proxy scale". The
proxy keeps every structural choice of the Figure 3 chain (which stages have self-/cross-attention, res blocks
or transformer-only layers, separable convs and their expansion, FFN ratio, MQA/GQA, QK norm, RoPE), keeps
every count (layers, transformer depths, heads, kv heads) and shrinks only widths, by ONE multiplier per study:
    width_mult = PROXY_MAX_CHANNELS / (the widest stage of any candidate of the study)
so the map is monotone in every size knob and two candidates of one study never merge on a size. Heads are
kept, so the head width scales (head_dim * width_mult, rounded down to a multiple of 4 for RoPE); a stage with
attention gets heads * proxy_head_dim channels, a stage without gets its width times the same effective
multiplier, rounded to the proxy's norm groups.

Knobs the proxy cannot represent are listed in NOT_REPRESENTED (input/output widths follow the data and the
text encoder; the norm-group count follows the proxy widths). Every other spec field (known or added later) is
kept as it is: a new structural field changes the proxy by default.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from search_space import UNetSpec
from search_space.errors import UserError

# [choose] widest stage of a proxy: 128 channels. SnapGen's [256, 512, 896] then scale by 1/8 to [32, 64, 112]
# (head width 64 -> 8, heads 4/8/14 kept); a 16x16x4 MNIST proxy of fig3-a trains at ~15 steps/s on one core.
PROXY_MAX_CHANNELS = 128
# [choose] the proxy's norm-group count: at most 8 and a divisor of the proxy head width, so every stage width
# (a multiple of the head width where there is attention) divides into groups.
PROXY_NORM_GROUPS = 8
HEAD_DIM_MULTIPLE = 4  # 2D RoPE splits a head into (sin, cos) x (row, column): head width % 4 == 0
MIN_HEAD_DIM = 4
# [choose] a shrunk proxy's first stage keeps at least 4 channels per model-space channel. Its output conv maps
# the stage-0 width to the data's channels at every position: a stage narrower than the data (12 channels for
# MNIST's 4x4 space-to-depth, 16) caps the rank of what the proxy can predict, and a design change to stage 0
# then shows that cap instead of the design; the factor 4 keeps the cap well away.
RANK_MARGIN = 4

# Spec fields the proxy does not take from the source spec, and why. Two specs that differ only in these fields
# share a proxy; `pocketdiff describe --proxy` and every trial's mapping record list them.
NOT_REPRESENTED = {
    "latent_channels": "the proxy denoises the data's model space (e.g. MNIST space-to-depth: 4 channels)",
    "text_dim": "the proxy reads the study's text encoder (MiniLM: 384), not the full model's",
    "pooled_dim": "only whether a pooled vector is used is kept; its width is the text encoder's",
    "norm_groups": "the group count follows the proxy widths (at most 8, a divisor of the proxy head width)",
}


# The default proxy's text width (MiniLM prompts), for views such as `pocketdiff describe --proxy` that show a
# mapping without loading the encoder.
DEFAULT_TEXT_DIM = 384


class ProxyError(UserError):
    """A proxy option is invalid (e.g. width_mult outside (0, 1]); the message says how to fix it."""


@dataclass(frozen=True)
class ProxyConfig:
    """width_mult: the study's one width multiplier (None: from this spec alone, for a single evaluation)."""

    width_mult: float | None = None
    max_channels: int = PROXY_MAX_CHANNELS
    norm_groups: int = PROXY_NORM_GROUPS

    def __post_init__(self) -> None:
        if self.width_mult is not None and not (isinstance(self.width_mult, (int, float))
                                                and 0 < self.width_mult <= 1):
            raise ProxyError(f"proxy width_mult={self.width_mult!r} must be a number in (0, 1], e.g. 0.125")
        if not isinstance(self.max_channels, int) or self.max_channels < 8:
            raise ProxyError(f"proxy max_channels={self.max_channels!r} must be an integer >= 8")


def width_mult_for(widest_channels: int, max_channels: int = PROXY_MAX_CHANNELS) -> float:
    """The multiplier that brings the widest stage to `max_channels` (1 when it is already narrower)."""
    return min(1.0, max_channels / widest_channels)


def widest_channels(space) -> int:
    """The widest stage width any candidate of a search space (search_space.sampling.SearchSpace) can have."""
    from search_space import PRESETS

    bases = space.preset_choices or (space.base,)
    widest = 0
    for base in bases:
        spec = PRESETS[base]
        for i, stage in enumerate(spec.stages):
            values = [stage.channels]
            for knob in space.knobs:
                if knob.path == f"stages.{i}.channels":
                    values = [v for v in (knob.fixed, knob.high, knob.otherwise) if v is not None]
                    values += list(knob.choices or ())
                    if knob.when and knob.otherwise is None:
                        values.append(stage.channels)
            widest = max(widest, *(int(v) for v in values))
    return widest


def study_width_mult(space, config: ProxyConfig = ProxyConfig()) -> float:
    """One width multiplier for a whole study: the configured one, else from the study's widest candidate."""
    if config.width_mult is not None:
        return float(config.width_mult)
    return width_mult_for(widest_channels(space), config.max_channels)


def _head_dim(head_dim: int, width: float) -> int:
    if width >= 1.0:
        return head_dim
    # Rounded down, so no proxy stage is wider than the study's cap (the cap bounds the cost of every trial).
    scaled = HEAD_DIM_MULTIPLE * math.floor(head_dim * width / HEAD_DIM_MULTIPLE + 1e-9)
    return max(MIN_HEAD_DIM, scaled)


def _needs_heads(spec: UNetSpec, i: int) -> bool:
    """Whether stage i's width must be a whole number of heads (it has attention, or feeds the mid block's)."""
    last = i == len(spec.stages) - 1
    return spec.stages[i].has_transformer or (last and spec.mid_block and spec.mid_transformer_depth > 0)


def proxy_spec(spec: UNetSpec, latent_channels: int, text_dim: int, pooled_dim: int = 0,
               config: ProxyConfig = ProxyConfig(), size: int | None = None) -> tuple[UNetSpec, dict]:
    """(proxy spec, mapping record). With width_mult 1 (a spec already within the proxy size) only the data's
    channels and the encoder's widths change. A shrunk proxy whose first stage would be narrower than RANK_MARGIN
    channels per data channel is refused (ProxyError). `size`: the data's model-space size, for the mapping's
    per-stage geometry (tokens and head width of every attention stage)."""
    width = config.width_mult if config.width_mult is not None else width_mult_for(max(spec.channels),
                                                                                   config.max_channels)
    shrink = width < 1.0
    head_dim = _head_dim(spec.head_dim, width)
    effective = head_dim / spec.head_dim if shrink else 1.0  # the multiplier every width actually gets
    groups = math.gcd(head_dim, config.norm_groups) if shrink else spec.norm_groups
    stages = []
    for i, s in enumerate(spec.stages):
        if not shrink:
            channels = s.channels
        elif _needs_heads(spec, i):
            channels = (s.channels // spec.head_dim) * head_dim  # heads kept, head width scaled
        else:
            channels = max(groups, groups * round(s.channels * effective / groups))
        stages.append(dataclasses.replace(s, channels=channels))
    if shrink and stages[0].channels < RANK_MARGIN * latent_channels:
        floor = RANK_MARGIN * latent_channels / spec.stages[0].channels
        raise ProxyError(f"the proxy's first stage would have {stages[0].channels} channels for {latent_channels} "
                         f"data channels (width x{width:.4g}): below {RANK_MARGIN} per data channel its output is "
                         f"rank-limited, so stage-0 designs would differ by that cap; use width_mult >= "
                         f"{floor:.3g} or data with fewer channels per position (mnist5k: 4, mnist5k-p1: 1)")
    proxy = spec.replace(stages=tuple(stages), latent_channels=latent_channels, text_dim=text_dim,
                         pooled_dim=pooled_dim if spec.pooled_dim else 0, head_dim=head_dim, norm_groups=groups)
    heads = [[spec.heads(s.channels), proxy.heads(p.channels)] for s, p in zip(spec.stages, proxy.stages)
             if s.has_transformer]
    mapping = {
        "source_spec_id": spec.spec_id, "proxy_spec_id": proxy.spec_id, "width_mult": width,
        "effective_width_mult": effective, "channels": [list(spec.channels), list(proxy.channels)],
        "head_dim": [spec.head_dim, head_dim], "heads": heads, "norm_groups": [spec.norm_groups, groups],
        "kv_heads": [spec.kv_heads, proxy.kv_heads], "depths": "kept",
        "latent_channels": [spec.latent_channels, latent_channels], "text_dim": [spec.text_dim, text_dim],
        "pooled_dim": [spec.pooled_dim, proxy.pooled_dim],
        "not_represented": dict(NOT_REPRESENTED),
    }
    if size is not None:
        mapping["geometry"] = geometry(proxy, size)
    return proxy, mapping


def geometry(proxy: UNetSpec, size: int) -> list[dict]:
    """Per stage of a (proxy) spec on a size x size model space: its resolution, tokens, channels, and for a
    stage with attention its heads and head width. Attention over a few tokens with narrow heads cannot show
    what the full model's attention choices do; this says how few and how narrow."""
    rows = []
    for i, s in enumerate(proxy.stages):
        side = size // 2 ** i
        row = {"stage": i, "resolution": side, "tokens": side * side, "channels": s.channels,
               "self_attention": s.has_transformer and s.self_attention,
               "cross_attention": s.has_transformer and s.cross_attention}
        if s.has_transformer:
            row.update(heads=proxy.heads(s.channels), head_dim=proxy.head_dim)
        rows.append(row)
    return rows


def represented(spec: UNetSpec) -> dict[str, Any]:
    """The spec's fields that the proxy represents: two specs with different views must get different proxies."""
    d = spec.to_dict()
    for key in NOT_REPRESENTED:
        d.pop(key, None)
    d["uses_pooled"] = bool(spec.pooled_dim)
    return d


def describe_mapping(mapping: dict) -> list[str]:
    """Human-readable lines of a mapping record (for `pocketdiff describe --proxy`)."""
    lines = [f"proxy {mapping['proxy_spec_id']} of {mapping['source_spec_id']}: width x{mapping['width_mult']:.4g} "
             f"(effective x{mapping['effective_width_mult']:.4g}); depths, layers, heads and kv heads kept",
             f"  channels {mapping['channels'][0]} -> {mapping['channels'][1]}",
             f"  head width {mapping['head_dim'][0]} -> {mapping['head_dim'][1]}, heads per attention stage "
             f"{[h[0] for h in mapping['heads']]} (kept)"]
    for row in mapping.get("geometry", []):
        attn = (", self-attention over" if row["self_attention"] else ", cross-attention at") \
            + f" {row['tokens']} tokens, {row['heads']} heads of width {row['head_dim']}" if "heads" in row else ""
        lines.append(f"  stage {row['stage']}: {row['resolution']}x{row['resolution']}, {row['channels']} channels"
                     + attn)
    lines.append("  not represented at proxy scale:")
    lines += [f"    {k}: {v}" for k, v in mapping["not_represented"].items()]
    return lines
