"""Paired initialisation, measured: how many of the weights a one-knob change does not reach start identical?

For one-knob variants of studies/quick.toml's space (snapgen-unet base) at the quick study's proxy (width
multiplier 1/7 on mnist5k: 4 model-space channels, MiniLM's 384-wide prompts), each variant's initial
weights are compared with the base's at the same seed, two ways:
- one stream: `torch.manual_seed(seed)` then the modules' own initialisation in construction order (what a
  quality run did before search_space/init.py);
- paired: `build_model(spec, seed=seed)` (docs/quality.md, paired evaluation).
"untouched" = the modules both models have with the same parameter names and shapes (search_space.init's
`untouched_modules`); "same path and shape" also counts single tensors of a reshaped module (a bias whose
weight's fan-in, and so whose law, changed).

    PYTHONPATH=. .venv/bin/python benchmarks/paired_init.py     # a few seconds, no data or training; writes the .md
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from search_space import PRESETS, apply_overrides, build_model
from search_space.init import shared_weights
from search_space.unet import UNet
from training.proxy import ProxyConfig, proxy_spec

TABLE = Path(__file__).with_suffix(".md")

WIDTH_MULT = 128 / 896  # studies/quick.toml's proxy: the study's width, 128 channels for its widest stage
LATENT_CHANNELS = 4  # mnist5k: 32 px through 2x2 space-to-depth, 16x16x4
TEXT_DIM = 384  # MiniLM
VARIANTS = ("stages.0.channels=192", "stages.1.channels=384", "stages.2.down_transformer_depth=2",
            "conv_expansion=1.0", "ffn_ratio=2.0", "attention=mhsa", "qk_norm=none", "stages.1.self_attention=true")


def proxy(overrides: tuple[str, ...]):
    spec = apply_overrides(PRESETS["snapgen-unet"], list(overrides))
    return proxy_spec(spec, LATENT_CHANNELS, TEXT_DIM, config=ProxyConfig(width_mult=WIDTH_MULT))[0]


def one_stream(spec, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(spec)


def same_path_and_shape(a: torch.nn.Module, b: torch.nn.Module) -> tuple[int, int]:
    pb = dict(b.named_parameters())
    shared = identical = 0
    for name, p in a.named_parameters():
        q = pb.get(name)
        if q is not None and q.shape == p.shape:
            shared += p.numel()
            identical += int((p == q).sum())
    return shared, identical


def table(seed: int) -> list[str]:
    base = proxy(())
    built = {"one stream": lambda s: one_stream(s, seed), "paired": lambda s: build_model(s, seed=seed)}
    with torch.no_grad():
        params = list(build_model(base, seed=seed).parameters())
    constant = sum(p.numel() for p in params if p.unique().numel() == 1) / sum(p.numel() for p in params)
    lines = [f"Base: snapgen-unet's proxy {base.spec_id} (channels {list(base.channels)}, head width "
             f"{base.head_dim}), seed {seed}. Element counts; every variant against the base. {100 * constant:.1f}% "
             "of the base's weights are constants (norm gains and offsets, the zero output conv): under one stream "
             "little beyond them starts identical.", "",
             "| knob | untouched weights | identical: one stream | identical: paired "
             "| same path and shape | identical: one stream | identical: paired |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    with torch.no_grad():
        bases = {k: f(base) for k, f in built.items()}
        for knob in VARIANTS:
            spec = proxy((knob,))
            cells = {}
            for kind, make in built.items():
                variant = make(spec)
                cells[kind] = (shared_weights(bases[kind], variant), same_path_and_shape(bases[kind], variant))
            (n, _), (m, _) = cells["paired"]
            pct = {k: [100 * i / s for s, i in v] for k, v in cells.items()}
            lines.append(f"| {knob} | {n:,} | {pct['one stream'][0]:.1f}% | {pct['paired'][0]:.1f}% | {m:,} "
                         f"| {pct['one stream'][1]:.1f}% | {pct['paired'][1]:.2f}% |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=TABLE)
    args = ap.parse_args()
    command = "PYTHONPATH=. .venv/bin/python benchmarks/paired_init.py" + (f" --seed {args.seed}" if args.seed else "")
    text = "\n".join([
        "# Paired initialisation: the weights a one-knob change does not reach", "",
        f"Command (torch {torch.__version__}, {datetime.date.today()}; counts, not timings: any host gives these; "
        "exact counts of one deterministic build per seed, so no interval or chance level applies):",
        "", f"    {command}", "",
        "Each one-knob variant of studies/quick.toml's space at the quick study's proxy (width multiplier "
        f"{WIDTH_MULT:.4g}, mnist5k) against the base at the same seed. *One stream*: `torch.manual_seed(seed)` then "
        "every module's initialisation in construction order (how runs were initialised before "
        "search_space/init.py). *Paired*: `build_model(spec, seed=seed)`. *Untouched weights*: the parameters "
        "of the modules both models have with the same parameter names and shapes. *Same path and shape* also "
        "counts single tensors of a module the knob reshaped (a bias whose weight's fan-in, and so whose "
        "initialisation law, changed): the paired column below 100% is those biases.", "",
        *table(args.seed), ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
