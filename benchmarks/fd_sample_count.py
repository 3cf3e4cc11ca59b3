"""Measurement: the domain FD's sample-to-sample spread at several sample counts (docs/quality.md).

One proxy as studies/quick.toml trains it (snapgen-unet at the study's width, 1/7, on mnist5k, 64 steps, seed 0) is
sampled --seeds times with different sampling seeds (512 images each, the evaluator's sampler: Euler 8 steps,
CFG 2, balanced classes); the FD of the first n images of each seed's set is computed for every n in --counts
(nested subsets, so one generation serves all counts). Printed per n: mean FD over sampling seeds, its standard
deviation (the metric's noise at that count for this model), the real-image floor (FD of n held-out real images,
training/fidelity.py's domain_floor) and the sampling seconds n images cost. The FD needs n > 128 (its feature
width), so counts start above it.

  python benchmarks/fd_sample_count.py [--seeds 4] [--counts 192 256 384 512]
"""
from __future__ import annotations

import argparse
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

from search_space import PRESETS  # noqa: E402
from training.data import load_data  # noqa: E402
from training.fidelity import domain_floor, domain_metrics  # noqa: E402
from training.proxy import ProxyConfig, proxy_spec  # noqa: E402
from training.text import DEFAULT_ENCODER, class_prompt_embeddings  # noqa: E402
from training.config import LoopConfig  # noqa: E402
from training.quality_run import train  # noqa: E402
from training.sample import sample_classes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--counts", type=int, nargs="+", default=[192, 256, 384, 512])
    p.add_argument("--budget", default="64steps")  # the quick study's first rung
    args = p.parse_args()
    data = load_data("mnist5k")
    prompts = class_prompt_embeddings(data.class_names, DEFAULT_ENCODER)
    proxy, _ = proxy_spec(PRESETS["snapgen-unet"], data.channels, prompts.dim, prompts.pooled_dim,
                          ProxyConfig(width_mult=128 / 896))
    t0 = time.perf_counter()
    result = train(proxy, data, prompts, args.budget, LoopConfig.quality_preset(seed=0), progress=False)
    print(f"trained {proxy.spec_id} for {args.budget} in {time.perf_counter() - t0:.0f} s, val_loss "
          f"{result.val_loss:.4f}; load average {os.getloadavg()[0]:.2f}", flush=True)
    top = max(args.counts)
    labels = torch.arange(top) % data.num_classes
    fds: dict[int, list[float]] = {n: [] for n in args.counts}
    seconds = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        x = sample_classes(result.ema, proxy, data, prompts, labels, seed, 8, 2.0, progress=False)
        seconds.append(time.perf_counter() - t0)
        for n in args.counts:
            fds[n].append(domain_metrics(x[:n], data)["fd_domain"])
        print(f"sampling seed {seed}: {top} images in {seconds[-1]:.1f} s; FD " +
              ", ".join(f"n={n}: {fds[n][-1]:.2f}" for n in args.counts), flush=True)
    per_image = statistics.median(seconds) / top
    print(f"\n{args.seeds} sampling seeds, one model; load average {os.getloadavg()[0]:.2f}")
    print("| samples n | FD mean | FD sd over seeds | sd / mean | min-max | real-image floor | sampling s (est.) |")
    print("|---|---|---|---|---|---|---|")
    for n in args.counts:
        v = fds[n]
        mean, sd = statistics.mean(v), statistics.stdev(v) if len(v) > 1 else float("nan")
        floor = domain_floor(data, n)["fd_domain_floor"] if n <= len(data.val_y) else float("nan")
        print(f"| {n} | {mean:.2f} | {sd:.2f} | {sd / mean:.3f} | {min(v):.2f}-{max(v):.2f} | {floor:.2f} | "
              f"{per_image * n:.1f} |")


if __name__ == "__main__":
    main()
