"""Training: flow matching, distillation and decoder training (docs/training.md).

The engine and its recipes:
- loop.py          the engine: `fit`, one loop for every kind of UNet training, and its `RunResult`
- config.py        `LoopConfig`, the loop's one configuration (its fields are `pocketdiff train unet`'s flags),
                   with `LoopConfig.quality_preset()`; torch-free
- quality_run.py   recipe: the proxy quality run that ranks designs (`train`, `resolve_budget`)
- full_run.py      recipe: a full (resumable, data-parallel) run, and the objective its options ask for
Below the engine (the loop imports these, never a recipe):
- budget.py        `Budget` (steps, epochs, FLOPs, seconds); torch-free
- streams.py       batch streams: common random numbers (quality runs), step-indexed (full runs)
- conditioning.py  class labels -> the UNet's conditioning, and `velocity`
- objectives.py    `Objective`: what the loop minimises (plain flow matching)
- validation.py    the deterministic validation loss
- schedule.py      the learning-rate schedule
- optim.py         AdamW, gradient clipping, the EMA, activation checkpointing
- sample.py        sampling: class-conditional (in memory) and from a checkpoint for a text prompt
- checkpoint.py    the one checkpoint format; distributed.py  process group and collectives
- throughput.py    FLOPs per step and the host's matmul peak; flow.py  rectified-flow numerics
Distillation: teachers.py (frozen teachers with their own conditioning), kd.py (the KD objective),
kd_scaling.py (its timestep-aware weighting), step_distill.py (adversarial step distillation).
Data and the rest: data.py, text.py (prompt embeddings), proxy.py (spec -> proxy), fidelity.py (FD / FID),
decoder.py (tiny-decoder training), weights.py (weights files and model folders from outside, read so that no
file can run code).
"""
