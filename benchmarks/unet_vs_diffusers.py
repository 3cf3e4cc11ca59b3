"""Benchmark: our UNet blocks against diffusers' on the same architecture and input (docs/benchmarks.md).

1. `sdxl-unet` layout, width-reduced to fit a CPU, vs diffusers' UNet2DConditionModel with the equivalent
   config and the same weights (loaded through the documented key mapping).
2. `snapgen-unet`, width-reduced the same way, vs diffusers' DreamLiteUNetModel (a later SnapGen-style UNet)
   configured as close as its options allow (separable convs, MQA, QK RMSNorm, no SA in the first stages).

Time: median wall time of forward + backward over --iters runs after a warm-up. Memory: peak bytes of live
tensors during forward + backward (a dispatch-mode count, allocator-independent; on CUDA also
torch.cuda.max_memory_allocated). Prints one table with ratios ours / diffusers (target: time <= 1.05,
memory <= 1.00). Run: python benchmarks/unet_vs_diffusers.py [--device cuda] [--iters 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from evaluators.cost import peak_live_bytes
from search_space import PRESETS, apply_overrides, build_model
from search_space.diffusers_compat import diffusers_unet_config, unet_state_dict_from_diffusers


def _fwd_bwd(model, args, kwargs):
    out = model(*args, **kwargs)
    out = out.sample if hasattr(out, "sample") else out
    out.float().square().mean().backward()


def _time_once(model, args, kwargs, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    _fwd_bwd(model, args, kwargs)
    if device == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _time_pair(a, a_call, b, b_call, iters: int, device: str) -> tuple[float, float]:
    """Median times, the two models interleaved (a, b, b, a, ...) so load changes hit both alike."""
    a.train(), b.train()
    for _ in range(2):  # warm-up (allocator, kernel selection)
        _time_once(a, *a_call, device), _time_once(b, *b_call, device)
    ta, tb = [], []
    for i in range(iters):
        order = ((a, a_call, ta), (b, b_call, tb)) if i % 2 == 0 else ((b, b_call, tb), (a, a_call, ta))
        for model, call, out in order:
            out.append(_time_once(model, *call, device))
    return statistics.median(ta), statistics.median(tb)


def _memory(model, args, kwargs, device: str) -> tuple[int, int]:
    live = peak_live_bytes(lambda: _fwd_bwd(model, args, kwargs))
    model.zero_grad(set_to_none=True)
    cuda_peak = 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        _fwd_bwd(model, args, kwargs)
        cuda_peak = torch.cuda.max_memory_allocated()
        model.zero_grad(set_to_none=True)
    return live, cuda_peak


def sdxl_pair(device: str, latent: int, batch: int):
    from diffusers import UNet2DConditionModel
    spec = apply_overrides(PRESETS["sdxl-unet"], [
        "stages.0.channels=128", "stages.1.channels=256", "stages.2.channels=512", "text_dim=512", "pooled_dim=256",
    ])
    ref = UNet2DConditionModel(**diffusers_unet_config(spec)).to(device)
    ours = build_model(spec).to(device)
    ours.load_state_dict(unet_state_dict_from_diffusers(ref.state_dict()), strict=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    t = torch.tensor([500.0] * batch, device=device)
    tokens = torch.randn(batch, 77, 512, generator=g).to(device)
    pooled = torch.randn(batch, 256, generator=g).to(device)
    time_ids = torch.tensor([[256.0, 256, 0, 0, 256, 256]] * batch, device=device)
    ours_call = ((x, t, tokens, pooled, time_ids), {})
    ref_call = ((x, t, tokens), {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}})
    return spec, ours, ours_call, ref, ref_call


def snapgen_pair(device: str, latent: int, batch: int):
    from diffusers import DreamLiteUNetModel
    spec = apply_overrides(PRESETS["snapgen-unet"], [
        "stages.0.channels=128", "stages.1.channels=256", "stages.2.channels=448",
    ])
    ref = DreamLiteUNetModel(
        in_channels=16, out_channels=16, block_out_channels=(128, 256, 448), layers_per_block=2,
        transformer_layers_per_block=(1, 2, 4), attention_head_dim=64, cross_attention_dim=spec.text_dim,
        use_sep_conv=True, num_kv_heads=1, qk_norm="rms_norm", ff_mult=3,
    ).to(device)
    ours = build_model(spec).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, latent, latent, generator=g).to(device)
    t = torch.tensor([500.0] * batch, device=device)
    tokens = torch.randn(batch, 77, spec.text_dim, generator=g).to(device)
    return spec, ours, ((x, t, tokens), {}), ref, ((x, t, tokens), {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for label, make in (("sdxl-unet (widths /2.5)", sdxl_pair), ("snapgen-unet (widths /2)", snapgen_pair)):
        spec, ours, ours_call, ref, ref_call = make(args.device, args.latent, args.batch)
        n_ours = sum(p.numel() for p in ours.parameters())
        n_ref = sum(p.numel() for p in ref.parameters())
        t_ours, t_ref = _time_pair(ours, ours_call, ref, ref_call, args.iters, args.device)
        m_ours, c_ours = _memory(ours, *ours_call, args.device)
        m_ref, c_ref = _memory(ref, *ref_call, args.device)
        rows.append((label, n_ours, n_ref, t_ours, t_ref, m_ours, m_ref, c_ours, c_ref))
        del ours, ref
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, latent {args.latent}x{args.latent}, forward+backward, median of {args.iters} interleaved")
    print(f"| model | params ours / diffusers (M) | time ours / diffusers (s) | time ratio | "
          f"peak live MiB ours / diffusers | memory ratio |")
    print("|---|---|---|---|---|---|")
    for label, n_o, n_r, t_o, t_r, m_o, m_r, c_o, c_r in rows:
        mem = f"{m_o / 2**20:.0f} / {m_r / 2**20:.0f}"
        ratio = m_o / m_r
        if c_o:
            mem += f" (cuda {c_o / 2**20:.0f} / {c_r / 2**20:.0f})"
        print(f"| {label} | {n_o / 1e6:.2f} / {n_r / 1e6:.2f} | {t_o:.3f} / {t_r:.3f} | {t_o / t_r:.3f} | {mem} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
