"""Building blocks shared by the UNet and the decoder: convs, residual blocks, transformer blocks.

Numerics mirror diffusers' SDXL modules (ResnetBlock2D, Transformer2DModel with linear projections,
BasicTransformerBlock with GEGLU) so that diffusers weights load through `diffusers_compat.py` and give the
same outputs. The separable conv is docs/paper.md section 1, steps c1 (depthwise 3x3 + pointwise) and c2
(pointwise expansion C -> eC -> C, as MobileNetV4's Universal Inverted Bottleneck). Step c2 has two readings
(`UNetSpec.sep_block`): the expansion inside each conv ("per_conv"), or across the res block's two convs
("uib", as diffusers' `ResnetBlock2DDreamLite`, whose weights load into `ResBlock` with `sep_block="uib"`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention


class SepConv(nn.Module):
    """Depthwise 3x3 then pointwise. With expansion e > 1: pointwise C_in -> e*C_out, SiLU, e*C_out -> C_out.

    [choose] the hidden width follows the output width (e * C_out) and the inner activation is SiLU, the
    UNet's activation; with e = 1 there is a single pointwise conv and no inner activation (step c1).
    """

    def __init__(self, in_ch: int, out_ch: int, expansion: float = 1.0, stride: int = 1, bias: bool = True):
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=bias)
        if expansion == 1:
            self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=bias)
        else:
            hidden = int(round(expansion * out_ch))
            self.pw_expand = nn.Conv2d(in_ch, hidden, 1, bias=bias)
            self.pw_reduce = nn.Conv2d(hidden, out_ch, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(x)
        if hasattr(self, "pw"):
            return self.pw(x)
        return self.pw_reduce(F.silu(self.pw_expand(x)))


def make_conv(kind: str, in_ch: int, out_ch: int, expansion: float = 1.0, stride: int = 1) -> nn.Module:
    if kind == "separable":
        return SepConv(in_ch, out_ch, expansion, stride)
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)


def make_norm(groups: int, channels: int, eps: float, enabled: bool = True) -> nn.Module:
    return nn.GroupNorm(groups, channels, eps=eps) if enabled else nn.Identity()


class ResBlock(nn.Module):
    """norm -> SiLU -> conv (+ time embedding) -> norm -> SiLU -> conv, plus a shortcut.

    As diffusers' ResnetBlock2D (output_scale_factor 1, "default" time-embedding shift). `temb_dim=None`
    drops the time projection (decoder). `shortcut=False` forbids a channel change (SnapGen decoder: the
    upsampler does the channel transition instead).

    Separable convs with `sep_block="per_conv"`: each conv is a `SepConv` with its own expansion.
    `sep_block="uib"`: the block is one inverted bottleneck, as diffusers' `ResnetBlock2DDreamLite`:
    conv1 = DW(in) -> PW(in -> hidden), time embedding and norm2 at hidden = round(e * out), conv2 =
    DW(hidden) -> PW(hidden -> out); no biases in these convs (DreamLite's, so its weights load as they are).
    """

    def __init__(self, *, in_ch: int, out_ch: int, temb_dim: int | None, conv: str = "regular",
                 expansion: float = 1.0, sep_block: str = "per_conv", groups: int = 32, eps: float = 1e-5,
                 norm: bool = True, shortcut: bool = True):
        super().__init__()
        if in_ch != out_ch and not shortcut:
            raise ValueError(f"ResBlock {in_ch}->{out_ch} changes width but has no shortcut conv")
        uib = conv == "separable" and sep_block == "uib"
        mid_ch = int(round(expansion * out_ch)) if uib else out_ch  # width between conv1 and conv2
        self.norm1 = make_norm(groups, in_ch, eps, norm)
        if uib:
            self.conv1 = SepConv(in_ch=in_ch, out_ch=mid_ch, bias=False)  # (B, in, H, W) -> (B, e*out, H, W)
        else:
            self.conv1 = make_conv(conv, in_ch, out_ch, expansion)
        self.time_emb_proj = nn.Linear(temb_dim, mid_ch) if temb_dim else None
        self.norm2 = make_norm(groups, mid_ch, eps, norm)
        if uib:
            self.conv2 = SepConv(in_ch=mid_ch, out_ch=out_ch, bias=False)  # (B, e*out, H, W) -> (B, out, H, W)
        else:
            self.conv2 = make_conv(conv, out_ch, out_ch, expansion)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return x + h


class GEGLUFeedForward(nn.Module):
    """Gated FFN: proj_in to 2 * hidden, hidden * GELU(gate), proj_out. hidden = int(dim * ratio)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.proj_in = nn.Linear(dim, 2 * hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """[self-attention] -> [cross-attention] -> gated FFN, each pre-LayerNorm with a residual."""

    def __init__(self, dim: int, context_dim: int, heads: int, self_kv_heads: int, cross_kv_heads: int,
                 head_dim: int, ffn_ratio: float, self_attention: bool, cross_attention: bool,
                 qk_norm: str, rope: bool):
        super().__init__()
        if self_attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(dim, None, heads, self_kv_heads, head_dim, qk_norm, rope)
        if cross_attention:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = Attention(dim, context_dim, heads, cross_kv_heads, head_dim, qk_norm, rope=False)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, ffn_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, rope=None) -> torch.Tensor:
        if hasattr(self, "attn1"):
            x = x + self.attn1(self.norm1(x), rope=rope)
        if hasattr(self, "attn2"):
            x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> linear proj_in -> transformer blocks on H*W tokens -> proj_out, plus a residual.

    As diffusers' Transformer2DModel with use_linear_projection. When in_ch != out_ch (transformer-only
    layers, SnapGen step f) the residual goes through a 1x1 conv.
    """

    def __init__(self, in_ch: int, out_ch: int, depth: int, make_block, groups: int = 32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.proj_in = nn.Linear(in_ch, out_ch)
        self.blocks = nn.ModuleList([make_block() for _ in range(depth)])
        self.proj_out = nn.Linear(out_ch, out_ch)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.uses_rope = any(getattr(getattr(b, "attn1", None), "rope", False) for b in self.blocks)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, C, H, W) -> (B, H*W, C)
        tokens = self.proj_in(tokens)
        rope = None
        if self.uses_rope:
            from .attention import rope_2d_tables
            rope = rope_2d_tables(h, w, self.blocks[0].attn1.head_dim, device=x.device)
        for block in self.blocks:
            tokens = block(tokens, context, rope)
        tokens = self.proj_out(tokens)
        out = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # (B, H*W, C) -> (B, C, H, W)
        residual = self.shortcut(x) if self.shortcut is not None else x
        return out + residual


class Downsample(nn.Module):
    def __init__(self, ch: int, conv: str = "regular", expansion: float = 1.0):
        super().__init__()
        self.conv = make_conv(conv, ch, ch, expansion, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x then a 3x3 conv (which may change the width: SnapGen decoder)."""

    def __init__(self, in_ch: int, out_ch: int, conv: str = "regular", expansion: float = 1.0):
        super().__init__()
        self.conv = make_conv(conv, in_ch, out_ch, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, [cos, sin] order (diffusers: flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))
