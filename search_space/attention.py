"""Attention: the module owns the weights, a swappable backend owns the math (as diffusers' processors).

Covers the attention knobs of docs/paper.md section 1 (the paper's Figure 3): MHSA / MQA / GQA (shared key-value
heads, step e), QK normalisation after the projections and 2D rotary position embedding (step g).
Backends: "sdpa" (torch's fused kernel), "math" (explicit matmuls, the export-friendly form that Core ML
maps well and that tracers such as fvcore see op by op) and "split_einsum" (one score matmul, softmax and
value matmul per head and per chunk of queries: the form Apple recommends for the Neural Engine, after
apple/ml-stable-diffusion's SPLIT_EINSUM_V2).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

_BACKEND = "sdpa"
BACKENDS = ("sdpa", "math", "split_einsum")
# Queries per chunk of the split-einsum form; apple/ml-stable-diffusion's SPLIT_EINSUM_V2 uses 512 and splits
# only per head when there are fewer queries.
SPLIT_CHUNK = 512


def get_attention_backend() -> str:
    return _BACKEND


@contextlib.contextmanager
def attention_backend(name: str):
    """Temporarily switch the attention math, e.g. `with attention_backend("math"): export(model)`."""
    global _BACKEND
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r} is not one of {', '.join(BACKENDS)}")
    previous, _BACKEND = _BACKEND, name
    try:
        yield
    finally:
        _BACKEND = previous


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (B, H, N, d), k/v (B, Hkv, M, d) with H a multiple of Hkv -> (B, H, N, d)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    if _BACKEND == "sdpa":
        if kv_heads == heads:
            return F.scaled_dot_product_attention(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    if _BACKEND == "split_einsum":
        return _attend_split(q, k, v)
    if kv_heads != heads:
        return _attend_folded(q, k, v)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.matmul(scores.softmax(dim=-1), v)


def _attend_folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shared K/V (MQA, GQA) without per-head copies: the query heads that share a K/V head become extra
    query rows of one matmul against that K/V head.

    Expanding K/V to every head instead would make Core ML materialize H copies (`tile`) and read them, so the
    graph would move as many attention bytes as MHSA; the published reason MQA is faster on a phone is that it
    moves fewer. Query head h uses K/V head h // (H / Hkv), the grouping of `repeat_interleave` and of SDPA's
    `enable_gqa`.
    """
    b, heads, n, d = q.shape
    kv_heads, m = k.shape[1], k.shape[2]
    group = heads // kv_heads
    rows = q.reshape(b, kv_heads, group * n, d)  # (B, H, N, d) -> (B, Hkv, G*N, d): heads h*G..h*G+G-1 share
    scores = torch.matmul(rows, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))  # (B, Hkv, G*N, M)
    out = torch.matmul(scores.softmax(dim=-1), v)  # (B, Hkv, G*N, d)
    return out.reshape(b, heads, n, d)  # (B, Hkv, G*N, d) -> (B, H, N, d)


def _attend_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per head, and per chunk of SPLIT_CHUNK queries: scores, softmax and values as three small ops, so the
    Neural Engine never holds all heads' (N, M) scores at once and no (B, H, N, d) transpose is needed. Query
    head h reads K/V head h // (H / Hkv) directly (MQA and GQA without copies, as `_attend_folded`)."""
    heads, kv_heads, n, d = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    group = heads // kv_heads
    chunk = SPLIT_CHUNK if n > SPLIT_CHUNK else n
    scale = 1.0 / math.sqrt(d)
    out = []
    for h in range(heads):
        kh, vh = k[:, h // group], v[:, h // group]  # (B, M, d)
        parts = []
        for start in range(0, n, chunk):
            scores = torch.einsum("bnd,bmd->bnm", q[:, h, start:start + chunk], kh) * scale
            parts.append(torch.einsum("bnm,bmd->bnd", scores.softmax(dim=-1), vh))
        out.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return torch.stack(out, dim=1)  # H x (B, N, d) -> (B, H, N, d)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim with a learned gain (QK norm, the paper's Figure 3 step g)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)  # as torch's norms: the paired initialiser (search_space/init.py) calls it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def make_qk_norm(kind: str, head_dim: int) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(head_dim)
    if kind == "layernorm":
        return nn.LayerNorm(head_dim, eps=1e-6)
    return nn.Identity()


def rope_2d_tables(height: int, width: int, head_dim: int, device=None, theta: float = 10000.0):
    """cos/sin tables (N, head_dim) for 2D RoPE on an H x W grid, N = H * W (row-major tokens).

    The first half of each head rotates with the row index, the second half with the column index; each half
    uses the 1D rotary frequencies over head_dim / 2 channels (RoPE extended from 1D to 2D).
    """
    quarter = head_dim // 4
    freqs = 1.0 / (theta ** (torch.arange(quarter, dtype=torch.float32, device=device) / quarter))
    ys = torch.arange(height, dtype=torch.float32, device=device)
    xs = torch.arange(width, dtype=torch.float32, device=device)
    ang_y = torch.outer(ys, freqs)  # (H, d/4)
    ang_x = torch.outer(xs, freqs)  # (W, d/4)
    ang_y = ang_y[:, None, :].expand(height, width, quarter)
    ang_x = ang_x[None, :, :].expand(height, width, quarter)
    # rotate_half layout per axis half: [a, a] so that x * cos + rotate_half(x) * sin rotates pairs (i, i + d/4)
    ang = torch.cat([ang_y, ang_y, ang_x, ang_x], dim=-1).reshape(height * width, head_dim)
    return ang.cos(), ang.sin()


def apply_rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, d); each half of d is rotated with its own table half."""
    half = x.shape[-1] // 2

    def rotate_half(t: torch.Tensor) -> torch.Tensor:
        a, b = t.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    x_y, x_x = x[..., :half], x[..., half:]
    rotated = torch.cat([rotate_half(x_y), rotate_half(x_x)], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Self- or cross-attention with `heads` query heads and `kv_heads` key/value heads.

    kv_heads == heads is MHSA, 1 is MQA (one shared K/V head), anything between is GQA.
    Projections have no bias and the output projection has one, as in diffusers' SDXL attention.
    """

    def __init__(self, dim: int, context_dim: int | None, heads: int, kv_heads: int, head_dim: int,
                 qk_norm: str = "none", rope: bool = False):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.rope = rope
        context_dim = context_dim or dim
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(context_dim, kv_heads * head_dim, bias=False)
        self.to_v = nn.Linear(context_dim, kv_heads * head_dim, bias=False)
        self.norm_q = make_qk_norm(qk_norm, head_dim)
        self.norm_k = make_qk_norm(qk_norm, head_dim)
        self.to_out = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        context = x if context is None else context
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, N, H*d) -> (B, H, N, d)
        k = self.to_k(context).view(b, context.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.norm_q(q), self.norm_k(k)
        if self.rope and rope is not None:
            q, k = apply_rope_2d(q, *rope), apply_rope_2d(k, *rope)
        out = attend(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)  # (B, H, N, d) -> (B, N, H*d)
        return self.to_out(out)
