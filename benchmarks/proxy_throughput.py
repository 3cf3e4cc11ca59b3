"""Benchmark: proxy training throughput against the machine's limit and against diffusers (docs/benchmarks.md).

The proxies the quality evaluator trains: studies/quick.toml's presets (snapgen-unet, fig3-a) at the study's width
multiplier on its data (mnist5k: 4 x 16 x 16, MiniLM prompts, 10 tokens), and tiny-debug as a single evaluation
maps it (widths kept) on the same data. One training step = what the loop does (training/loop.py): the flow
loss through `Objective.loss`, backward, gradient clipping at 1, AdamW, the EMA update; batch 32 (the quality
evaluator's), fresh data, noise and timesteps each step.

Configurations, timed interleaved in one process (A B C A B C ..., the order rotated each round), median of
--iters steps after --warmup steps:
- `eager`: torch's per-tensor AdamW, clipping and EMA loops (`LoopConfig.fast_step` off).
- `project`: the loop's configuration now (`LoopConfig.fast_step`: fused AdamW, foreach clipping and EMA), plus
  what --compile / --channels-last add when asked (they are measured, and off in the loop unless they help).
- `diffusers`: diffusers' `UNet2DConditionModel` built to the same architecture, trained by the eager step.
diffusers' UNet2DConditionModel cannot express separable convs, MQA, QK norm, RoPE, an FFN ratio other than 4 or
stages without self-attention, so snapgen-unet and tiny-debug are also timed as their nearest expressible twin
(those knobs set to diffusers' values, the rest kept) with ours and diffusers on the same twin; fig3-a's proxy is
expressible as it is. FLOPs per step: the project's one op trace (training/throughput.py; 2 x MACs of one forward
x 3 x batch), the same count for ours and diffusers on one architecture. Roofline ratio: achieved FLOP/s over
the host's measured dense matmul peak (cached per host and thread count).

  python benchmarks/proxy_throughput.py [--iters 15] [--warmup 3] [--device cuda] [--compile] [--channels-last]

--device cuda trains in bf16 autocast (as the loop does on GPU) and prints MFU against the GPU's published dense
bf16 peak (PUBLISHED_BF16_PEAK below) beside the measured one.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

# Idle OpenMP threads spin by default; beside other work on a small machine that slows every op (as
# pocketdiff/__init__.py sets it). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_space import PRESETS, build_model  # noqa: E402
from training.data import load_data  # noqa: E402
from training.flow import flow_loss, interpolate, sample_timesteps, TIMESTEP_SCALE  # noqa: E402
from training.conditioning import Conditioner  # noqa: E402
from training.config import LoopConfig  # noqa: E402
from training.optim import clip_gradients, ema_update, make_optimizer  # noqa: E402
from training.proxy import ProxyConfig, proxy_spec  # noqa: E402
from training.text import DEFAULT_ENCODER, class_prompt_embeddings  # noqa: E402
from training.throughput import (PUBLISHED_BF16_PEAK, matmul_peak, published_peak,  # noqa: E402
                                 training_flops_per_step)

BATCH_SIZE = LoopConfig.quality_preset().batch_size  # the quality evaluator's
STUDY_WIDTH_MULT = 128 / 896  # studies/quick.toml's proxy: the study's width (its widest stage, 896, gets 128)
STUDY_DATA = "mnist5k"
PROXIES = (("snapgen-unet", ProxyConfig(width_mult=STUDY_WIDTH_MULT)),
           ("fig3-a", ProxyConfig(width_mult=STUDY_WIDTH_MULT)),
           ("tiny-debug", ProxyConfig()))


def diffusers_twin(spec):
    """The nearest spec diffusers' UNet2DConditionModel can express: regular convs, MHSA, no QK norm or RoPE,
    GEGLU x4, every stage with res blocks and both attentions; channels, depths, heads and layers kept."""
    stages = tuple(dataclasses.replace(s, self_attention=True, cross_attention=True, res_block=True)
                   for s in spec.stages)
    return spec.replace(stages=stages, conv="regular", conv_expansion=1.0, attention="mhsa", kv_heads=None,
                        share_kv_in_cross_attention=False, qk_norm="none", pos_embed="none", ffn_ratio=4.0)


@dataclasses.dataclass
class Contender:
    label: str
    model: torch.nn.Module
    call: object  # (model, x_t, t, tokens) -> prediction
    flops: float
    fast: bool
    autocast: bool = False  # bf16 autocast (the loop's `autocast`; always on for --device cuda)
    times: list = dataclasses.field(default_factory=list)
    first: float = 0.0  # the first step: includes torch.compile's compilation when it is on


class Stepper:
    """One contender's training step, with its own data stream and optimiser (the loop's step, see the module doc)."""

    def __init__(self, c: Contender, data, cond: Conditioner, device, autocast: bool, seed: int):
        self.c, self.data, self.cond, self.device, self.autocast = c, data, cond, device, autocast
        self.params = [p for p in c.model.parameters() if p.requires_grad]
        self.opt = make_optimizer([{"params": self.params}], lr=1e-4, weight_decay=0.0, fast=c.fast)
        self.ema = copy.deepcopy(c.model).eval().requires_grad_(False)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self) -> float:
        g, data = self.gen, self.data
        idx = torch.randint(0, len(data.train_y), (BATCH_SIZE,), generator=g)
        x0, labels = data.train_x[idx].to(self.device), data.train_y[idx].to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        t = sample_timesteps(BATCH_SIZE, g).to(self.device)
        sync()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        tokens, _, _ = self.cond(labels)
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast or self.c.autocast):
            pred = self.c.call(self.c.model, interpolate(x0, noise, t), t * TIMESTEP_SCALE, tokens)
        loss = flow_loss(pred, x0, noise)
        loss.backward()
        clip_gradients(self.params, 1.0, fast=self.c.fast)
        self.opt.step()
        ema_update(self.ema, self.c.model, 0.999, fast=self.c.fast)
        sync()
        return time.perf_counter() - t0


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def ours_call(model, x, t, tokens):
    return model(x, t, tokens)


def diffusers_call(model, x, t, tokens):
    return model(x, t, tokens).sample


def build_contenders(name, pconfig, data, prompts, device, args) -> list[Contender]:
    from diffusers import UNet2DConditionModel
    from search_space.diffusers_compat import diffusers_unet_config
    from search_space.errors import SpecError

    proxy, _ = proxy_spec(PRESETS[name], data.channels, prompts.dim, prompts.pooled_dim, pconfig)
    twin = diffusers_twin(proxy)
    shape, tokens = (data.channels, data.size, data.size), prompts.tokens.shape[1]
    out = []
    specs = [("", proxy)] if twin.spec_id == proxy.spec_id else [("", proxy), (" twin", twin)]
    for suffix, spec in specs:
        flops = training_flops_per_step(spec, shape, tokens, prompts.dim, BATCH_SIZE)
        for label, fast in (("eager", False), ("project", True)):
            torch.manual_seed(0)
            model = build_model(spec).to(device).train()
            call = ours_call
            if fast and args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            if fast and args.compile:
                model = torch.compile(model)
            out.append(Contender(f"{name}{suffix} {label}", model, call, flops, fast,
                                 autocast=fast and args.bf16))
        try:
            config = diffusers_unet_config(spec)
        except SpecError:
            continue  # the proxy itself has no diffusers equivalent: its twin carries the comparison
        torch.manual_seed(0)
        ref = UNet2DConditionModel(**config).to(device).train()
        out.append(Contender(f"{name}{suffix} diffusers", ref, diffusers_call, flops, False))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (at least 1)")
    p.add_argument("--compile", action="store_true", help="torch.compile the project configuration")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory for the project configuration")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the project configuration on CPU")
    p.add_argument("--refresh-peak", action="store_true", help="measure the matmul peak again (else the cached one)")
    p.add_argument("--only", nargs="*", default=None, help="preset names to run (default: all three)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    autocast = device.type == "cuda"
    dtype = torch.bfloat16 if autocast else torch.float32
    published = None
    if device.type == "cuda":
        published = published_peak(torch.cuda.get_device_name(device))
        if published is None:
            print(f"note: no published dense bf16 peak for {torch.cuda.get_device_name(device)!r} in the table "
                  f"({', '.join(PUBLISHED_BF16_PEAK)}); MFU against the measured peak only")
    data = load_data(STUDY_DATA)
    prompts = class_prompt_embeddings(data.class_names, DEFAULT_ENCODER)
    cond = Conditioner(PRESETS["tiny-debug"], prompts, data.resolution, device)
    peak = matmul_peak(device, dtype, refresh=args.refresh_peak)
    peak_bf16 = matmul_peak(device, torch.bfloat16, refresh=args.refresh_peak) if args.bf16 else peak
    started = time.time()
    load0 = os.getloadavg()[0]
    rows = []
    for name, pconfig in PROXIES:
        if args.only and name not in args.only:
            continue
        contenders = build_contenders(name, pconfig, data, prompts, device, args)
        steppers = [Stepper(c, data, cond, device, autocast, seed=i) for i, c in enumerate(contenders)]
        for s in steppers:
            s.c.first = s()
        for _ in range(args.warmup - 1):
            for s in steppers:
                s()
        for i in range(args.iters):
            k = i % len(steppers)
            for s in steppers[k:] + steppers[:k]:  # rotate the order: load changes hit every contender alike
                s.c.times.append(s())
        rows.append(contenders)
        del steppers
    load1 = os.getloadavg()[0]
    print(f"device {device} ({peak['key']['device_name']}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, dtype {str(dtype).removeprefix('torch.')}, batch {BATCH_SIZE}, data "
          f"{STUDY_DATA}, width_mult {STUDY_WIDTH_MULT}, median of {args.iters} interleaved steps after "
          f"{args.warmup} warm-up, compile={args.compile}, channels_last={args.channels_last}, bf16={args.bf16}")
    source = "cached" if peak["cached"] else "measured now"
    print(f"measured dense matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s {peak['key']['dtype']}"
          + (f", {peak_bf16['flops_per_s'] / 1e9:.1f} GFLOP/s bf16 (bf16 rows' roofline)" if args.bf16 else "")
          + f" ({source}, load average then {peak.get('load_average'):.2f}); load average {load0:.2f} at start, {load1:.2f} at end; "
          f"{time.time() - started:.0f} s")
    head = ("| proxy / configuration | step (ms) [IQR] | first step (s) | GFLOP/step | achieved GFLOP/s | "
            "roofline ratio |")
    head += " MFU (published) |" if published else ""
    print(head + " speed vs diffusers eager |")
    print("|---" * (head.count("|") - 1 + 1) + "|")
    for contenders in rows:
        ref = {c.label.rsplit(" ", 1)[0]: statistics.median(c.times) for c in contenders
               if c.label.endswith("diffusers")}
        for c in contenders:
            med = statistics.median(c.times)
            q = statistics.quantiles(c.times, n=4) if len(c.times) > 1 else [med, med, med]
            achieved = c.flops / med
            base = ref.get(c.label.rsplit(" ", 1)[0])
            roof = (peak_bf16 if c.autocast else peak)["flops_per_s"]
            line = (f"| {c.label}{' bf16' if c.autocast else ''} | {med * 1e3:.0f} [{q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}] | {c.first:.1f} | "
                    f"{c.flops / 1e9:.2f} | "
                    f"{achieved / 1e9:.2f} | {achieved / roof:.3f} |")
            if published:
                line += f" {achieved / published:.4f} |"
            line += f" {base / med:.2f}x |" if base else " (no diffusers equivalent) |"
            print(line)


if __name__ == "__main__":
    main()
