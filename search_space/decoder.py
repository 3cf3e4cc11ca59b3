"""VAE decoder builder: `Decoder(spec)` for any `DecoderSpec` (docs/paper.md section 2, Table 2).

Layout as diffusers' `Decoder` inside `AutoencoderKL`: [post_quant_conv], conv_in, a mid block
(res, attention, res), up stages from the lowest resolution to the highest with a nearest-2x + conv
upsampler between them, GroupNorm/SiLU/conv_out. The SnapGen knobs: no attention, GroupNorm only where
`norm_*` keeps it, separable convs, and `shortcut="none"` (no 1x1 conv in residual blocks; the upsampler's
conv changes the width).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, Upsample, make_norm
from .spec import DecoderSpec

NORM_EPS = 1e-6  # diffusers' VAE uses eps 1e-6 in every GroupNorm


class VAEAttention(nn.Module):
    """Single-head self-attention over H*W pixels with its own GroupNorm (diffusers' VAE mid attention)."""

    def __init__(self, ch: int, groups: int, norm: bool):
        super().__init__()
        self.norm = make_norm(groups, ch, NORM_EPS, norm)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        self.to_out = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x).reshape(b, c, h * w).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        q, k, v = (proj(t).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # (B, 1, N, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.to_out(out).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class DecoderMid(nn.Module):
    def __init__(self, spec: DecoderSpec):
        super().__init__()
        c = spec.channels[-1]
        self.res = nn.ModuleList([self._res(spec, c) for _ in range(spec.mid_res_blocks)])
        self.attn = VAEAttention(c, spec.norm_groups, spec.norm_mid) if spec.mid_attention else None

    @staticmethod
    def _res(spec: DecoderSpec, c: int) -> ResBlock:
        return ResBlock(in_ch=c, out_ch=c, temb_dim=None, conv=spec.conv, expansion=spec.conv_expansion,
                        sep_block=spec.sep_block, groups=spec.norm_groups, eps=NORM_EPS, norm=spec.norm_mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, res in enumerate(self.res):
            if i == 1 and self.attn is not None:
                x = self.attn(x)
            x = res(x)
        return x


class DecoderStage(nn.Module):
    def __init__(self, spec: DecoderSpec, index: int, in_ch: int, out_next: int | None):
        super().__init__()
        c = spec.channels[index]
        norm = spec.norm_stages[index]
        shortcut = spec.shortcut == "conv1x1"
        self.res = nn.ModuleList()
        for _ in range(spec.res_blocks[index]):
            self.res.append(ResBlock(in_ch=in_ch, out_ch=c, temb_dim=None, conv=spec.conv,
                                     expansion=spec.conv_expansion, sep_block=spec.sep_block,
                                     groups=spec.norm_groups, eps=NORM_EPS, norm=norm, shortcut=shortcut))
            in_ch = c
        self.upsample = None
        if out_next is not None:  # diffusers keeps the width here; without shortcuts the upsampler changes it
            # under sep_block="uib" the expansion lives between a res block's two convs; one conv gets none
            expansion = spec.conv_expansion if spec.sep_block == "per_conv" else 1.0
            self.upsample = Upsample(c, c if shortcut else out_next, spec.conv, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for res in self.res:
            x = res(x)
        return self.upsample(x) if self.upsample is not None else x


class Decoder(nn.Module):
    """Decoder(latents (B, latent_channels, h, w)) -> image (B, out_channels, h * f, w * f)."""

    def __init__(self, spec: DecoderSpec):
        super().__init__()
        self.spec = spec
        n = len(spec.channels)
        self.post_quant_conv = nn.Conv2d(spec.latent_channels, spec.latent_channels, 1) if spec.post_quant_conv else None
        self.conv_in = nn.Conv2d(spec.latent_channels, spec.channels[-1], 3, padding=1)
        self.mid = DecoderMid(spec) if spec.mid_res_blocks else None
        self.up = nn.ModuleList()
        ch = spec.channels[-1]
        for i in reversed(range(n)):
            self.up.append(DecoderStage(spec, i, ch, spec.channels[i - 1] if i > 0 else None))
            ch = spec.channels[i] if spec.shortcut == "conv1x1" or i == 0 else spec.channels[i - 1]
        self.norm_out = make_norm(spec.norm_groups, spec.channels[0], NORM_EPS, spec.norm_out)
        self.conv_out = nn.Conv2d(spec.channels[0], spec.out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = latents
        if self.post_quant_conv is not None:
            x = self.post_quant_conv(x)
        x = self.conv_in(x)
        if self.mid is not None:
            x = self.mid(x)
        for stage in self.up:
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))
