"""The quality run: a short rectified-flow training of a proxy spec that ranks designs (docs/quality.md).

A recipe over the one loop (training/loop.py), configured by `LoopConfig.quality_preset()`: flow matching
(docs/paper.md section 3) with AdamW, gradient clipping, an EMA of the weights (what gets sampled), condition
dropout so one network also gives the unconditional velocity for classifier-free guidance, bf16 autocast on GPU.

Designs are compared fairly:
- Budgets are steps, epochs or training FLOPs (resolved to a step count before the run: `resolve_budget`) or
  wall seconds; the learning rate warms up linearly, then decays linearly to zero exactly at the budget's end,
  so every run ends converged for its length instead of mid-flight at a constant rate.
- Common random numbers (training/streams.py, the `crn` stream): for one seed every candidate sees identical
  batches, condition dropout, noise and timesteps, and starts from identical weights wherever the designs agree
  (paired initialisation, search_space/init.py). The stream's digest is recorded so a comparison can check it.
- The validation loss is deterministic (training/validation.py): the same held-out inputs for every candidate
  and every seed.
Metrics reach a callback during the run, so a study can prune. A NaN loss ends the run with status
"diverged at step N" instead of an exception.
"""
from __future__ import annotations

from pathlib import Path

import torch

from search_space import UNetSpec

from .budget import Budget
from .config import LoopConfig
from .data import FlowData
from .distributed import DistContext
from .loop import MetricsCallback, RunResult, fit
from .objectives import Objective
from .text import PromptEmbeddings
from .throughput import training_flops_per_step

REPORT_FRACTION = 0.2  # report metrics (val loss) every fifth of the budget: enough points to prune on


def resolve_budget(budget: Budget | str, spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings,
                   config: LoopConfig) -> Budget:
    """The budget as a step count for this spec, data and batch size (raises BudgetError when too short). A FLOPs
    budget divides by the matmul FLOPs of one training step at this data's shape (training/throughput.py)."""
    budget = Budget.parse(budget)
    return budget.resolve(
        data.train_count, config.batch_size,
        lambda: training_flops_per_step(spec, (data.channels, data.size, data.size), prompts.tokens.shape[1],
                                        prompts.dim, config.batch_size),
        config.warmup_steps)


def train(spec: UNetSpec, data: FlowData, prompts: PromptEmbeddings, budget: Budget | str,
          config: LoopConfig | None = None, *, device: str | torch.device | None = None,
          callback: MetricsCallback | None = None, progress: bool = True,
          objective: Objective | None = None) -> RunResult:
    """Train `spec` from scratch on `data` for `budget` with the one loop under common random numbers; returns
    the EMA and raw weights, status, validation loss and throughput. `config` defaults to
    `LoopConfig.quality_preset()` (its seed picks the stream); `objective` defaults to plain flow matching."""
    config = config or LoopConfig.quality_preset()
    budget = resolve_budget(budget, spec, data, prompts, config)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return fit(spec, data, prompts, config, DistContext(device=device), budget=budget, objective=objective,
               stream="crn", callback=callback, report_fraction=REPORT_FRACTION, progress=progress)


def save_run_checkpoint(out_dir: str | Path, result: RunResult, spec: UNetSpec, data: FlowData,
                        prompts: PromptEmbeddings, cfg_scale: float, sample_steps: int, meta: dict) -> Path:
    """A quality run's weights in the one checkpoint format (training/checkpoint.py), weights only: it feeds
    `pocketdiff train --init` / `--teacher`, `export coreml --checkpoint` and `sample` like a full run's."""
    from .checkpoint import run_meta, save_checkpoint

    return save_checkpoint(Path(out_dir) / "checkpoints", result.step, result.raw, result.ema, spec,
                           {**run_meta(data, prompts, cfg_scale, sample_steps), **meta, "kind": "quality"},
                           state=None)
