"""Proxy fidelity: does a short quality run rank architectures the way the reference budget does? (docs/quality.md)

The paper (docs/paper.md section 1) scores each design step by FID after long ImageNet training; a search can only afford
short proxy runs. This benchmark trains specs that are each ONE knob away from a common base (covering every
knob of studies/quick.toml) on MNIST-5k at several step budgets and seeds, then reports
- the ceiling: Kendall tau between the rankings of two seeds at the reference budget (no short budget can agree
  with the reference better than the reference agrees with itself);
- per short budget: tau of its seed-averaged ranking against the seed-averaged reference ranking, with a
  one-sided permutation p-value (chance level: tau = 0);
for the deterministic validation loss and for the domain FD. Runs go to a JSONL file as they finish and the
table is rewritten after each one, so a late or interrupted run still leaves a usable table; a rerun resumes.

    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py                      # ~1 h on 2 shared cores
    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py --ref 24 --budgets 12 --specs 3 --out /tmp/pf.md
"""
from __future__ import annotations

import os

# Passive OpenMP waiting: on shared CPUs, spinning threads slow every process (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from pathlib import Path  # noqa: E402

TABLE = Path(__file__).with_suffix(".md")
# [choose] sized for ~70 min of wall time on 2 CPU cores shared with ~5 other jobs (measured first: the base's
# proxy takes ~0.7 s per batch-32 step at load ~7.5; the full-depth snapgen-unet proxy at width 1/7 took ~6 s):
# - base: snapgen-unet's structure (stage-0 CA-only layers, SA only in stage 2, separable convs x2, FFN x3, MQA,
#   QK RMSNorm, RoPE) with 1 down / 2 up layers per stage and transformer depth 1 (mid block 1);
# - one study-wide width multiplier 1/14 (widest 896 -> 56 channels, head width 64 -> 4, heads kept);
# - MNIST-5k at 32 px through 4x4 space-to-depth: an 8x8x16 model space;
# - step budgets 16, 32, 48 against a reference of 96 (batch 32; 96 steps = 0.7 epoch), 2 seeds, 200 samples;
#   a smoke run measured ~1.6 s per step including validation and ~45 s per run in all, with 2 workers.
BASE = "snapgen-unet"
BASE_OVERRIDES = tuple(f"stages.{i}.{k}={v}" for i in range(3) for k, v in
                       (("down_layers", 1), ("up_layers", 2), ("down_transformer_depth", 1),
                        ("up_transformer_depth", 1))) + ("mid_transformer_depth=1",)
# One knob each, with quick.toml's names and values (depths at the base's scale: 1 -> 2).
VARIANTS = (
    ("base", ()),
    ("stages.0.channels=192", ("stages.0.channels=192",)),
    ("stages.1.channels=384", ("stages.1.channels=384",)),
    ("stages.2.channels=640", ("stages.2.channels=640",)),
    ("stages.2.channels=768", ("stages.2.channels=768",)),
    ("stages.2.down_transformer_depth=2", ("stages.2.down_transformer_depth=2",)),
    ("stages.2.up_transformer_depth=2", ("stages.2.up_transformer_depth=2",)),
    ("stages.1.self_attention=true", ("stages.1.self_attention=true",)),
    ("conv_expansion=1.0", ("conv_expansion=1.0",)),
    ("ffn_ratio=2.0", ("ffn_ratio=2.0",)),
    ("attention=mhsa", ("attention=mhsa",)),
    ("qk_norm=none", ("qk_norm=none",)),
)
DATA = "mnist5k-p4"
WIDTH_MULT = 1 / 14
REF_STEPS = 96
SHORT_STEPS = (16, 32, 48)
SEEDS = (0, 1)
BATCH = 32
SAMPLES = 200
WORKERS = 2
PERMUTATIONS = 10000
TAU_TARGET = 0.7
METRICS = (("val_loss", "validation loss"), ("fd_domain", "domain FD"))
SIZING = (
    "The CPU is the constraint: 2 cores, 2 worker processes of 1 thread. Measured first: the base's proxy takes "
    "about 0.23 s per batch-32 step on one thread (the full-depth snapgen-unet proxy at width 1/7 took ~6 s, "
    "too slow for a 2-hour benchmark); a run adds ~10 s of validation and sampling. So: base = snapgen-unet's "
    "structure (stage-0 CA-only layers, SA only in stage 2, separable convs x2, FFN x3, MQA, QK RMSNorm, RoPE) "
    "with 1 down / 2 up layers per stage and transformer depth 1 (mid 1); one study-wide width multiplier "
    "{width:.4g} (896 -> 56 channels, head width 64 -> 4, heads kept); MNIST-5k at 32 px through 4x4 "
    "space-to-depth (8x8x16 model space); batch {batch} (the {ref}-step reference = {epochs:.1f} epochs of the "
    "4,500 training digits); step budgets with warm-up 10 and linear decay to zero; {samples} samples per run "
    "(8 Euler steps, CFG 2) for the domain FD (MNIST-classifier features, not Inception). Each spec differs from "
    "the base in ONE knob of studies/quick.toml (depth knobs at the base's scale, 1 -> 2). Runs are resumable "
    "and shared across passes through the JSONL file, so a longer reference reuses every shorter run; 2 seeds "
    "of a 768-step reference were 24 new runs: 79 min on the 2 shared cores (a planned 384-step budget was "
    "dropped once the reference's seed ceiling came out near zero: no budget could then be shown to rank, and the CPU went "
    "to the distillation benchmark)."
)

_DATA = None


def _init_worker(data_source: str) -> None:
    global _DATA
    import torch

    torch.set_num_threads(1)
    from training.data import load_data
    _DATA = load_data(data_source)


def build_spec(overrides: tuple[str, ...]):
    from search_space import PRESETS, apply_overrides
    return apply_overrides(PRESETS[BASE], list(BASE_OVERRIDES) + list(overrides))


def run_one(label: str, overrides: tuple[str, ...], steps: int, seed: int, batch: int, samples: int,
            width_mult: float) -> dict:
    from evaluators.quality import evaluate_quality
    from training.config import LoopConfig
    from training.proxy import ProxyConfig

    r = evaluate_quality(build_spec(overrides), _DATA, f"{steps}steps", seed, num_samples=samples,
                         train_config=LoopConfig.quality_preset(batch_size=batch),
                         proxy_config=ProxyConfig(width_mult=width_mult), progress=False)
    keep = ("status", "steps", "val_loss", "fd_domain", "kid_domain", "fd_domain_floor", "kid_domain_floor",
            "params_proxy", "proxy_spec_id", "seconds_train", "seconds_sample", "seconds_total", "stream_digest",
            "metrics_invalid")
    out = {k: r[k] for k in keep if k in r}
    out.update({"spec": label, "budget": steps, "seed": seed, "channels": r["proxy"]["channels"][1],
                "curve": [h["val_loss"] for h in r["history"]]})
    return out


# --- statistics -------------------------------------------------------------------------------------------

def _agreement(a: list[float], b: list[float]) -> dict:
    """Kendall tau of two rankings of the same specs with its one-sided permutation p (evaluators/stats.py)."""
    from evaluators.stats import kendall_tau, permutation_p
    return {"tau": kendall_tau(a, b), "p": permutation_p(a, b, PERMUTATIONS), "n": len(a)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarize(rows: list[dict], specs: list[str], ref: int, shorts: tuple[int, ...], seeds: tuple[int, ...]) -> dict:
    """Ceiling and per-budget agreement from whatever runs are finished (specs missing a run are left out)."""
    by = {(r["spec"], r["budget"], r["seed"]): r for r in rows if r.get("status") == "ok"}

    def value(spec, budget, seed, metric):
        r = by.get((spec, budget, seed))
        return None if r is None or r.get(metric) is None else float(r[metric])

    def agreement(x: int, y: int, metric: str):
        ok = [s for s in specs if all(value(s, bud, sd, metric) is not None for bud in (x, y) for sd in seeds)]
        if len(ok) < 3:
            return None
        return _agreement([_mean([value(s, x, sd, metric) for sd in seeds]) for s in ok],
                          [_mean([value(s, y, sd, metric) for sd in seeds]) for s in ok])

    out: dict = {"ceiling": {}, "budgets": {}, "adjacent": {}, "within_ref": {}}
    # Within the reference runs: the seed-mean ranking by validation loss at each of the run's validation points
    # against the final one (the curves themselves: do designs still overtake each other late in the run?).
    curves = {s: [by[(s, ref, sd)].get("curve") for sd in seeds] for s in specs
              if all((s, ref, sd) in by for sd in seeds)}
    curves = {s: c for s, c in curves.items() if all(c) and len({len(x) for x in c}) == 1}
    if len(curves) >= 3:
        points = min(len(c[0]) for c in curves.values())
        ok = [s for s in specs if s in curves and len(curves[s][0]) == points]
        final = [_mean([c[-1] for c in curves[s]]) for s in ok]
        for i in range(points - 1):
            out["within_ref"][round(ref * (i + 1) / points)] = _agreement([_mean([c[i] for c in curves[s]])
                                                                           for s in ok], final)
    ladder = sorted(set(shorts) | {ref})
    for metric, _ in METRICS:
        # Have the curves stopped crossing? Each budget's ranking against the next larger budget's.
        for x, y in zip(ladder, ladder[1:]):
            c = agreement(x, y, metric)
            if c is not None:
                out["adjacent"].setdefault((x, y), {})[metric] = c
        if len(seeds) >= 2:
            ok = [s for s in specs if all(value(s, ref, sd, metric) is not None for sd in seeds[:2])]
            if len(ok) >= 3:
                out["ceiling"][metric] = _agreement([value(s, ref, seeds[0], metric) for s in ok],
                                                    [value(s, ref, seeds[1], metric) for s in ok])
        for budget in shorts:
            c = agreement(budget, ref, metric)
            if c is not None:
                out["budgets"].setdefault(budget, {})[metric] = c
    return out


def write_table(path: Path, rows: list[dict], args, started: float, done: int, total: int) -> None:
    import torch

    specs = [label for label, _ in VARIANTS][:args.specs]
    seeds = tuple(SEEDS[:args.seeds])
    s = summarize(rows, specs, args.ref, tuple(args.budgets), seeds)
    elapsed = time.time() - started
    lines = [f"# Proxy fidelity: step budgets {', '.join(map(str, args.budgets))} vs reference {args.ref} steps "
             f"(MNIST-5k, {len(seeds)} seeds)", "",
             (f"Regenerated with --report from the {done} runs stored in {(args.runs or path.with_suffix('.jsonl')).name} "
              f"(the per-run wall times below say what each run cost)." if args.report else
              f"{done} of {total} runs finished after {elapsed / 60:.0f} min"
              + ("" if done == total else " (partial: the benchmark was still running when this was written)") + "."),
             "",
             f"`{invocation(args)}` on {platform.machine()}, "
             f"{os.cpu_count()} CPUs shared with other jobs, {args.workers} worker processes of 1 thread each.",
             "",
             "**How it is sized.** " + SIZING.format(ref=args.ref, epochs=args.ref * args.batch / 4500,
                                                      width=args.width_mult, batch=args.batch, samples=args.samples),
             "",
             "**Reading it.** Kendall tau is +1 for identical rankings, 0 at chance, -1 reversed. p = one-sided "
             f"permutation p-value ({PERMUTATIONS} shuffles) of a tau at least this large when the rankings are "
             "unrelated. The ceiling is the agreement of two seeds at the reference budget: the most any short "
             "budget can show.", ""]
    lines += ["| agreement | metric | specs | Kendall tau | p (chance: tau = 0) |", "|---|---|---|---|---|"]
    names = dict(METRICS)
    for metric, c in s["ceiling"].items():
        lines.append(f"| ceiling: seed {seeds[0]} vs seed {seeds[1]} at {args.ref} steps | {names[metric]} | "
                     f"{c['n']} | {c['tau']:+.3f} | {c['p']:.3g} |")
    for budget in sorted(s["budgets"]):
        for metric, c in s["budgets"][budget].items():
            lines.append(f"| {budget} steps (seed mean) vs {args.ref} steps (seed mean) | {names[metric]} | {c['n']} | "
                         f"{c['tau']:+.3f} | {c['p']:.3g} |")
    lines += ["", "**Have the learning curves stopped crossing?** Each budget's seed-mean ranking against the next "
              "larger budget's (a tau near the seed ceiling means the ranking has settled; a tau well below it means "
              "designs still overtake each other between the two budgets).", "",
              "| budgets | metric | specs | Kendall tau | p (chance: tau = 0) |", "|---|---|---|---|---|"]
    for (x, y), per in sorted(s["adjacent"].items()):
        for metric, c in per.items():
            lines.append(f"| {x} vs {y} steps | {names[metric]} | {c['n']} | {c['tau']:+.3f} | {c['p']:.3g} |")
    if s["within_ref"]:
        lines += ["", f"Within the {args.ref}-step reference runs themselves (validation loss at the run's evaluation "
                      f"points, seed mean, against its final value; the learning rate is still decaying at these points):",
                  "", "| at step | specs | Kendall tau vs final | p |", "|---|---|---|---|"]
        for step, c in sorted(s["within_ref"].items()):
            lines.append(f"| {step} of {args.ref} | {c['n']} | {c['tau']:+.3f} | {c['p']:.3g} |")
    lines.append("")
    for metric, label in METRICS:
        reach = [b for b in sorted(s["budgets"]) if metric in s["budgets"][b]
                 and s["budgets"][b][metric]["tau"] >= TAU_TARGET]
        if reach:
            lines.append(f"- {label}: the smallest budget with tau >= {TAU_TARGET} is **{reach[0]} steps** "
                         f"(tau {s['budgets'][reach[0]][metric]['tau']:+.3f}).")
        elif any(metric in v for v in s["budgets"].values()):
            best = max((b for b in s["budgets"] if metric in s["budgets"][b]),
                       key=lambda b: s["budgets"][b][metric]["tau"])
            lines.append(f"- {label}: no budget reaches tau >= {TAU_TARGET}; the best is {best} steps "
                         f"(tau {s['budgets'][best][metric]['tau']:+.3f}, p {s['budgets'][best][metric]['p']:.3g}).")
    lines += ["", "## Per spec (mean over seeds; val = validation loss, FD = domain FD)", ""]
    budgets = list(args.budgets) + [args.ref]
    lines.append("| spec | proxy channels | params (M) | " + " | ".join(f"val {b}" for b in budgets) + " | "
                 + " | ".join(f"FD {b}" for b in budgets) + " |")
    lines.append("|---" * (3 + 2 * len(budgets)) + "|")
    by = {}
    for r in rows:
        by.setdefault((r["spec"], r["budget"]), []).append(r)
    for spec in specs:
        first = next((r for r in rows if r["spec"] == spec and "channels" in r), None)
        if first is None:
            continue

        def cell(budget, metric):
            vals = [r[metric] for r in by.get((spec, budget), []) if r.get(metric) is not None]
            return f"{_mean(vals):.4f}" if metric == "val_loss" and vals else (f"{_mean(vals):.2f}" if vals else "-")
        lines.append(f"| {spec} | {first['channels']} | {first['params_proxy'] / 1e6:.3f} | "
                     + " | ".join(cell(b, "val_loss") for b in budgets) + " | "
                     + " | ".join(cell(b, "fd_domain") for b in budgets) + " |")
    floors = [r["fd_domain_floor"] for r in rows if r.get("fd_domain_floor") is not None]
    if floors:
        lines += ["", f"FD noise floor ({args.samples} held-out real digits vs the reference set): "
                      f"{_mean(floors):.2f}."]
    timed = [r for r in rows if "seconds_total" in r]
    if timed:
        lines += [f"Mean wall time per run {_mean([r['seconds_total'] for r in timed]):.0f} s (training "
                  f"{_mean([r['seconds_train'] for r in timed]):.0f} s, sampling "
                  f"{_mean([r['seconds_sample'] for r in timed]):.0f} s); torch {torch.__version__}."]
    errors = [r for r in rows if r.get("status") != "ok"]
    if errors:
        lines += [f"{len(errors)} run(s) not ok and left out: "
                  + "; ".join(f"{r['spec']} {r['budget']} steps seed {r['seed']}: {r['status']}" for r in errors[:5])]
    path.write_text("\n".join(lines) + "\n")


def invocation(args: argparse.Namespace) -> str:
    """The command that regenerates this table: the reference and budgets, and every other setting that is not
    its default (the runs of any other setting are not in the stored JSONL)."""
    parts = ["PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py", f"--ref {args.ref}",
             "--budgets " + " ".join(map(str, args.budgets))]
    for name, default in (("specs", len(VARIANTS)), ("seeds", len(SEEDS)), ("batch", BATCH), ("samples", SAMPLES),
                          ("width_mult", WIDTH_MULT), ("data", DATA), ("out", TABLE), ("runs", None)):
        if getattr(args, name) != default:
            parts.append(f"--{name.replace('_', '-')} {getattr(args, name)}")
    return " ".join(parts + (["--report"] if args.report else []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", type=int, default=REF_STEPS, help="reference budget in steps")
    p.add_argument("--budgets", type=int, nargs="+", default=list(SHORT_STEPS), help="short budgets in steps")
    p.add_argument("--specs", type=int, default=len(VARIANTS), help="use the first N specs (base first)")
    p.add_argument("--seeds", type=int, default=len(SEEDS))
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--samples", type=int, default=SAMPLES)
    p.add_argument("--width-mult", type=float, default=WIDTH_MULT)
    p.add_argument("--workers", type=int, default=WORKERS)
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", type=Path, default=TABLE, help="markdown table; runs go to the same name .jsonl")
    p.add_argument("--runs", type=Path, default=None,
                   help="the JSONL of runs to read and extend (default: --out with the .jsonl suffix)")
    p.add_argument("--report", action="store_true", help="only rewrite the table from the runs already stored")
    args = p.parse_args()
    runs_file = args.runs or args.out.with_suffix(".jsonl")
    if args.report:
        rows = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.is_file() else []
        write_table(args.out, rows, args, time.time(), len(rows), len(rows))
        print(args.out.read_text())
        return

    # Warm the caches once (domain classifier, reference statistics) so the workers never race to write them.
    from training.data import load_data
    from training.fidelity import domain_floor
    data = load_data(args.data)
    print(f"noise floor at {args.samples} samples: {domain_floor(data, args.samples)}", flush=True)

    variants = VARIANTS[:args.specs]
    for label, overrides in variants:  # fail fast on a bad override, before any training
        build_spec(overrides)
    seeds = SEEDS[:args.seeds]
    # Reference first (the ceiling needs it), then the short budgets from the cheapest up.
    plan = [(label, ov, b, sd) for b in [args.ref] + sorted(args.budgets) for sd in seeds for label, ov in variants]
    rows = [json.loads(line) for line in runs_file.read_text().splitlines()] if runs_file.is_file() else []
    done_keys = {(r["spec"], r["budget"], r["seed"]) for r in rows}
    todo = [t for t in plan if (t[0], t[2], t[3]) not in done_keys]
    started = time.time()
    print(f"{len(plan)} runs planned, {len(plan) - len(todo)} already in {runs_file}", flush=True)
    write_table(args.out, rows, args, started, len(plan) - len(todo), len(plan))
    with ProcessPoolExecutor(max_workers=args.workers, initializer=_init_worker, initargs=(args.data,)) as pool:
        futures = {pool.submit(run_one, label, ov, b, sd, args.batch, args.samples, args.width_mult): (label, b, sd)
                   for label, ov, b, sd in todo}
        for fut in as_completed(futures):
            label, b, sd = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # one failed run must not lose the others: record it and go on
                row = {"spec": label, "budget": b, "seed": sd, "status": f"error: {type(e).__name__}: {e}"}
            rows.append(row)
            with runs_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{time.time() - started:7.0f}s  {label:36s} {b:4d} steps seed {sd}  val {row.get('val_loss')}  "
                  f"FD {row.get('fd_domain')}  {row.get('seconds_total')} s  {row['status']}", flush=True)
            write_table(args.out, rows, args, started, len([r for r in rows if (r["spec"], r["budget"], r["seed"])
                                                            in {(t[0], t[2], t[3]) for t in plan}]), len(plan))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
