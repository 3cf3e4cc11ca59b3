"""Distillation benchmark (docs/training.md): does step distillation beat plain few-step sampling of a base that more
plain training no longer improves, does KD help at equal steps and at equal compute, and does the timestep-aware
weighting beat a fixed one at the same KD share?

CPU, tiny scale, MNIST-5k through 4x4 space-to-depth (`mnist5k-p4`, an 8x8x16 model space). Scores: the domain
FD of training/fidelity.py (lower is better) on class-balanced samples; every number a mean over seeds with its
95% t-interval, every comparison a paired difference (same seed, same sampling noise) with its interval.

Part `step` (the paper's claim at this scale, docs/paper.md section 3; the base is trained until more plain steps
no longer improve it):
  teacher     tiny-debug widened to [64, 128], --teacher-steps plain steps, lr decayed to 0 (seed 0)
  base        tiny-debug, --base-steps plain steps, lr decayed to 0 (seed 0; one base: the seeds below are seeds
              of what is done to it). Its 4-step FD at 1/2, 3/4 and the end of its run says whether it is done.
  continue    base + plain steps at the fine-tuning rate for the step-distillation run's compute (counted
              FLOPs: `step_cost`), per seed; its 4-step FD at every --extra-steps (same steps .. equal compute)
  step N      base + --extra-steps of step distillation to the N-step sampler (training/step_distill.py) with the
              converged teacher's guided (CFG 2) trajectory as target; sampled at CFG 1 (the guidance is in it)
  The undistilled models are sampled at CFG 2 (their best, and their training default).
  `--step-teacher base` makes the base its own step teacher (self-distillation): the student's one step must
  land where the base's `--teacher-substeps` x N-step guided trajectory lands, so the sampler error of few-step
  Euler is what is distilled away; the committed table uses it with 7 sub-steps (the base's 28-step sampler).
Part `kd` (students from scratch, --kd-steps each, per seed): no KD, KD timestep-aware (shape 1), KD fixed at the
  KD share the timestep-aware run measured, no KD for the KD run's counted compute; shape sweep 0.5 / 2.

Equal compute is counted, not timed: forward multiply-accumulates of student and teacher from the project's op
trace (training/throughput.forward_macs), times the forwards and backwards each step makes (`step_cost`,
`kd_cost`). A shared machine's wall clock does not enter any comparison.
  (`--samplers 4,8` adds the 8-step student; `--kd-only` adds the students without the adversarial term.)
Sizing [measured, 2-core machine]: `--parts step` 47.5 min with 2 workers (2000 samples per FD, 28 checkpoints of
the continuation scored); `--kd-only` adds about 15 min. `--smoke` runs every path in about 6 min.
Run: .venv/bin/python benchmarks/distillation.py [--parts step,kd] [--kd-only] > benchmarks/distillation.md
The committed step table: --parts step --kd-only --samplers 4,8 --step-teacher base --teacher-substeps 7
  --base-steps 16000 --teacher-steps 6000 (about 60 min for the base, teacher and continuations, then 7-9 min per
  three students, 2 workers).
"""
from __future__ import annotations

import argparse
import json
import math
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
BASE_LR = 3e-3  # the quality runs' rate, decayed linearly to 0
FINETUNE_LR = 3e-4  # [choose] plain continuations at 1/10 of the base rate, constant
DISTILL_LR = 1e-3  # [measured] step distillation, constant: a 400-step pilot (seed 0) moved the 4-step FD
# 1.29 -> 1.13 at 1e-3 and 1.30 at 200 steps of 3e-4, still falling
CFG = 2.0
SWEEP_SHAPES = (0.5, 2.0)
SAMPLER_STEPS = (4, 8, 28)
PARTS = ("step", "kd")

_CTX: dict = {}


def _setup():
    if not _CTX:
        import torch
        torch.set_num_threads(1)
        from search_space import load_spec
        from training.data import load_data
        from training.fidelity import register_domain_extractor
        from training.full_run import prepare_spec
        from training.text import class_prompt_embeddings
        data = load_data(DATA)
        prompts = class_prompt_embeddings(data.class_names)
        register_domain_extractor(data)
        _CTX.update(data=data, prompts=prompts,
                    student=prepare_spec(load_spec(STUDENT[0], list(STUDENT[1])), data, prompts)[0],
                    teacher=prepare_spec(load_spec(TEACHER[0], list(TEACHER[1])), data, prompts)[0])
    return _CTX


def forward_gflops(spec) -> float:
    """GFLOPs of one forward pass on one image of the benchmark's data (counted, not timed)."""
    from training.throughput import FLOPS_PER_MAC, forward_macs
    c = _setup()
    data, prompts = c["data"], c["prompts"]
    return FLOPS_PER_MAC * forward_macs(spec, (data.channels, data.size, data.size), prompts.tokens.shape[1],
                                        prompts.dim) / 1e9


def step_cost(config, ratio: float) -> float:
    """One step-distillation step in plain training steps (same batch), from counted forwards: the student's
    forward + backward (3, as a plain step), its no-grad rollout (rollout_share x mean k of (N-1)/2 forwards),
    the teacher's guided target (substeps x 2 forwards), the discriminator's two teacher forwards (every step)
    and after the warm-up the generator's pass through the teacher (forward + backward to the input: 3).
    `ratio` = teacher forward FLOPs / student forward FLOPs."""
    guided = 2 if config.teacher_cfg != 1.0 else 1
    student = 3 + config.rollout_share * (config.sampler_steps - 1) / 2
    teacher = config.teacher_substeps * guided
    if config.adv_weight > 0:  # the discriminator's two teacher forwards every step, the generator's after warm-up
        teacher += 2 + (1 - config.adv_start) * 3
    return (student + teacher * ratio) / 3


def kd_cost(ratio: float) -> float:
    """One KD step in plain steps: the student's forward + backward (3) and one teacher forward."""
    return (3 + ratio) / 3


def _config(steps: int, seed: int, a, **kw):
    from training.config import LoopConfig
    base = dict(steps=steps, batch_size=a.batch_size, seed=seed, checkpoint_every=steps, keep_checkpoints=0,
                log_every=max(1, steps // 20), warmup_steps=min(10, max(1, steps // 4)), lr=BASE_LR,
                schedule="linear", min_lr_ratio=0.0, sample_steps=4, cfg_scale=CFG)
    return LoopConfig(**{**base, **kw})


def fd(folder: str | Path, steps: int, cfg: float, seed: int, samples: int) -> float:
    """Domain FD of `samples` class-balanced samples; the noise is a function of `seed` only, so two models
    scored with the same seed start from the same noise (paired comparisons)."""
    import torch
    from training.checkpoint import load_trained
    from training.fidelity import domain_metrics
    from training.sample import sample_classes
    c = _setup()
    model, spec, _ = load_trained(folder)
    labels = torch.arange(samples) % c["data"].num_classes
    x = sample_classes(model, spec, c["data"], c["prompts"], labels, 10_000 + seed, steps, cfg, progress=False)
    return float(domain_metrics(x, c["data"])["fd_domain"])


def _checkpoints(folder: Path) -> list[Path]:
    return sorted((folder / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def sd_config(a, n: int, adv_weight: float | None = None):
    from training.config import StepDistillConfig
    extra = {} if adv_weight is None else {"adv_weight": adv_weight}
    return StepDistillConfig(sampler_steps=n, teacher_substeps=a.teacher_substeps, **extra)


def students(a) -> list[tuple[str, int, float | None]]:
    """(result key, sampler steps, adversarial weight or None for the default) of each step-distilled student:
    the objective as shipped and, with --kd-only, the same without its adversarial term."""
    out = [] if a.skip_adv else [(f"step{n}", n, None) for n in a.samplers]
    if a.kd_only or a.skip_adv:
        out += [(f"step{n}-kdonly", n, 0.0) for n in a.samplers]
    return out


def job(kind: str, name: str, seed: int, a, deps: dict) -> dict:
    """Train one model (resumable: a finished run folder is reused) and score it."""
    from training.full_run import train_full
    from training.kd import KDObjective
    from training.kd_scaling import KDWeighting
    from training.step_distill import StepDistillObjective
    from training.teachers import load_teacher
    c = _setup()
    data, prompts = c["data"], c["prompts"]
    folder = Path(a.out) / name
    start = time.perf_counter()
    spec, objective, init, cfg_scale, steps_list, extra = c["student"], None, None, CFG, (4, 8), {}
    every_ckpt = False
    if kind == "teacher":
        spec, config, steps_list = c["teacher"], _config(a.teacher_steps, seed, a), (4, 28)
    elif kind == "base":
        config = _config(a.base_steps, seed, a, checkpoint_every=max(1, a.base_steps // 4))
        steps_list, every_ckpt = (), True
    elif kind == "base-eval":  # the base, scored with this seed's sampling noise
        config, steps_list, folder = None, SAMPLER_STEPS, Path(deps["base"])
    elif kind == "continue":
        config = _config(deps["steps"], seed, a, lr=FINETUNE_LR, schedule="constant", warmup_steps=1,
                         checkpoint_every=max(1, a.extra_steps // 4))
        init, steps_list, every_ckpt = deps["base"], SAMPLER_STEPS, True
    elif kind == "step":
        n = deps["n"]
        objective = StepDistillObjective(load_teacher(deps["teacher"]), prompts, data.resolution, data.size,
                                         sd_config(a, n, deps.get("adv")), data.class_names)
        config = _config(a.extra_steps, seed, a, lr=a.distill_lr, schedule="constant", warmup_steps=1,
                         cfg_scale=1.0, sample_steps=n, checkpoint_every=max(1, a.extra_steps // 4))
        init, cfg_scale, steps_list, every_ckpt = deps["base"], 1.0, SAMPLER_STEPS, True
    elif kind == "kd":
        weighting = KDWeighting(deps["weighting"], deps.get("shape", 1.0), deps.get("share"))
        objective = KDObjective(load_teacher(deps["teacher"]), prompts, data.resolution, data.size, weighting,
                                class_names=data.class_names)
        config = _config(a.kd_steps, seed, a)
        extra["weighting"] = weighting.identity()
    elif kind == "plain":
        config = _config(deps["steps"], seed, a)
    else:
        raise ValueError(kind)
    if config is not None:
        resume = (folder / "checkpoints" / "latest").is_file()
        r = train_full(spec, data, prompts, folder, config, objective, resume=resume or None, init=init,
                       progress=False)
        if r.status != "ok":
            raise RuntimeError(f"{name}: {r.status}")
    train_s = time.perf_counter() - start
    metrics = folder / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if config is not None else []
    shares = [x["kd_share"] for x in rows if "kd_share" in x]
    if shares:
        extra["kd_share"] = sum(shares) / len(shares)
    for key in ("grad_task", "grad_kd_out", "grad_kd_feat"):
        vals = [x[key] for x in rows if key in x]
        if vals:
            extra[key] = sum(vals) / len(vals)
    scores = {f"fd{s}": fd(folder, s, cfg_scale, seed, a.samples) for s in steps_list}
    if every_ckpt:  # the 4-step FD along the run: is more plain training still helping?
        extra["curve"] = [[int(p.name.split("_")[1]), fd(p, 4, cfg_scale, seed, a.samples)]
                          for p in _checkpoints(folder)]
    return {"name": name, "kind": kind, "seed": seed, "train_s": round(train_s, 1), "folder": str(folder),
            "score_s": round(time.perf_counter() - start - train_s, 1), **scores, **extra}


def costs(a) -> dict:
    c = _setup()
    ratio = forward_gflops(c["teacher"]) / forward_gflops(c["student"])
    out = {"student_gflops": forward_gflops(c["student"]), "teacher_gflops": forward_gflops(c["teacher"]),
           "ratio": ratio, "kd": kd_cost(ratio)}
    step_ratio = 1.0 if a.step_teacher == "base" else ratio  # self-distillation: the base is its own teacher
    for key, n, adv in students(a):
        out[key] = step_cost(sd_config(a, n, adv), step_ratio)
    return out


def plan(a, cost: dict) -> list[tuple[str, str, int, dict, list[str]]]:
    """(kind, name, seed, deps, names it waits for); deps name other jobs' folders or results."""
    out = Path(a.out)
    jobs = [("teacher", "teacher", 0, {}, [])]
    teacher = str(out / "teacher")
    if "step" in a.parts:
        base = str(out / "base")
        jobs.append(("base", "base", 0, {}, []))
        longest = max(cost[key] for key, _, _ in students(a))
        cont_steps = a.extra_steps * math.ceil(longest)
        for s in range(a.seeds):
            jobs.append(("base-eval", f"base-eval-s{s}", s, {"base": base}, ["base"]))
            step_teacher = base if a.step_teacher == "base" else teacher
            jobs += [("step", f"{key}-s{s}", s, {"base": base, "teacher": step_teacher, "n": n, "adv": adv},
                      ["base", "teacher"]) for key, n, adv in students(a)]
            jobs.append(("continue", f"continue-s{s}", s, {"base": base, "steps": cont_steps}, ["base"]))
    if "kd" in a.parts:
        for s in range(a.seeds):
            jobs += [("plain", f"nokd-s{s}", s, {"steps": a.kd_steps}, []),
                     ("kd", f"kd-timestep-s{s}", s, {"teacher": teacher, "weighting": "timestep"}, ["teacher"]),
                     ("kd", f"kd-fixed-s{s}", s, {"teacher": teacher, "weighting": "fixed",
                                                  "share_from": f"kd-timestep-s{s}"},
                      ["teacher", f"kd-timestep-s{s}"]),
                     ("plain", f"nokd-eq-s{s}", s, {"steps": round(a.kd_steps * cost["kd"])}, [])]
            if s < a.sweep_seeds:
                jobs += [("kd", f"kd-shape{g:g}-s{s}", s, {"teacher": teacher, "weighting": "timestep",
                                                           "shape": g}, ["teacher"]) for g in SWEEP_SHAPES]
    return jobs


def run_all(a, cost: dict) -> dict[str, dict]:
    results: dict[str, dict] = {}
    path = Path(a.out) / "results.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            results[r["name"]] = r
    todo = [j for j in plan(a, cost) if j[1] not in results]
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
            if not running:
                raise RuntimeError(f"jobs wait for results that no job makes: {[j[1] for j in todo]}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                name = running.pop(f)
                r = f.result()
                results[name] = r
                with open(path, "a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(f"[{time.perf_counter() - t0:6.0f} s] {name}: train {r['train_s']:.0f} s, "
                      + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k.startswith("fd"))
                      + (f", curve {r['curve']}" if "curve" in r else ""), file=sys.stderr, flush=True)
    return results


# --- the table ----------------------------------------------------------------------------------------------

def _ci(values: list[float]) -> str:
    from evaluators.stats import t_interval
    m, lo, hi, _ = t_interval(values)
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{m:.2f}"


def _paired(a_vals: list[float], b_vals: list[float]) -> tuple[str, str]:
    """(difference a - b with its interval, verdict): lower FD is better."""
    from evaluators.stats import paired_difference
    m, lo, hi, _, _ = paired_difference(a_vals, b_vals)
    if lo is None:
        return f"{m:+.2f}", "one seed: no interval"
    verdict = ("better beyond the interval" if hi < 0 else "worse beyond the interval" if lo > 0
               else "not resolved at this scale (interval spans 0)")
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]", verdict


def _mean_logged(folder: str, key: str) -> float:
    vals = [r[key] for r in map(json.loads, (Path(folder) / "metrics.jsonl").read_text().splitlines()) if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def _curve(points: list[list[float]]) -> str:
    return ", ".join(f"{int(k)}: {v:.2f}" for k, v in points)


def report(results: dict[str, dict], a, cost: dict, minutes: float) -> str:
    seeds = range(a.seeds)
    col = lambda prefix, key: [results[f"{prefix}-s{s}"][key] for s in seeds]  # noqa: E731
    lines = ["# Distillation benchmark", "",
             f"`python benchmarks/distillation.py {' '.join(sys.argv[1:])}` on CPU ({a.workers} workers, one "
             f"thread each), {DATA}, {a.seeds} seeds (0-{a.seeds - 1}), batch {a.batch_size}; domain FD (lower is "
             f"better) of {a.samples} class-balanced samples, mean over seeds [95% t-interval]; differences are "
             f"paired by seed (same training seed, same sampling noise). This invocation: {minutes:.1f} min (jobs "
             "already in the output folder's results.jsonl are read, not rerun). Written by the script.", "",
             f"Counted forward cost per image: student {cost['student_gflops'] * 1e3:.1f} MFLOP, teacher "
             f"{cost['teacher_gflops'] * 1e3:.1f} MFLOP (x{cost['ratio']:.2f}). One KD step = {cost['kd']:.2f} "
             "plain steps; one step-distillation step = "
             + ", ".join(f"{cost[key]:.1f} ({key})" for key, _, _ in students(a)) + " plain steps.", "",
             f"Teacher: tiny-debug widened to [64, 128], {a.teacher_steps} plain steps (seed 0): FD "
             f"{results['teacher']['fd4']:.2f} at 4 steps, {results['teacher']['fd28']:.2f} at 28 (CFG {CFG:g})"
             + (" (the KD teacher; the step-distillation target here is the base itself, `--step-teacher base`)."
                if a.step_teacher == "base" else ".")]
    if "step" in a.parts:
        b = results["base"]
        cont = [results[f"continue-s{s}"]["curve"] for s in seeds]
        same = [next(v for k, v in cv if k == a.extra_steps) for cv in cont]
        n_eq = {key: a.extra_steps * cost[key] for key, _, _ in students(a)}
        lines += ["", f"## Step distillation from a base of {a.base_steps} plain steps", "",
                  f"Is the base done? Its 4-step FD along its run (step: FD, seed-0 noise): {_curve(b['curve'])}. "
                  f"Continued with plain steps at lr {FINETUNE_LR:g}, 4-step FD per seed (step: FD): "
                  + "; ".join(f"seed {s}: {_curve(cv)}" for s, cv in zip(seeds, cont)) + ".", "",
                  f"Step distillation: {a.extra_steps} steps at lr {a.distill_lr:g} from the base, "
                  + ("the base itself" if a.step_teacher == "base" else "the teacher above")
                  + f" as the few-step target (CFG 2, {a.teacher_substeps} Euler sub-steps per student step), "
                  "half of each batch on the student's own rollout states, discriminator on the state the sampler "
                  "reaches next from the second half of the run (`-kdonly`: the same without the adversarial term). "
                  "Equal compute = " + ", ".join(f"{n_eq[key]:.0f} plain steps ({key})" for key, _, _ in students(a))
                  + f"; the continuation ran {max(k for k, _ in cont[0])} (the nearest checkpoint at or above it "
                  "is used; \"best\" is the continuation's best 4-step FD up to that point, the baseline's most "
                  "favourable reading). The students' 4-step FD along their runs (step: FD): "
                  + "; ".join(f"{key} seed {s}: {_curve(results[f'{key}-s{s}']['curve'])}"
                              for key, _, _ in students(a) for s in seeds) + ".", "",
                  "| model | CFG | FD, 4 steps | FD, 8 steps | FD, 28 steps |", "|---|---:|---:|---:|---:|"]

        def row(label, prefix, cfg):
            cells = [_ci(col(prefix, k)) for k in ("fd4", "fd8", "fd28")]
            lines.append(f"| {label} | {cfg:g} | " + " | ".join(cells) + " |")

        def at_or_above(cv, steps):
            return next(v for k, v in cv if k >= steps - 1e-9)

        row(f"base, undistilled ({a.base_steps} steps)", "base-eval", CFG)
        lines.append(f"| base + {a.extra_steps} plain steps (same steps) | {CFG:g} | {_ci(same)} | - | - |")
        row(f"base + {max(k for k, _ in cont[0])} plain steps (continuation's end)", "continue", CFG)
        for key, n, adv in students(a):
            what = "step-distillation" if adv is None else "KD-only step-distillation"
            row(f"base + {a.extra_steps} {what} steps, {n}-step sampler (`{key}`)", key, 1.0)
        lines += ["", "| claim | difference in FD | verdict |", "|---|---:|---|"]
        claims = [(f"is the base done? base + {max(k for k, _ in cont[0])} plain steps vs the base, 4 steps",
                   col("continue", "fd4"), col("base-eval", "fd4"))]
        for key, n, _ in students(a):
            eq = [at_or_above(cv, n_eq[key]) for cv in cont]
            claims += [
                (f"`{key}` vs undistilled base, {n} steps", col(key, f"fd{n}"), col("base-eval", f"fd{n}")),
                (f"`{key}` vs base + same steps, 4 steps" if n == 4 else None, col(key, "fd4"), same),
                (f"`{key}` vs base + equal compute, 4 steps" if n == 4 else None, col(key, "fd4"), eq),
                (f"`{key}` vs the best 4-step FD of the continuation up to equal compute" if n == 4 else None,
                 col(key, "fd4"), [min(v for k, v in cv if k <= n_eq[key] + cv[0][0]) for cv in cont]),
                (f"`{key}` at {n} steps vs undistilled base at 28 steps", col(key, f"fd{n}"),
                 col("base-eval", "fd28")),
                (f"`{key}` at {n} steps vs the teacher at 28 steps (seed-0 noise)" if a.step_teacher == "wide"
                 else None, col(key, f"fd{n}"), [results["teacher"]["fd28"]] * a.seeds),
            ]
        keys = {key for key, _, _ in students(a)}
        claims += [(f"`step{n}` vs `step{n}-kdonly` at {n} steps (the adversarial term)", col(f"step{n}", f"fd{n}"),
                    col(f"step{n}-kdonly", f"fd{n}")) for n in a.samplers if {f"step{n}", f"step{n}-kdonly"} <= keys]
        for label, x, y in claims:
            if label:
                d, v = _paired(x, y)
                lines.append(f"| {label} | {d} | {v} |")
        disc = {}
        for key, _, adv in students(a):
            if adv is None:
                disc[key] = [_mean_logged(results[f"{key}-s{s}"]["folder"], "loss_disc") for s in seeds]
        if disc:
            lines += ["", "Discriminator hinge loss, mean per seed over the run, warm-up included (2.0 = it cannot "
                      "tell the student's next states from noised real data; lower = it can): "
                      + "; ".join(f"{key}: " + ", ".join(f"{v:.3f}" for v in vals) for key, vals in disc.items())
                      + "."]
    if "kd" in a.parts:
        eq_steps = round(a.kd_steps * cost["kd"])
        lines += ["", f"## Knowledge distillation, students from scratch, {a.kd_steps} steps", "",
                  "| student | FD, 4 steps | FD, 8 steps | KD share of the loss | train s (seed mean) |",
                  "|---|---:|---:|---:|---:|"]

        def kd_row(label, prefix):
            share = col(prefix, "kd_share") if "kd_share" in results[f"{prefix}-s0"] else None
            secs = sum(col(prefix, "train_s")) / a.seeds
            lines.append(f"| {label} | {_ci(col(prefix, 'fd4'))} | {_ci(col(prefix, 'fd8'))} | "
                         f"{_ci(share) if share else '-'} | {secs:.0f} |")

        kd_row("no KD", "nokd")
        kd_row("KD, timestep-aware (shape 1, magnitudes per timestep bin)", "kd-timestep")
        kd_row("KD, fixed weighting at the timestep-aware run's KD share", "kd-fixed")
        kd_row(f"no KD, {eq_steps} steps (equal counted compute)", "nokd-eq")
        lines += ["", "| claim | difference in FD, 4 steps | verdict |", "|---|---:|---|"]
        for label, x, y in [("KD (timestep) vs no KD, equal steps", col("kd-timestep", "fd4"), col("nokd", "fd4")),
                            ("KD (timestep) vs no KD, equal compute", col("kd-timestep", "fd4"), col("nokd-eq", "fd4")),
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
    p.add_argument("--parts", default="step,kd", help="comma-separated: step, kd")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sweep-seeds", type=int, default=1)
    p.add_argument("--teacher-steps", type=int, default=1500)
    p.add_argument("--base-steps", type=int, default=3000)
    p.add_argument("--extra-steps", type=int, default=400)
    p.add_argument("--kd-steps", type=int, default=240)
    p.add_argument("--samplers", default="4", help="step-distillation samplers (steps), comma-separated")
    p.add_argument("--teacher-substeps", type=int, default=1)
    p.add_argument("--kd-only", action="store_true",
                   help="also the step-distilled students without the adversarial term (an ablation)")
    p.add_argument("--skip-adv", action="store_true", help="only the students without the adversarial term")
    p.add_argument("--step-teacher", choices=("wide", "base"), default="wide",
                   help="the step-distillation target: the wide teacher, or the base itself (self-distillation "
                        "of its --teacher-substeps x N-step trajectory)")
    p.add_argument("--distill-lr", type=float, default=DISTILL_LR)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="every path with tiny settings")
    a = p.parse_args()
    a.parts = tuple(x.strip() for x in a.parts.split(",") if x.strip())
    a.samplers = tuple(int(x) for x in a.samplers.split(",") if x.strip())
    if a.smoke:
        a.teacher_steps, a.base_steps, a.extra_steps, a.kd_steps, a.samples, a.batch_size = 4, 4, 2, 4, 160, 8
    if a.seeds < 1 or a.sweep_seeds > a.seeds:
        p.error("--seeds must be >= 1 and --sweep-seeds <= --seeds")
    if not a.parts or set(a.parts) - set(PARTS):
        p.error(f"--parts {','.join(a.parts)}: choose from {', '.join(PARTS)}")
    if 4 not in a.samplers:
        p.error("--samplers must include 4 (the claim under test is about the 4-step student)")
    t0 = time.perf_counter()
    cost = costs(a)
    results = run_all(a, cost)
    print(report(results, a, cost, (time.perf_counter() - t0) / 60), end="")


if __name__ == "__main__":
    main()
