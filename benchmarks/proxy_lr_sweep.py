"""Learning rate and warm-up of the quality run, swept on the default proxy regime (docs/quality.md).

A budget is a budget only if the runs it buys leave the trivial regime: this sweep trains the two presets the
default study enqueues (snapgen-unet, the paper's final design, and fig3-a, its baseline: the cheapest and the
slowest learner of the study's space) at the default regime (MNIST-5k through 2x2 space-to-depth, 16x16x4; the
default proxy width) for each learning rate, warm-up and step budget, on two seeds, and reports the learned
fraction of each (training/baselines.py: 0 = the mean-image predictor, 1 = the best linear denoiser).

    PYTHONPATH=. .venv/bin/python benchmarks/proxy_lr_sweep.py               # ~40 min on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/proxy_lr_sweep.py --report      # rewrite the table from the runs
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import quality_row, read_rows, run_plan  # noqa: E402

TABLE = Path(__file__).with_suffix(".md")
SPECS = ("snapgen-unet", "fig3-a")
LRS = (1.5e-3, 2e-3, 3e-3, 4.5e-3, 6e-3)
WARMUPS = (10, 25)  # 25 only at the middle learning rate: the warm-up's effect next to the rate's
BUDGETS = (48, 96)
SEEDS = (0, 1)
DATA = "mnist5k"
SAMPLES = 64  # the sweep reads the validation loss; a few samples keep the run's sampling cheap
WORKERS = 2
GATE = 0.5  # a budget whose best runs stay below this learned fraction is not a quality budget (docs/quality.md)


def run(spec: str, steps: int, seed: int, lr: float, warmup_steps: int) -> dict:
    from search_space import PRESETS

    return quality_row(PRESETS[spec], steps, seed, samples=SAMPLES, lr=lr, warmup_steps=warmup_steps)


def plan() -> list[dict]:
    entries = [dict(spec=s, steps=b, seed=sd, lr=lr, warmup_steps=WARMUPS[0])
               for b in BUDGETS for s in SPECS for lr in LRS for sd in SEEDS]
    middle = LRS[len(LRS) // 2]
    entries += [dict(spec=s, steps=b, seed=sd, lr=middle, warmup_steps=w)
                for w in WARMUPS[1:] for b in BUDGETS for s in SPECS for sd in SEEDS]
    return entries


def table(rows: list[dict], started: float, command: str) -> str:
    ok = [r for r in rows if r.get("status") == "ok" and r.get("learned_fraction") is not None]
    first = ok[0] if ok else {}
    lines = [f"# Learning rate and warm-up of the quality run on the default proxy regime ({DATA}, default width)",
             "", f"`{command}` on {platform.machine()}; {len(ok)} of {len(plan())} runs finished "
             f"({(time.time() - started) / 60:.0f} min this invocation). Seeds {', '.join(map(str, SEEDS))}; batch 32; "
             "linear decay to zero at the budget's end; the learned fraction is (constant - val) / (constant - "
             f"linear-Gaussian) with the regime's baselines: constant {first.get('val_loss_constant', float('nan')):.4f}, "
             f"class mean {first.get('val_loss_class_mean', float('nan')):.4f}, linear-Gaussian "
             f"{first.get('val_loss_linear', float('nan')):.4f} (validation loss).", "",
             "Learned fraction, mean over seeds (min-max); the best learning rate of each row in bold. Two seeds give "
             "a range, not an interval: a bold entry whose range overlaps its neighbours' is not resolved from them "
             "(chance: any of the overlapping rates); the sweep decides only where a rate's whole range is below "
             "the gate.", "",
             "| spec | steps | warm-up | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " | s / step |",
             "|---|---|---|" + "---|" * (len(LRS) + 1)]
    verdicts = []
    for steps in BUDGETS:
        best_of_budget = []
        for spec in SPECS:
            for w in WARMUPS:
                cells, means = [], {}
                for lr in LRS:
                    got = [r["learned_fraction"] for r in ok if (r["spec"], r["steps"], r["lr"], r["warmup_steps"])
                           == (spec, steps, lr, w)]
                    if got:
                        means[lr] = statistics.mean(got)
                        cells.append(f"{means[lr]:.3f} ({min(got):.3f}-{max(got):.3f})")
                    else:
                        cells.append("")
                if not any(cells):
                    continue
                best = max(means, key=means.get)
                cells = [f"**{c}**" if lr == best else c for c, lr in zip(cells, LRS)]
                step_s = [r["train_step_seconds"] for r in ok if (r["spec"], r["steps"], r["warmup_steps"])
                          == (spec, steps, w) and r.get("train_step_seconds")]
                speed = f"{statistics.median(step_s):.2f}" if step_s else ""
                lines.append(f"| {spec} | {steps} | {w} | " + " | ".join(cells) + f" | {speed} |")
                best_of_budget.append(means[best])
        if best_of_budget:
            worst = min(best_of_budget)
            verdicts.append(f"- {steps} steps: the slowest spec's best learned fraction is {worst:.3f}: "
                            + ("a quality budget" if worst >= GATE else
                               f"below {GATE}, not a quality budget for this space (its rung ranks by cost only)"))
    lines += ["", "Which budgets leave the trivial regime (the gate is a learned fraction of {:.1f}):".format(GATE),
              "", *verdicts, ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=WORKERS)
    p.add_argument("--out", type=Path, default=TABLE, help="markdown table; runs go to the same name .jsonl")
    p.add_argument("--report", action="store_true", help="only rewrite the table from the runs already stored")
    args = p.parse_args()
    command = "PYTHONPATH=. .venv/bin/python benchmarks/proxy_lr_sweep.py" + (
        f" --out {args.out}" if args.out != TABLE else "")
    runs_file = args.out.with_suffix(".jsonl")
    started = time.time()

    def write(rows: list[dict]) -> None:
        args.out.write_text(table(rows, started, command))

    rows = read_rows(runs_file) if args.report else run_plan(plan(), run, runs_file, DATA, args.workers, write)
    write(rows)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
