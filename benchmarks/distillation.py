"""Distillation benchmark (issue 12): does step distillation beat plain few-step sampling, does KD help at equal
steps and at equal compute, and does the timestep-aware weighting beat a fixed one at the same KD share?

CPU, tiny scale, MNIST-5k through 4x4 space-to-depth (`mnist5k-p4`, an 8x8x16 model space), >= 3 seeds, every
number a mean over seeds with its 95% t-interval, every comparison a paired difference (same seed) with its
interval. Scores: the domain FD of training/fidelity.py (lower is better) on class-balanced samples.
  teacher     tiny-debug widened to [64, 128], --teacher-steps plain steps (one teacher, seed 0)
  base        tiny-debug's proxy, --base-steps plain steps per seed (checkpoints at half and full: its 4-step FD
              says whether more plain training still helps; the continuations below say it again)
  continue    base + --extra-steps plain steps ("same steps") and + 3x as many ("equal compute": a step
              distillation step costs about three plain ones, measured below), constant lr --finetune-lr
  step 4 / 8  base + --extra-steps of step distillation (training/step_distill.py: teacher = the base itself,
              guided at CFG 2, integrated in 4 sub-steps per student step; rollout states; discriminator after
              a KD-only first half), constant lr --finetune-lr; sampled at CFG 1 (the guidance is distilled in)
  KD          from scratch, --base-steps each: no KD (= the base), KD timestep-aware (shape 1), KD fixed at the
              KD share the timestep-aware run measured, and no KD for 2x the steps (equal compute: a KD step
              costs about two plain ones); shape sweep 0.5 / 2 on --sweep-seeds seeds
The undistilled models are sampled at CFG 2 (their training default), step-distilled ones at CFG 1.

Sizing [measured on the shared 2-core machine, load ~5, one thread per worker, before writing the defaults]:
plain step 0.35 s, KD step 0.7 s, step-distillation step 1.3 s (4 steps) / 1.4 s (8 steps), teacher step
0.6 s; 500 samples at 28 Euler steps with CFG took 61 s, so FD uses 256 samples (above the 128 feature
dimensions the FD needs) and 28-step FD only where the issue asks for it. Defaults: teacher 480 steps, base
240, extra 80 (x3 = 240 for equal compute), 3 seeds, 2 workers: about 1,200 worker-seconds per seed plus the
teacher and the sweep, and ~700 worker-seconds of sampling and scoring: ~38 min in all at that load.
`--smoke` runs every path with tiny settings (2-8 steps): 9 min on that machine, mostly sampling and scoring.
Run: .venv/bin/python benchmarks/distillation.py > benchmarks/distillation.md
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DATA = "mnist5k-p4"
STUDENT = ("tiny-debug", ())
TEACHER = ("tiny-debug", ("stages.0.channels=64", "stages.1.channels=128"))
BASE_LR = 3e-3  # the quality runs' rate: these are short runs
FINETUNE_LR = 3e-4  # [choose] continuations (plain and distilled) at 1/10 of the base rate, constant
CFG = 2.0
EQUAL_COMPUTE_SD = 3  # [measured] one step-distillation step ~ 3-4 plain steps (1.3-1.4 s vs 0.35 s)
EQUAL_COMPUTE_KD = 2  # [measured] one KD step ~ 2 plain steps (0.7 s vs 0.35 s)
SWEEP_SHAPES = (0.5, 2.0)
SAMPLER_STEPS = (4, 8, 28)

_CTX: dict = {}


def _setup():
    if not _CTX:
        import torch
        torch.set_num_threads(1)
        from search_space import load_spec
        from training.data import load_data
        from training.fidelity import register_domain_extractor
        from training.full import prepare_spec
        from training.text import class_prompt_embeddings
        data = load_data(DATA)
        prompts = class_prompt_embeddings(data.class_names)
        register_domain_extractor(data)
        _CTX.update(data=data, prompts=prompts,
                    student=prepare_spec(load_spec(STUDENT[0], list(STUDENT[1])), data, prompts)[0],
                    teacher=prepare_spec(load_spec(TEACHER[0], list(TEACHER[1])), data, prompts)[0])
    return _CTX


def _config(steps: int, seed: int, a, **kw):
    from training.full import FullConfig
    base = dict(steps=steps, batch_size=a.batch_size, seed=seed, checkpoint_every=steps, keep_checkpoints=0,
                log_every=max(1, steps // 20), warmup_steps=min(10, max(1, steps // 4)), lr=BASE_LR,
                schedule="linear", min_lr_ratio=0.0, sample_steps=4, cfg_scale=CFG)
    return FullConfig(**{**base, **kw})


def fd(folder: str | Path, steps: int, cfg: float, seed: int, samples: int) -> float:
    import torch
    from training.checkpoint import load_trained
    from training.fidelity import domain_metrics
    from training.trainer import sample
    c = _setup()
    model, spec, _ = load_trained(folder)
    labels = torch.arange(samples) % c["data"].num_classes
    x = sample(model, spec, c["data"], c["prompts"], labels, 10_000 + seed, steps, cfg, progress=False)
    return float(domain_metrics(x, c["data"])["fd_domain"])


def job(kind: str, name: str, seed: int, a, deps: dict) -> dict:
    """Train one model (resumable: a finished run folder is reused) and score it."""
    from training.distill import KDObjective, load_teacher
    from training.full import train_full
    from training.kd_scaling import KDWeighting
    from training.step_distill import StepDistillConfig, StepDistillObjective
    c = _setup()
    data, prompts = c["data"], c["prompts"]
    folder = Path(a.out) / name
    start = time.perf_counter()
    spec, objective, init, cfg_scale, steps_list, extra = c["student"], None, None, CFG, (4, 8), {}
    if kind == "teacher":
        spec, config = c["teacher"], _config(a.teacher_steps, seed, a)
        steps_list = (4,)
    elif kind == "base":
        config = _config(a.base_steps, seed, a, checkpoint_every=max(1, a.base_steps // 2))
        steps_list = SAMPLER_STEPS
    elif kind == "continue":
        mult = deps["mult"]
        config = _config(a.extra_steps * mult, seed, a, lr=FINETUNE_LR, schedule="constant",
                         checkpoint_every=a.extra_steps, warmup_steps=1)
        init, steps_list = deps["base"], SAMPLER_STEPS
    elif kind == "step":
        n = deps["n"]
        objective = StepDistillObjective(load_teacher(deps["base"]), prompts, data.resolution, data.size,
                                         StepDistillConfig(sampler_steps=n), data.class_names)
        config = _config(a.extra_steps, seed, a, lr=FINETUNE_LR, schedule="constant", warmup_steps=1,
                         cfg_scale=1.0, sample_steps=n)
        init, cfg_scale, steps_list = deps["base"], 1.0, SAMPLER_STEPS
    elif kind == "kd":
        weighting = KDWeighting(deps["weighting"], deps.get("shape", 1.0), deps.get("share"))
        objective = KDObjective(load_teacher(deps["teacher"]), prompts, data.resolution, data.size, weighting,
                                class_names=data.class_names)
        config = _config(a.base_steps, seed, a)
        extra["weighting"] = weighting.identity()
    elif kind == "plain":
        config = _config(a.base_steps * deps["mult"], seed, a)
    else:
        raise ValueError(kind)
    resume = (folder / "checkpoints" / "latest").is_file()
    r = train_full(spec, data, prompts, folder, config, objective, resume=resume or None, init=init, progress=False)
    if r.status != "ok":
        raise RuntimeError(f"{name}: {r.status}")
    train_s = time.perf_counter() - start
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    shares = [x["kd_share"] for x in rows if "kd_share" in x]
    if shares:
        extra["kd_share"] = sum(shares) / len(shares)
    for key in ("grad_task", "grad_kd_out", "grad_kd_feat"):
        vals = [x[key] for x in rows if key in x]
        if vals:
            extra[key] = sum(vals) / len(vals)
    scores = {f"fd{s}": fd(folder, s, cfg_scale, seed, a.samples) for s in steps_list}
    if kind == "base" or (kind == "continue" and deps["mult"] > 1):  # the earlier checkpoint: same run
        half = sorted((folder / "checkpoints").glob("step_*"))[0]
        scores["fd4_early"] = fd(half, 4, cfg_scale, seed, a.samples)
        extra["early_step"] = int(half.name.split("_")[1])
    return {"name": name, "kind": kind, "seed": seed, "train_s": round(train_s, 1), "folder": str(folder),
            "score_s": round(time.perf_counter() - start - train_s, 1), **scores, **extra}


def plan(a) -> list[tuple[str, str, int, dict, list[str]]]:
    """(kind, name, seed, deps, names it waits for); deps name other jobs' folders or results."""
    out = Path(a.out)
    jobs = [("teacher", "teacher", 0, {}, [])]
    for s in range(a.seeds):
        base = f"base-s{s}"
        jobs += [("base", base, s, {}, []),
                 ("continue", f"continue-x3-s{s}", s, {"base": str(out / base), "mult": EQUAL_COMPUTE_SD}, [base]),
                 ("step", f"step4-s{s}", s, {"base": str(out / base), "n": 4}, [base]),
                 ("step", f"step8-s{s}", s, {"base": str(out / base), "n": 8}, [base]),
                 ("kd", f"kd-timestep-s{s}", s, {"teacher": str(out / "teacher"), "weighting": "timestep"},
                  ["teacher"]),
                 ("kd", f"kd-fixed-s{s}", s, {"teacher": str(out / "teacher"), "weighting": "fixed",
                                              "share_from": f"kd-timestep-s{s}"}, ["teacher", f"kd-timestep-s{s}"]),
                 ("plain", f"nokd-x2-s{s}", s, {"mult": EQUAL_COMPUTE_KD}, [])]
        if s < a.sweep_seeds:
            jobs += [("kd", f"kd-shape{g:g}-s{s}", s, {"teacher": str(out / "teacher"), "weighting": "timestep",
                                                       "shape": g}, ["teacher"]) for g in SWEEP_SHAPES]
    return jobs


def run_all(a) -> dict[str, dict]:
    results: dict[str, dict] = {}
    path = Path(a.out) / "results.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            results[r["name"]] = r
    todo = [j for j in plan(a) if j[1] not in results]
    t0 = time.perf_counter()
    running = {}
    with ProcessPoolExecutor(a.workers) as pool:
        while todo or running:
            for j in [j for j in todo if all(d in results for d in j[4])][:max(0, a.workers - len(running))]:
                kind, name, seed, deps, _ = j
                if "share_from" in deps:
                    deps = {**deps, "share": results[deps["share_from"]]["kd_share"]}
                running[pool.submit(job, kind, name, seed, a, deps)] = name
                todo.remove(j)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                name = running.pop(f)
                r = f.result()
                results[name] = r
                with open(path, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(f"[{time.perf_counter() - t0:6.0f} s] {name}: train {r['train_s']:.0f} s, "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k.startswith("fd")), file=sys.stderr,
                      flush=True)
    return results


# --- the table ----------------------------------------------------------------------------------------------

def _ci(values: list[float]) -> str:
    from evaluators.quality import mean_interval
    m, lo, hi = mean_interval(values)
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{m:.2f}"


def _paired(a_vals: list[float], b_vals: list[float]) -> tuple[str, str]:
    """(difference a - b with its interval, verdict): lower FD is better."""
    from evaluators.quality import mean_interval
    d = [x - y for x, y in zip(a_vals, b_vals)]
    m, lo, hi = mean_interval(d)
    if lo is None:
        return f"{m:+.2f}", "one seed: no interval"
    verdict = ("better beyond the interval" if hi < 0 else "worse beyond the interval" if lo > 0
               else "not resolved at this scale (interval spans 0)")
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]", verdict


def report(results: dict[str, dict], a, minutes: float) -> str:
    seeds = range(a.seeds)
    col = lambda prefix, key: [results[f"{prefix}-s{s}"][key] for s in seeds]  # noqa: E731
    lines = ["# Distillation benchmark (issue 12)", "",
             f"`python benchmarks/distillation.py` on CPU ({a.workers} workers, one thread each), {DATA}, "
             f"{a.seeds} seeds (0-{a.seeds - 1}), batch {a.batch_size}; domain FD (lower is better) of "
             f"{a.samples} class-balanced samples, mean over seeds [95% t-interval]; differences are paired by "
             f"seed. Total {minutes:.1f} min. Written by the script.", "",
             f"Teacher (KD): tiny-debug widened to [64, 128], {a.teacher_steps} steps: FD "
             f"{results['teacher']['fd4']:.2f} at 4 steps (CFG {CFG:g}).", "",
             f"## Step distillation from a base of {a.base_steps} plain steps", "",
             f"Is the base done? 4-step FD at step {results['base-s0'].get('early_step')}: "
             f"{_ci(col('base', 'fd4_early'))}; at {a.base_steps}: {_ci(col('base', 'fd4'))}. Continued at lr "
             f"{FINETUNE_LR:g}: +{a.extra_steps} steps {_ci(col('continue-x3', 'fd4_early'))}, "
             f"+{a.extra_steps * EQUAL_COMPUTE_SD} steps {_ci(col('continue-x3', 'fd4'))}.", "",
             "| model | CFG | FD, 4 steps | FD, 8 steps | FD, 28 steps | train s (seed mean) |",
             "|---|---:|---:|---:|---:|---:|"]

    def row(label, prefix, cfg, keys=("fd4", "fd8", "fd28")):
        cells = [_ci(col(prefix, k)) if all(k in results[f"{prefix}-s{s}"] for s in seeds) else "-" for k in keys]
        secs = sum(col(prefix, "train_s")) / a.seeds
        lines.append(f"| {label} | {cfg:g} | " + " | ".join(cells) + f" | {secs:.0f} |")

    row(f"base, undistilled ({a.base_steps} steps)", "base", CFG)
    lines.append(f"| base + {a.extra_steps} plain steps (same steps) | {CFG:g} | "
                 f"{_ci(col('continue-x3', 'fd4_early'))} | - | - | - |")
    row(f"base + {a.extra_steps * EQUAL_COMPUTE_SD} plain steps (equal compute)", "continue-x3", CFG)
    row(f"base + {a.extra_steps} step-distillation steps, 4-step sampler", "step4", 1.0)
    row(f"base + {a.extra_steps} step-distillation steps, 8-step sampler", "step8", 1.0)
    lines += ["", "| claim | difference in FD | verdict |", "|---|---:|---|"]
    claims = [
        ("4-step student vs undistilled base, 4 steps", col("step4", "fd4"), col("base", "fd4")),
        ("4-step student vs base + same steps, 4 steps", col("step4", "fd4"), col("continue-x3", "fd4_early")),
        ("4-step student vs base + equal compute, 4 steps", col("step4", "fd4"), col("continue-x3", "fd4")),
        ("8-step student vs undistilled base, 8 steps", col("step8", "fd8"), col("base", "fd8")),
        ("8-step student vs base + equal compute, 8 steps", col("step8", "fd8"), col("continue-x3", "fd8")),
        ("4-step student at 4 steps vs undistilled base at 28 steps", col("step4", "fd4"), col("base", "fd28")),
    ]
    for label, x, y in claims:
        d, v = _paired(x, y)
        lines.append(f"| {label} | {d} | {v} |")

    lines += ["", f"## Knowledge distillation, students from scratch, {a.base_steps} steps", "",
              "| student | FD, 4 steps | FD, 8 steps | KD share of the loss | train s (seed mean) |",
              "|---|---:|---:|---:|---:|"]

    def kd_row(label, prefix):
        share = col(prefix, "kd_share") if "kd_share" in results[f"{prefix}-s0"] else None
        secs = sum(col(prefix, "train_s")) / a.seeds
        lines.append(f"| {label} | {_ci(col(prefix, 'fd4'))} | {_ci(col(prefix, 'fd8'))} | "
                     f"{_ci(share) if share else '-'} | {secs:.0f} |")

    kd_row("no KD (the base)", "base")
    kd_row("KD, timestep-aware (shape 1, magnitudes per timestep bin)", "kd-timestep")
    kd_row("KD, fixed weighting at the timestep-aware run's KD share", "kd-fixed")
    kd_row(f"no KD, {a.base_steps * EQUAL_COMPUTE_KD} steps (equal compute)", "nokd-x2")
    lines += ["", "| claim | difference in FD, 4 steps | verdict |", "|---|---:|---|"]
    for label, x, y in [("KD (timestep) vs no KD, equal steps", col("kd-timestep", "fd4"), col("base", "fd4")),
                        ("KD (timestep) vs no KD, equal compute", col("kd-timestep", "fd4"), col("nokd-x2", "fd4")),
                        ("timestep-aware vs fixed at matched KD share", col("kd-timestep", "fd4"),
                         col("kd-fixed", "fd4"))]:
        d, v = _paired(x, y)
        lines.append(f"| {label} | {d} | {v} |")
    if a.sweep_seeds:
        lines += ["", f"Shape sweep (task weight a_t = density(t)^shape), seed(s) 0-{a.sweep_seeds - 1}:", "",
                  "| shape | FD, 4 steps | FD, 8 steps | KD share |", "|---:|---:|---:|---:|"]
        for g in (SWEEP_SHAPES[0], 1.0, SWEEP_SHAPES[1]):
            names = [f"kd-shape{g:g}-s{s}" if g != 1.0 else f"kd-timestep-s{s}" for s in range(a.sweep_seeds)]
            rs = [results[n] for n in names]
            lines.append(f"| {g:g} | {_ci([r['fd4'] for r in rs])} | {_ci([r['fd8'] for r in rs])} | "
                         f"{_ci([r['kd_share'] for r in rs])} |")
    grads = {k: _ci(col("kd-timestep", k)) for k in ("grad_task", "grad_kd_out", "grad_kd_feat")
             if k in results["kd-timestep-s0"]}
    lines += ["", "Mean gradient norms of the timestep-aware run's terms (w.r.t. the student's output and tapped "
              "features): " + ", ".join(f"{k} {v}" for k, v in grads.items()) + "."]
    lines += ["", "Where a verdict says \"not resolved\" or \"worse\", the paper's claim is not reproduced at this "
              "scale; the table is written by the script, not edited."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/distillation-bench")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sweep-seeds", type=int, default=1)
    p.add_argument("--teacher-steps", type=int, default=480)
    p.add_argument("--base-steps", type=int, default=240)
    p.add_argument("--extra-steps", type=int, default=80)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="every path with tiny settings (about a minute)")
    a = p.parse_args()
    if a.smoke:
        a.teacher_steps, a.base_steps, a.extra_steps, a.samples, a.batch_size = 4, 4, 2, 160, 8
    if a.seeds < 1 or a.sweep_seeds > a.seeds:
        p.error("--seeds must be >= 1 and --sweep-seeds <= --seeds")
    t0 = time.perf_counter()
    results = run_all(a)
    print(report(results, a, (time.perf_counter() - t0) / 60), end="")


if __name__ == "__main__":
    main()
