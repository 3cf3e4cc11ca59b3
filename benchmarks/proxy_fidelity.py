"""Proxy fidelity on the default regime: do short quality runs rank one-knob designs as a long reference does,
how sure can a study be, and what does a decision cost? (docs/quality.md)

Twelve specs, snapgen-unet and eleven variants one knob of studies/quick.toml away from it, trained as the
default study trains them: MNIST-5k through 2x2 space-to-depth (16x16x4), one width multiplier for the space
(1/7: heads kept at width 8, self-attention over 4x4 tokens), paired initialisation and common random numbers.
- The reference budget runs on seeds 0-3 and must end below the class-conditional Gaussian (a model that knows
  each class's pixel means and covariance), so its ranking is about what the designs learn.
- The short budgets run on seeds 4-7: a short run never shares its seed's noise with the reference run it is
  compared with.
Reported, for the validation loss (and the learned fraction, its linear rescaling) and the domain FD:
- variance components at the reference (spec vs residual, two-way ANOVA over specs x seeds, F-test);
- the split-half seed ceiling (seeds 0-1 against 2-3 at the reference: no short budget can agree with the
  reference better than the reference agrees with itself);
- Kendall tau of each short budget against the reference, with its permutation p;
- each knob's paired difference to snapgen-unet with its 95% interval (Holm over the knobs of one budget);
- a power calculation from the measured paired SD: the seeds that resolve each knob at each budget, and the
  decision cost in CPU-minutes (seeds x 2 runs x steps x step time).

    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py               # about 2 h on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py --report      # rewrite the table from the runs
    PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py --ref 24 --budgets 12 --specs 3 --out /tmp/pf.md
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import quality_row, read_rows, run_plan  # noqa: E402

TABLE = Path(__file__).with_suffix(".md")
BASE = "snapgen-unet"
# One knob each, with quick.toml's names and values; the base is snapgen-unet itself (the study's first preset).
VARIANTS = (  # the knobs most likely to matter first: `--specs N` keeps the first N
    ("base", ()),
    ("stages.0.channels=192", ("stages.0.channels=192",)),
    ("stages.1.self_attention=true", ("stages.1.self_attention=true",)),
    ("conv_expansion=1.0", ("conv_expansion=1.0",)),
    ("ffn_ratio=2.0", ("ffn_ratio=2.0",)),
    ("attention=mhsa", ("attention=mhsa",)),
    ("stages.2.channels=640", ("stages.2.channels=640",)),
    ("stages.2.down_transformer_depth=2", ("stages.2.down_transformer_depth=2",)),
    ("stages.1.channels=384", ("stages.1.channels=384",)),
    ("stages.2.channels=768", ("stages.2.channels=768",)),
    ("stages.2.up_transformer_depth=2", ("stages.2.up_transformer_depth=2",)),
    ("qk_norm=none", ("qk_norm=none",)),
)
DATA = "mnist5k"
WIDTH_MULT = 1 / 7  # what a study over quick.toml's space gets: 128 channels for its widest stage (896)
REF_STEPS = 256
SHORT_STEPS = (64,)
REF_SEEDS = (0, 1, 2, 3)
SHORT_SEEDS = (4, 5, 6, 7)
SAMPLES = 0  # no domain FD by default: 200 samples cost 30 s a run, a third of a 64-step run (--samples 200)
WORKERS = 2
PERMUTATIONS = 10000
LEVEL = 0.95
# Targets (docs/quality.md): the paired residual SD of a knob's difference at most half of the 0.037 measured on
# the old regime with one-stream initialisation; a reference that agrees with itself across seed halves at tau
# >= 0.6; a budget of at most a quarter of the reference that agrees with it at tau >= 0.6 with p < 0.05; the
# largest knob resolved in at most 15 CPU-minutes.
SD_TARGET = 0.037 / 2
TAU_TARGET = 0.6
COST_TARGET_MIN = 15.0
METRICS = (("val_loss", "validation loss", -1), ("fd_domain", "domain FD", -1))


def run(spec: str, steps: int, seed: int, samples: int = SAMPLES) -> dict:
    """One quality run of a variant (its label) at `steps` and `seed` in the worker's data."""
    return quality_row(build_spec(dict(VARIANTS)[spec]), steps, seed, samples=samples, width_mult=WIDTH_MULT)


def build_spec(overrides: tuple[str, ...]):
    from search_space import PRESETS, apply_overrides
    return apply_overrides(PRESETS[BASE], list(overrides))


def plan(specs: list[str], ref: int, budgets: list[int], ref_seeds, short_seeds) -> list[dict]:
    """The reference first (the ceiling needs it), then the short budgets from the cheapest up."""
    return ([dict(spec=s, steps=ref, seed=sd) for sd in ref_seeds for s in specs]
            + [dict(spec=s, steps=b, seed=sd) for b in sorted(budgets) for sd in short_seeds for s in specs])


# --- statistics (evaluators/stats.py) ----------------------------------------------------------------------

class Runs:
    """The finished runs by (spec, steps, seed), and the values of one metric across specs and seeds."""

    def __init__(self, rows: list[dict]):
        self.by = {(r["spec"], r["steps"], r["seed"]): r for r in rows if r.get("status") == "ok"}

    def value(self, spec: str, steps: int, seed: int, metric: str) -> float | None:
        r = self.by.get((spec, steps, seed))
        v = None if r is None else r.get(metric)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def complete(self, specs, steps: int, seeds, metric: str) -> list[str]:
        """The specs with a value at every seed."""
        return [s for s in specs if all(self.value(s, steps, sd, metric) is not None for sd in seeds)]

    def mean(self, spec: str, steps: int, seeds, metric: str) -> float:
        return statistics.mean(self.value(spec, steps, sd, metric) for sd in seeds)


def agreement(a: list[float], b: list[float]) -> dict:
    from evaluators.stats import kendall_tau, permutation_p
    return {"tau": kendall_tau(a, b), "p": permutation_p(a, b, PERMUTATIONS), "n": len(a)}


def anova(runs: Runs, specs, steps: int, seeds, metric: str) -> dict | None:
    """Two-way ANOVA without replication (specs x seeds; a seed is one block: the same data order, noise and
    shared weights for every spec): the spec effect's F-test against the spec x seed residual, and the two
    variance components (between-spec: (MS_spec - MS_resid) / seeds; residual: MS_resid)."""
    from scipy.stats import f as f_dist

    ok = runs.complete(specs, steps, seeds, metric)
    k, n = len(ok), len(seeds)
    if k < 3 or n < 2:
        return None
    y = [[runs.value(s, steps, sd, metric) for sd in seeds] for s in ok]
    grand = statistics.mean(v for row in y for v in row)
    row_means = [statistics.mean(row) for row in y]
    col_means = [statistics.mean(y[i][j] for i in range(k)) for j in range(n)]
    ss_spec = n * sum((m - grand) ** 2 for m in row_means)
    ss_seed = k * sum((m - grand) ** 2 for m in col_means)
    ss_resid = sum((y[i][j] - row_means[i] - col_means[j] + grand) ** 2 for i in range(k) for j in range(n))
    df_spec, df_resid = k - 1, (k - 1) * (n - 1)
    ms_spec, ms_resid = ss_spec / df_spec, ss_resid / df_resid
    f = ms_spec / ms_resid if ms_resid > 0 else float("inf")
    return {"specs": k, "seeds": n, "F": f, "df": (df_spec, df_resid), "p": float(f_dist.sf(f, df_spec, df_resid)),
            "between_sd": math.sqrt(max(0.0, (ms_spec - ms_resid) / n)), "residual_sd": math.sqrt(ms_resid),
            "seed_sd": math.sqrt(max(0.0, (ss_seed / (n - 1) - ms_resid) / k))}


def knob_differences(runs: Runs, specs, steps: int, seeds, metric: str) -> dict[str, dict]:
    """Each variant minus the base, paired by seed, with its interval and Holm-adjusted p over the variants."""
    from evaluators.stats import holm, paired_difference

    out = {}
    for s in specs:
        if s == "base":
            continue
        pairs = [(runs.value(s, steps, sd, metric), runs.value("base", steps, sd, metric)) for sd in seeds]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
        if len(pairs) >= 2:
            d = paired_difference([a for a, _ in pairs], [b for _, b in pairs], LEVEL)
            out[s] = {"diff": d.mean, "low": d.low, "high": d.high, "n": d.n, "p": d.p,
                      "sd": statistics.stdev([a - b for a, b in pairs])}
    adjusted = holm([v["p"] for v in out.values()], 1 - LEVEL)
    for v, p_holm, rejected in zip(out.values(), adjusted.adjusted, adjusted.rejected):
        v["p_holm"], v["resolved"] = p_holm, rejected
    return out


def seeds_to_resolve(diff: float, sd: float, most: int = 200) -> int | None:
    """The fewest paired seeds whose 95% t-interval half-width is below |diff| at this paired SD (the expected
    interval; the seeds of a real run scatter around it), or None beyond `most`."""
    from scipy.stats import t as t_dist

    if sd <= 0:
        return 2
    for n in range(2, most + 1):
        if t_dist.ppf(0.5 + LEVEL / 2, n - 1) * sd / math.sqrt(n) < abs(diff):
            return n
    return None


def summarize(rows: list[dict], specs: list[str], ref: int, shorts: list[int], ref_seeds, short_seeds) -> dict:
    runs = Runs(rows)
    out: dict = {"anova": {}, "ceiling": {}, "budgets": {}, "knobs": {}, "pooled_sd": {}, "step_seconds": {}}
    for metric, _, _ in METRICS:
        out["anova"][metric] = anova(runs, specs, ref, ref_seeds, metric)
        half = len(ref_seeds) // 2
        ok = runs.complete(specs, ref, ref_seeds, metric)
        if len(ok) >= 3 and half:
            out["ceiling"][metric] = agreement([runs.mean(s, ref, ref_seeds[:half], metric) for s in ok],
                                               [runs.mean(s, ref, ref_seeds[half:], metric) for s in ok])
        for b in shorts:
            both = [s for s in runs.complete(specs, b, short_seeds, metric) if s in ok]
            if len(both) >= 3:
                out["budgets"].setdefault(b, {})[metric] = agreement(
                    [runs.mean(s, b, short_seeds, metric) for s in both],
                    [runs.mean(s, ref, ref_seeds, metric) for s in both])
        for b, seeds in [(ref, ref_seeds)] + [(b, short_seeds) for b in shorts]:
            knobs = knob_differences(runs, specs, b, seeds, metric)
            out["knobs"].setdefault(b, {})[metric] = knobs
            if knobs:
                out["pooled_sd"].setdefault(b, {})[metric] = math.sqrt(statistics.mean(v["sd"] ** 2
                                                                                        for v in knobs.values()))
    for b in [ref] + shorts:
        secs = [r["train_step_seconds"] for r in rows if r.get("steps") == b and r.get("train_step_seconds")]
        if secs:
            out["step_seconds"][b] = statistics.median(secs)
    return out


def decision_costs(s: dict, ref: int, shorts: list[int], metric: str) -> dict[str, dict]:
    """Per knob: at each budget whose difference has the reference's sign, the seeds that resolve it at the
    measured paired SD and the CPU-minutes that costs (seeds x 2 runs x steps x step time); the cheapest."""
    reference = s["knobs"].get(ref, {}).get(metric, {})
    out = {}
    for knob, r in reference.items():
        options = []
        for b in [ref] + shorts:
            k = s["knobs"].get(b, {}).get(metric, {}).get(knob)
            sd = s["pooled_sd"].get(b, {}).get(metric)
            step = s["step_seconds"].get(b)
            if k is None or sd is None or step is None or k["diff"] * r["diff"] <= 0:
                continue
            n = seeds_to_resolve(k["diff"], sd)
            if n is not None:
                options.append({"steps": b, "seeds": n, "minutes": n * 2 * b * step / 60})
        out[knob] = min(options, key=lambda o: o["minutes"]) if options else None
    return out


# --- the table ---------------------------------------------------------------------------------------------

def _fmt(v, digits=4):
    return "-" if v is None else f"{v:.{digits}g}"


def table(rows: list[dict], args, started: float, planned: int) -> str:
    import torch

    from training.baselines import class_gaussian_loss
    from training.data import load_data

    specs = [label for label, _ in VARIANTS][:args.specs]
    ref_seeds, short_seeds = REF_SEEDS[:args.seeds], SHORT_SEEDS[:args.seeds]
    s = summarize(rows, specs, args.ref, list(args.budgets), ref_seeds, short_seeds)
    runs = Runs(rows)
    first = next((r for r in rows if r.get("val_loss_constant") is not None), {})
    bar = class_gaussian_loss(load_data(DATA))
    done = len(runs.by)
    lines = [f"# Proxy fidelity on the default regime: budgets {', '.join(map(str, args.budgets))} against a "
             f"{args.ref}-step reference ({DATA}, {len(specs)} specs)", "",
             f"`{invocation(args)}` on {platform.machine()} ({os.cpu_count()} CPUs), {args.workers} worker processes "
             f"of 1 thread; torch {torch.__version__}. {done} of {planned} runs finished"
             + ("" if args.report else f" ({(time.time() - started) / 60:.0f} min this invocation)") + ".", "",
             f"Regime: {DATA} (2x2 space-to-depth, 16x16x4), width x{WIDTH_MULT:.4g} (channels [32, 64, 112] for the "
             f"base: head width 8, self-attention over 4x4 tokens), batch 32, lr 3e-3 with a 10-step warm-up and "
             f"linear decay to zero, paired initialisation, common random numbers. Reference seeds "
             f"{list(ref_seeds)}, short-budget seeds {list(short_seeds)}. Baselines (validation loss): constant "
             f"{_fmt(first.get('val_loss_constant'))}, class mean {_fmt(first.get('val_loss_class_mean'))}, "
             f"linear-Gaussian {_fmt(first.get('val_loss_linear'))}, class-conditional Gaussian {bar:.4f}.", ""]
    # the reference's regime
    ok = runs.complete(specs, args.ref, ref_seeds, "val_loss")
    if ok:
        means = {sp: runs.mean(sp, args.ref, ref_seeds, "val_loss") for sp in ok}
        below = sum(m <= bar for m in means.values())
        lines += [f"**The reference has learned more than the class-conditional Gaussian** in {below} of {len(ok)} "
                  f"specs (seed-mean validation loss {min(means.values()):.4f}-{max(means.values()):.4f} against "
                  f"{bar:.4f})" + ("." if below == len(ok) else ": the rest are not past it, and the ranking of "
                                   "those is about how far they got, not what they can learn."), ""]
    lines += ["## Can the reference tell the designs apart?", "",
              "| metric | specs x seeds | F (spec) | p | between-spec SD | residual SD | seed SD | split-half tau | "
              "p |", "|---|---|---|---|---|---|---|---|---|"]
    for metric, label, _ in METRICS:
        a, c = s["anova"].get(metric), s["ceiling"].get(metric)
        if a:
            lines.append(f"| {label} | {a['specs']} x {a['seeds']} | {a['F']:.2f} (df {a['df'][0]}, {a['df'][1]}) | "
                         f"{a['p']:.3g} | {a['between_sd']:.4g} | {a['residual_sd']:.4g} | {a['seed_sd']:.4g} | "
                         + (f"{c['tau']:+.3f} | {c['p']:.3g} |" if c else "- | - |"))
    lines += ["", "Split-half: the seed-mean ranking of reference seeds "
              f"{list(ref_seeds[:len(ref_seeds) // 2])} against that of {list(ref_seeds[len(ref_seeds) // 2:])}; "
              f"permutation p ({PERMUTATIONS} shuffles, chance: tau = 0).", "",
              "## Do short budgets rank as the reference does?", "",
              "| budget | metric | specs | tau vs reference | p | paired SD of a knob's difference |",
              "|---|---|---|---|---|---|"]
    for b in sorted(args.budgets):
        for metric, label, _ in METRICS:
            c = s["budgets"].get(b, {}).get(metric)
            sd = s["pooled_sd"].get(b, {}).get(metric)
            if c:
                lines.append(f"| {b} steps | {label} | {c['n']} | {c['tau']:+.3f} | {c['p']:.3g} | {_fmt(sd)} |")
    sd_ref = s["pooled_sd"].get(args.ref, {}).get("val_loss")
    lines += [f"| {args.ref} steps (reference) | validation loss | | | | {_fmt(sd_ref)} |", ""]
    lines += ["## Each knob against snapgen-unet (validation loss, variant - base, paired by seed)", "",
              "| knob | " + " | ".join(f"{b} steps: diff [95%] (Holm p)" for b in sorted(args.budgets) + [args.ref])
              + " | cheapest decision |", "|---" * (2 + len(args.budgets) + 1) + "|"]
    costs = decision_costs(s, args.ref, list(args.budgets), "val_loss")
    for knob in specs[1:]:
        cells = []
        for b in sorted(args.budgets) + [args.ref]:
            k = s["knobs"].get(b, {}).get("val_loss", {}).get(knob)
            cells.append("-" if k is None or k["low"] is None else
                         f"{k['diff']:+.4f} [{k['low']:+.4f}, {k['high']:+.4f}] ({k['p_holm']:.2g})"
                         + (" **resolved**" if k["resolved"] else ""))
        c = costs.get(knob)
        cells.append(f"{c['seeds']} seeds x {c['steps']} steps: {c['minutes']:.1f} CPU-min" if c else "not resolvable")
        lines.append(f"| {knob} | " + " | ".join(cells) + " |")
    lines += ["", "A knob is resolved when its Holm-adjusted p over the knobs of one budget is below 0.05. The "
              "cheapest decision: at the budget whose difference has the reference's sign, the fewest paired seeds "
              "whose expected 95% interval excludes zero at that budget's measured paired SD, and its cost (2 runs "
              "per seed, median step time of the budget's runs).", ""]
    lines += _verdicts(s, args, costs, specs)
    lines += ["", "## Per spec (seed means)", "",
              "| spec | proxy channels | params (M) | " + " | ".join(f"val {b}" for b in sorted(args.budgets) + [args.ref])
              + " | learned fraction at the reference | FD at the reference |", "|---" * (5 + len(args.budgets) + 1) + "|"]
    for spec in specs:
        row = next((r for r in rows if r.get("spec") == spec and "channels" in r), None)
        if row is None:
            continue
        vals = []
        for b in sorted(args.budgets) + [args.ref]:
            seeds = ref_seeds if b == args.ref else short_seeds
            got = [runs.value(spec, b, sd, "val_loss") for sd in seeds]
            got = [v for v in got if v is not None]
            vals.append(f"{statistics.mean(got):.4f}" if got else "-")
        lf = [runs.value(spec, args.ref, sd, "learned_fraction") for sd in ref_seeds]
        fd = [runs.value(spec, args.ref, sd, "fd_domain") for sd in ref_seeds]
        lf, fd = [v for v in lf if v is not None], [v for v in fd if v is not None]
        lf_cell = f"{statistics.mean(lf):.3f}" if lf else "-"
        fd_cell = f"{statistics.mean(fd):.1f}" if fd else "-"
        lines.append(f"| {spec} | {row['channels']} | {row['params_proxy'] / 1e6:.3f} | " + " | ".join(vals)
                     + f" | {lf_cell} | {fd_cell} |")
    step = s["step_seconds"]
    if step:
        lines += ["", "Median training step: " + ", ".join(f"{step[b]:.2f} s at {b} steps" for b in sorted(step))
                  + " (one thread, two workers on two cores)."]
    errors = [r for r in rows if r.get("status") != "ok"]
    if errors:
        lines += [f"{len(errors)} run(s) not ok and left out: "
                  + "; ".join(f"{r['spec']} {r['steps']} steps seed {r['seed']}: {r['status']}" for r in errors[:5])]
    return "\n".join(lines) + "\n"


def _verdicts(s: dict, args, costs: dict, specs: list[str]) -> list[str]:
    """The issue's targets, each with what the table says."""
    out = ["## Targets", ""]
    sd = s["pooled_sd"].get(args.ref, {}).get("val_loss")
    if sd is not None:
        out.append(f"- Paired residual SD of a knob's difference at the reference: {sd:.4f} "
                   + ("<=" if sd <= SD_TARGET else ">") + f" the target {SD_TARGET:.4f} (half of the one-stream "
                   f"initialisation's 0.037): " + ("met." if sd <= SD_TARGET else "**missed**."))
    c = s["ceiling"].get("val_loss")
    if c:
        out.append(f"- Reference split-half ceiling: tau {c['tau']:+.3f} (p {c['p']:.3g}) against the target "
                   f"{TAU_TARGET}: " + ("met." if c["tau"] >= TAU_TARGET else "**missed**."))
    quarter = [b for b in args.budgets if b <= args.ref / 4]
    good = [b for b in quarter if (x := s["budgets"].get(b, {}).get("val_loss")) and x["tau"] >= TAU_TARGET
            and x["p"] < 0.05]
    out.append(f"- A budget of at most a quarter of the reference ({', '.join(map(str, quarter)) or 'none run'}) with "
               f"tau >= {TAU_TARGET} and p < 0.05: " + (f"met at {good[0]} steps." if good else "**missed**."))
    resolved = {k: v for k, v in costs.items() if v is not None}
    ref_knobs = s["knobs"].get(args.ref, {}).get("val_loss", {})
    if ref_knobs:
        largest = max(ref_knobs, key=lambda k: abs(ref_knobs[k]["diff"]))
        c = costs.get(largest)
        head = f"- The largest knob ({largest}, {ref_knobs[largest]['diff']:+.4f} at the reference)"
        if c is None:
            out.append(f"{head}: **not resolvable** at the measured noise.")
        else:
            out.append(f"{head} resolved in {c['minutes']:.1f} CPU-minutes ({c['seeds']} seeds x {c['steps']} "
                       f"steps): " + ("met." if c["minutes"] <= COST_TARGET_MIN else "**missed**."))
        out.append(f"- Knobs resolvable at some budget: {len(resolved)} of {len(ref_knobs)}; within "
                   f"{COST_TARGET_MIN:.0f} CPU-minutes: {sum(v['minutes'] <= COST_TARGET_MIN for v in resolved.values())}.")
    return out


def invocation(args: argparse.Namespace) -> str:
    """The command that regenerates this table: every setting that is not its default."""
    parts = ["PYTHONPATH=. .venv/bin/python benchmarks/proxy_fidelity.py"]
    for name, default in (("ref", REF_STEPS), ("budgets", list(SHORT_STEPS)), ("specs", len(VARIANTS)),
                          ("seeds", len(REF_SEEDS)), ("samples", SAMPLES), ("out", TABLE)):
        value = getattr(args, name)
        if value != default:
            parts.append(f"--{name} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value)))
    return " ".join(parts + (["--report"] if args.report else []))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", type=int, default=REF_STEPS, help="reference budget in steps")
    p.add_argument("--budgets", type=int, nargs="+", default=list(SHORT_STEPS), help="short budgets in steps")
    p.add_argument("--specs", type=int, default=len(VARIANTS), help="use the first N specs (base first)")
    p.add_argument("--seeds", type=int, default=len(REF_SEEDS), help="seeds per budget (reference and short)")
    p.add_argument("--samples", type=int, default=SAMPLES,
                   help="samples per run for the domain FD (0: no FD; it needs more than 128)")
    p.add_argument("--workers", type=int, default=WORKERS)
    p.add_argument("--out", type=Path, default=TABLE, help="markdown table; runs go to the same name .jsonl")
    p.add_argument("--report", action="store_true", help="only rewrite the table from the runs already stored")
    args = p.parse_args()
    runs_file = args.out.with_suffix(".jsonl")
    specs = [label for label, _ in VARIANTS][:args.specs]
    entries = plan(specs, args.ref, args.budgets, REF_SEEDS[:args.seeds], SHORT_SEEDS[:args.seeds])
    started = time.time()

    def write(rows: list[dict]) -> None:
        args.out.write_text(table(rows, args, started, len(entries)))

    if not args.report:
        # Warm the caches once (domain classifier, reference statistics, baselines): workers never race for them.
        from training.baselines import regime_baselines
        from training.data import load_data
        from training.fidelity import domain_floor
        data = load_data(DATA)
        floor = domain_floor(data, args.samples) if args.samples else "-"
        print(f"noise floor at {args.samples} samples: {floor}; baselines {regime_baselines(data)}", flush=True)
        for label in specs:  # fail fast on a bad override, before any training
            build_spec(dict(VARIANTS)[label])
    rows = read_rows(runs_file) if args.report else run_plan(entries, functools.partial(run, samples=args.samples), runs_file, DATA,
                                                                  args.workers, write)
    write(rows)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
