"""Proxy fidelity: does a short quality run rank architectures the way a 4x longer one does?

SNAPGEN.md section 1 scores each design step by FID after long ImageNet training; a search can only afford
short proxy runs. This benchmark trains structurally different specs (the Figure 3 chain at proxy scale plus
tiny-debug) on MNIST-5k for a short budget and for a 4x longer one, scores both with the domain FD and the
held-out flow-matching loss, and reports Kendall's tau and Spearman's rho between the two rankings.
Step budgets (not seconds) keep the comparison independent of machine load.

    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py            # ~20 min on 2 CPU cores
    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py --short 4 --specs tiny-debug fig3-a  # smoke
"""
from __future__ import annotations

import os

# Passive OpenMP waiting: on shared CPUs, spinning threads slow every process (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

# Six structurally different UNets: Figure 3 steps a, b, c1, e, g at proxy scale (self-attention placement,
# separable convs, MQA, stage-1 CA, QK-norm + RoPE) and the 2-stage tiny preset. `--specs` takes any presets.
SPECS = ("fig3-a", "fig3-b", "fig3-c1", "fig3-e", "fig3-g", "tiny-debug")
SHORT_STEPS = 15  # [choose] sized so the whole benchmark runs in ~20 min on 2 shared CPU cores
LONG_MULT = 4
BATCH = 32
SAMPLES = 100
TABLE = Path(__file__).with_suffix(".md")


def rank_agreement(a: list[float], b: list[float]) -> dict:
    from scipy.stats import kendalltau, spearmanr

    return {"kendall_tau": float(kendalltau(a, b).statistic), "spearman": float(spearmanr(a, b).statistic)}


def main() -> None:
    import torch

    from evaluators.quality import evaluate_quality
    from training.trainer import TrainConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--specs", nargs="+", default=list(SPECS))
    p.add_argument("--short", type=int, default=SHORT_STEPS, help="short budget in steps")
    p.add_argument("--long-mult", type=int, default=LONG_MULT)
    p.add_argument("--batch-size", type=int, default=BATCH)
    p.add_argument("--samples", type=int, default=SAMPLES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=TABLE, help="markdown file for the printed table")
    args = p.parse_args()

    config = TrainConfig(batch_size=args.batch_size)
    budgets = (f"{args.short}steps", f"{args.short * args.long_mult}steps")
    rows = []
    start = time.perf_counter()
    for name in args.specs:
        row = {"spec": name}
        for label, budget in zip(("short", "long"), budgets):
            r = evaluate_quality(name, "mnist5k", budget, args.seed, num_samples=args.samples,
                                 train_config=config, progress=False)
            row.update({f"{label}_fd": r.get("fd_domain", float("nan")), f"{label}_val": r["val_loss"] or float("nan"),
                        f"{label}_s": r["seconds_total"], f"{label}_status": r["status"],
                        "proxy": r["proxy_spec_id"], "params_m": r["params_proxy"] / 1e6,
                        "channels": r["proxy"]["channels"][1]})
            print(f"{name:10s} {budget:9s} fd_domain {row[f'{label}_fd']:8.2f}  val_loss {row[f'{label}_val']:.4f}"
                  f"  {r['train_images_per_s']:6.1f} img/s  {r['seconds_total']:6.1f} s  {r['status']}", flush=True)
        rows.append(row)
    ok = [r for r in rows if r["short_status"] == r["long_status"] == "ok"]
    fd = rank_agreement([r["short_fd"] for r in ok], [r["long_fd"] for r in ok])
    val = rank_agreement([r["short_val"] for r in ok], [r["long_val"] for r in ok])
    cross = rank_agreement([r["short_val"] for r in ok], [r["long_fd"] for r in ok])

    lines = [f"# Proxy fidelity: {budgets[0]} vs {budgets[1]} on MNIST-5k (seed {args.seed})", "",
             f"`PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py` on {platform.machine()} "
             f"({torch.get_num_threads()} threads, {os.cpu_count()} CPUs, shared with other jobs), batch "
             f"{args.batch_size}, {args.samples} samples per run (8 Euler steps, CFG 2), domain FD "
             f"(MNIST classifier features; not Inception FID). Total {time.perf_counter() - start:.0f} s.", "",
             "| spec | proxy | channels | params (M) | FD short | FD long | rank short | rank long | "
             "val loss short | val loss long |", "|---|---|---|---|---|---|---|---|---|---|"]
    rank = lambda key: {r["spec"]: i + 1 for i, r in enumerate(sorted(ok, key=lambda r: r[key]))}  # noqa: E731
    rs, rl = rank("short_fd"), rank("long_fd")
    for r in rows:
        lines.append(f"| {r['spec']} | {r['proxy']} | {r['channels']} | {r['params_m']:.2f} | {r['short_fd']:.2f} | "
                     f"{r['long_fd']:.2f} | {rs.get(r['spec'], '-')} | {rl.get(r['spec'], '-')} | "
                     f"{r['short_val']:.4f} | {r['long_val']:.4f} |")
    lines += ["", "| ranking agreement (short vs long) | Kendall tau | Spearman |", "|---|---|---|",
              f"| fd_domain | {fd['kendall_tau']:.3f} | {fd['spearman']:.3f} |",
              f"| validation loss | {val['kendall_tau']:.3f} | {val['spearman']:.3f} |",
              f"| short val loss vs long fd_domain | {cross['kendall_tau']:.3f} | {cross['spearman']:.3f} |", ""]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
