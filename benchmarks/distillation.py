"""Distillation benchmark (issue 7): does KD from a larger trained teacher help a small student at a fixed budget,
timestep-aware vs fixed weighting, and does step distillation beat plain 4-step Euler sampling?

CPU, tiny scale, MNIST-5k (embedded), fixed seeds, one thread. Every model is scored by the domain FD of
training/fidelity.py (lower is better) on class-balanced samples with CFG 2 at 4 and 8 Euler steps.
  teacher   tiny-debug widened to [64, 128] (2.5M params), trained --teacher-steps
  students  tiny-debug's proxy (0.7M params), --student-steps each, same seed and batches:
            no KD | KD timestep-aware S(L_task, L_kd) | KD fixed weights (1, 1)
  step      the no-KD student + --sd-steps of adversarial step distillation (4-step sampler, teacher = the large
            model integrating each segment in 2 sub-steps) vs the same student + --sd-steps more plain training
Run: .venv/bin/python benchmarks/distillation.py [--out DIR] > benchmarks/distillation.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from search_space import load_spec  # noqa: E402
from training.data import load_data  # noqa: E402
from training.distill import KDObjective, load_teacher  # noqa: E402
from training.fidelity import domain_metrics, register_domain_extractor  # noqa: E402
from training.full import FullConfig, load_trained, prepare_spec, train_full  # noqa: E402
from training.step_distill import StepDistillConfig, StepDistillObjective  # noqa: E402
from training.text import class_prompt_embeddings  # noqa: E402
from training.trainer import sample  # noqa: E402

TEACHER_OVERRIDES = ["stages.0.channels=64", "stages.1.channels=128"]
CFG = 2.0
FINETUNE_LR = 3e-4  # [choose] both continuations of the trained student (plain and step-distilled) use 1/10 lr


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/distillation-bench")
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=150)
    p.add_argument("--sd-steps", type=int, default=60)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    t0 = time.perf_counter()
    data = load_data("mnist5k")
    prompts = class_prompt_embeddings(data.class_names)
    register_domain_extractor(data)
    student, _ = prepare_spec(load_spec("tiny-debug"), data, prompts)
    big, _ = prepare_spec(load_spec("tiny-debug", TEACHER_OVERRIDES), data, prompts)

    def cfg(steps: int, **kw) -> FullConfig:
        base = dict(steps=steps, batch_size=a.batch_size, seed=a.seed, checkpoint_every=steps,
                    log_every=max(1, steps // 10), warmup_steps=10, lr=3e-3, sample_steps=4)
        return FullConfig(**{**base, **kw})

    def run(name: str, spec, steps: int, objective=None, init=None, config=None) -> tuple[Path, float]:
        folder = out / name
        start = time.perf_counter()
        resume = (folder / "checkpoints" / "latest").is_file()  # a rerun reuses finished runs
        r = train_full(spec, data, prompts, folder, config or cfg(steps), objective, resume=resume or None,
                       init=init, progress=False)
        assert r.status == "ok", r.status
        print(f"[{time.perf_counter() - t0:6.0f} s] trained {name} ({steps} steps, "
              f"{time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        return folder, time.perf_counter() - start

    def fd(folder: Path, steps: int) -> float:
        model, spec, _ = load_trained(folder)
        labels = torch.arange(a.samples) % data.num_classes
        x = sample(model, spec, data, prompts, labels, a.seed, steps, CFG, progress=False)
        return domain_metrics(x, data)["fd_domain"]

    teacher_dir, t_teacher = run("teacher", big, a.teacher_steps)
    runs = {"no KD": run("student-nokd", student, a.student_steps)}
    runs["KD, timestep-aware S"] = run("student-kd-timestep", student, a.student_steps,
                                       KDObjective(load_teacher(teacher_dir), prompts, data.resolution, data.size,
                                                   "timestep"))
    runs["KD, fixed weights (1, 1)"] = run("student-kd-fixed", student, a.student_steps,
                                           KDObjective(load_teacher(teacher_dir), prompts, data.resolution,
                                                       data.size, "fixed"))
    base = runs["no KD"][0] / "checkpoints" / "latest"
    base = base.parent / base.read_text().strip()
    sd = StepDistillObjective(load_teacher(teacher_dir), prompts, data.resolution, data.size,
                              StepDistillConfig(sampler_steps=4, teacher_substeps=2))
    steps_runs = {
        f"no KD + {a.sd_steps} plain steps": run("student-more", student, a.sd_steps, init=base,
                                                  config=cfg(a.sd_steps, lr=FINETUNE_LR)),
        f"no KD + {a.sd_steps} step-distillation steps": run("student-stepdistill", student, a.sd_steps, sd,
                                                              init=base, config=cfg(a.sd_steps, lr=FINETUNE_LR)),
    }
    print(f"[{time.perf_counter() - t0:6.0f} s] scoring", file=sys.stderr, flush=True)
    teacher_fd = (fd(teacher_dir, 4), fd(teacher_dir, 8))
    rows = [(name, steps_s, fd(folder, 4), fd(folder, 8)) for name, (folder, steps_s) in runs.items()]
    rows2 = [(name, steps_s, fd(folder, 4), fd(folder, 8)) for name, (folder, steps_s) in steps_runs.items()]
    total = time.perf_counter() - t0

    print("# Distillation benchmark (issue 7)\n")
    print(f"`.venv/bin/python benchmarks/distillation.py` on CPU (1 thread), MNIST-5k, seed {a.seed}, batch "
          f"{a.batch_size}, lr 3e-3, EMA weights, domain FD (training/fidelity.py, lower is better) of "
          f"{a.samples} class-balanced samples, CFG {CFG:g}. Total {total / 60:.1f} min.\n")
    print(f"Teacher: tiny-debug widened to [64, 128] ({_params(big) / 1e6:.2f}M params), {a.teacher_steps} steps "
          f"({t_teacher:.0f} s): FD {teacher_fd[0]:.2f} at 4 steps, {teacher_fd[1]:.2f} at 8 steps.\n")
    print(f"## KD at equal budget: student = tiny-debug proxy ({_params(student) / 1e6:.2f}M params), "
          f"{a.student_steps} steps\n")
    print("| student | train s | FD, 4 steps | FD, 8 steps |\n|---|---:|---:|---:|")
    for name, s, f4, f8 in rows:
        print(f"| {name} | {s:.0f} | {f4:.2f} | {f8:.2f} |")
    print(f"\n## Step distillation (4-step sampler) from the no-KD student (continuations at lr {FINETUNE_LR:g})\n")
    print("| model | extra train s | FD, 4 steps | FD, 8 steps |\n|---|---:|---:|---:|")
    print(f"| no KD (undistilled) | 0 | {rows[0][2]:.2f} | {rows[0][3]:.2f} |")
    for name, s, f4, f8 in rows2:
        print(f"| {name} | {s:.0f} | {f4:.2f} | {f8:.2f} |")


def _params(spec) -> int:
    from search_space import build_model
    return sum(p.numel() for p in build_model(spec, device="meta").parameters())


if __name__ == "__main__":
    main()
