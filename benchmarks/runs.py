"""Quality runs for benchmarks: a plan of runs, each stored as one JSONL row the moment it finishes, run by a pool
of one-thread worker processes, so a late or interrupted benchmark leaves every finished run and a rerun
resumes where it stopped (docs/benchmarks.md).

    from runs import quality_row, run_plan
"""
from __future__ import annotations

import os

# Passive OpenMP waiting and one thread per worker: on a shared CPU, spinning threads slow every process.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

# What a benchmark keeps of a quality record (evaluators/quality.py), besides its own keys and the curve.
KEPT = ("status", "steps", "val_loss", "learned_fraction", "val_loss_constant", "val_loss_class_mean",
        "val_loss_linear", "fd_domain", "kid_domain", "fd_domain_floor", "params_proxy", "proxy_spec_id",
        "seconds_train", "seconds_sample", "seconds_total", "train_step_seconds", "stream_digest", "metrics_invalid")

_DATA = None


def _init_worker(data_source: str) -> None:
    global _DATA
    import torch

    torch.set_num_threads(1)
    from training.data import load_data
    _DATA = load_data(data_source)


def quality_row(spec, steps: int, seed: int, *, samples: int, width_mult: float | None = None, **loop) -> dict:
    """One quality run of `spec` in this worker's data: the kept record fields, the proxy's widths and the
    validation-loss curve. `loop`: LoopConfig changes on top of the quality-run preset (lr, warmup_steps, ...)."""
    from evaluators.quality import evaluate_quality
    from training.config import LoopConfig
    from training.proxy import ProxyConfig

    r = evaluate_quality(spec, _DATA, f"{steps}steps", seed, num_samples=samples, fid="off",
                         train_config=LoopConfig.quality_preset(**loop),
                         proxy_config=ProxyConfig(width_mult=width_mult), progress=False)
    return {**{k: r[k] for k in KEPT if k in r}, "channels": r["proxy"]["channels"][1],
            "curve": [h["val_loss"] for h in r["history"]]}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_plan(plan: list[dict], run: Callable[..., dict], runs_file: Path, data: str, workers: int,
             on_row: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """Run every plan entry (a dict of `run`'s keyword arguments, which also identify the run) not yet in
    `runs_file`; each finished run is the entry plus what `run` returned, appended to the file at once. A run that
    raises is stored with its error as status and the others go on. Returns all rows of the file."""
    rows = read_rows(runs_file)
    keys = list(plan[0]) if plan else []
    done = {json.dumps({k: r.get(k) for k in keys}, sort_keys=True) for r in rows}
    todo = [e for e in plan if json.dumps(e, sort_keys=True) not in done]
    print(f"{len(plan)} runs planned, {len(plan) - len(todo)} already in {runs_file}", flush=True)
    started = time.time()
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(data,)) as pool:
        futures = {pool.submit(run, **entry): entry for entry in todo}
        for fut in as_completed(futures):
            entry = futures[fut]
            try:
                row = {**entry, **fut.result()}
            except Exception as e:  # one failed run must not lose the others: record it and go on
                row = {**entry, "status": f"error: {type(e).__name__}: {e}"}
            rows.append(row)
            with runs_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{time.time() - started:7.0f}s  {entry}  val {row.get('val_loss')}  "
                  f"learned {row.get('learned_fraction')}  {row.get('seconds_total')} s  {row['status']}", flush=True)
            on_row(rows)
    return rows
