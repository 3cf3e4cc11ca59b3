"""UNet builder: `UNet(spec)` for any `UNetSpec` (SDXL layout at one end, SnapGen at the other).

Layout as diffusers' UNet2DConditionModel: conv_in, a down path of stages (layers = [res block] +
[SpatialTransformer], then a stride-2 downsample), a mid block (res, transformer, res), an up path that
concatenates the saved skips, and norm/SiLU/conv_out. Module paths (`down.1.layers.0.attn.blocks.3.attn2.to_k`)
are API: state dicts, profiles and tests key on them; `diffusers_compat.py` maps diffusers' names to these.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .blocks import Downsample, ResBlock, SpatialTransformer, TimestepEmbedding, TransformerBlock, Upsample, timestep_embedding
from .spec import StageSpec, UNetSpec

SIZE_COND_DIM = 256  # SDXL: each of the 6 size/crop conditioning numbers gets a 256-d sinusoidal embedding
SIZE_COND_COUNT = 6  # (original h, w, crop top, left, target h, w)


class UNetLayer(nn.Module):
    """One layer of a stage: optional residual block then optional spatial transformer."""

    def __init__(self, spec: UNetSpec, stage: StageSpec, in_ch: int, depth: int):
        super().__init__()
        out_ch = stage.channels
        self.res = None
        if stage.res_block:
            self.res = _res_block(spec, in_ch, out_ch)
            in_ch = out_ch
        self.attn = None
        if depth > 0:
            self.attn = SpatialTransformer(in_ch, out_ch, depth, lambda: _transformer_block(spec, stage),
                                           spec.norm_groups)

    def forward(self, x, temb, context):
        if self.res is not None:
            x = self.res(x, temb)
        if self.attn is not None:
            x = self.attn(x, context)
        return x


def _res_block(spec: UNetSpec, in_ch: int, out_ch: int) -> ResBlock:
    return ResBlock(in_ch=in_ch, out_ch=out_ch, temb_dim=spec.time_embed_dim, conv=spec.conv,
                    expansion=spec.conv_expansion, sep_block=spec.sep_block, groups=spec.norm_groups)


def _transformer_block(spec: UNetSpec, stage: StageSpec) -> TransformerBlock:
    c = stage.channels
    return TransformerBlock(
        dim=c, context_dim=spec.text_dim, heads=spec.heads(c),
        self_kv_heads=spec.kv_heads_for(c), cross_kv_heads=spec.kv_heads_for(c, cross=True),
        head_dim=spec.head_dim, ffn_ratio=spec.ffn_ratio,
        self_attention=stage.self_attention, cross_attention=stage.cross_attention,
        qk_norm=spec.qk_norm, rope=spec.pos_embed == "rope2d",
    )


class DownStage(nn.Module):
    def __init__(self, spec: UNetSpec, stage: StageSpec, in_ch: int, downsample: bool):
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(stage.down_layers):
            self.layers.append(UNetLayer(spec, stage, in_ch, stage.down_transformer_depth))
            in_ch = stage.channels
        self.downsample = Downsample(stage.channels, spec.conv) if downsample else None


class UpStage(nn.Module):
    def __init__(self, spec: UNetSpec, stage: StageSpec, in_ch: int, skip_chs: list[int], upsample: bool):
        super().__init__()
        self.layers = nn.ModuleList()
        for skip in skip_chs:
            self.layers.append(UNetLayer(spec, stage, in_ch + skip, stage.up_transformer_depth))
            in_ch = stage.channels
        self.upsample = Upsample(stage.channels, stage.channels, spec.conv) if upsample else None


class MidBlock(nn.Module):
    def __init__(self, spec: UNetSpec, stage: StageSpec):
        super().__init__()
        c = stage.channels
        self.res_in = _res_block(spec, c, c)
        self.attn = None
        if spec.mid_transformer_depth > 0:
            self.attn = SpatialTransformer(c, c, spec.mid_transformer_depth, lambda: _transformer_block(spec, stage),
                                           spec.norm_groups)
        self.res_out = _res_block(spec, c, c)

    def forward(self, x, temb, context):
        x = self.res_in(x, temb)
        if self.attn is not None:
            x = self.attn(x, context)
        return self.res_out(x, temb)


class UNet(nn.Module):
    """UNet(latents (B, C, H, W), timestep (B,), tokens (B, L, text_dim)[, pooled (B, P), time_ids (B, 6)]).

    Returns the prediction (velocity for flow matching) with the latents' shape. H and W must be multiples of
    `spec.downsample_factor`.
    """

    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        c0 = spec.stages[0].channels
        self.conv_in = nn.Conv2d(spec.latent_channels, c0, 3, padding=1)
        self.time_embedding = TimestepEmbedding(c0, spec.time_embed_dim)
        add_dim = spec.pooled_dim + (SIZE_COND_DIM * SIZE_COND_COUNT if spec.size_conditioning else 0)
        self.add_embedding = TimestepEmbedding(add_dim, spec.time_embed_dim) if add_dim else None

        skips = [c0]
        ch = c0
        n = len(spec.stages)
        self.down = nn.ModuleList()
        for i, stage in enumerate(spec.stages):
            self.down.append(DownStage(spec, stage, ch, downsample=i < n - 1))
            ch = stage.channels
            skips += [ch] * stage.down_layers + ([ch] if i < n - 1 else [])

        self.mid = MidBlock(spec, spec.stages[-1]) if spec.mid_block else None

        self.up = nn.ModuleList()
        for i, stage in reversed(list(enumerate(spec.stages))):
            take = [skips.pop() for _ in range(stage.up_layers)] if len(skips) >= stage.up_layers else None
            if take is None:
                raise ValueError("up_layers consume more skip connections than the down path makes")
            self.up.append(UpStage(spec, stage, ch, take, upsample=i > 0))
            ch = stage.channels
        if skips:
            raise ValueError(f"{len(skips)} skip connection(s) left unused by the up path")
        self.norm_out = nn.GroupNorm(spec.norm_groups, c0, eps=1e-5)
        self.conv_out = nn.Conv2d(c0, spec.latent_channels, 3, padding=1)
        self.init_weights()

    def init_weights(self) -> None:
        # torch's default init everywhere (as diffusers; search_space/init.py draws each module's from its own
        # path-seeded stream and calls this after); only the output conv starts at zero so a fresh model
        # predicts 0 and flow-matching training starts from the mean velocity (DiT zero-inits its final layer).
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, tokens: torch.Tensor,
                pooled: torch.Tensor | None = None, time_ids: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.spec
        b = latents.shape[0]
        if timestep.ndim == 0:
            timestep = timestep.expand(b)
        temb = self.time_embedding(timestep_embedding(timestep, spec.stages[0].channels).to(latents.dtype))
        if self.add_embedding is not None:
            parts = []
            if spec.pooled_dim:
                if pooled is None:
                    raise ValueError(f"this UNet needs pooled text embeddings (B, {spec.pooled_dim})")
                parts.append(pooled)
            if spec.size_conditioning:
                if time_ids is None:
                    raise ValueError("this UNet needs time_ids (B, 6): original size, crop, target size")
                parts.append(timestep_embedding(time_ids.flatten(), SIZE_COND_DIM).reshape(b, -1))
            temb = temb + self.add_embedding(torch.cat(parts, dim=-1).to(temb.dtype))

        x = self.conv_in(latents)
        skips = [x]
        for stage in self.down:
            for layer in stage.layers:
                x = layer(x, temb, tokens)
                skips.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
                skips.append(x)
        if self.mid is not None:
            x = self.mid(x, temb, tokens)
        for stage in self.up:
            for layer in stage.layers:
                x = layer(torch.cat([x, skips.pop()], dim=1), temb, tokens)  # (B, C+Cs, H, W)
            if stage.upsample is not None:
                x = stage.upsample(x)
        return self.conv_out(F.silu(self.norm_out(x)))
