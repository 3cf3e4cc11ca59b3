"""What the training loop minimises: an `Objective` turns a batch (x_0, noise, t, labels) into a loss.

Plain rectified flow lives here (docs/paper.md section 3, as SD3); knowledge distillation (training/kd.py) and
adversarial step distillation (training/step_distill.py) subclass it. The loop (training/loop.py) knows nothing
else about them: extra trainable modules, an auxiliary update after each step, the state a resumed run must
restore, and the identity a resumed run must share.
"""
from __future__ import annotations

import torch
from torch import nn

from .conditioning import velocity
from .flow import flow_loss, interpolate, sample_timesteps


def per_sample_mean_square(x: torch.Tensor) -> torch.Tensor:
    """Mean of x^2 over all but the batch dimension, in float32: a per-sample loss (B,) that a weighting scales."""
    return x.float().pow(2).flatten(1).mean(1)


class Objective:
    """Plain rectified flow. Subclasses add KD terms, extra trainable modules and an auxiliary update."""

    kind = "flow"
    budget_steps: int | None = None  # set by the loop before `attach`: the run's length in steps
    seed: int = 0  # set by the loop before `attach`: the run's seed, which pairs the initial weights of `trainable`

    def trainable(self) -> list[nn.Module]:
        """Modules trained with the student (KD projections); their gradients are averaged over ranks."""
        return []

    def attach(self, model: nn.Module, device: torch.device, ctx) -> None:
        """Called once with the unwrapped student before training (hooks, devices)."""

    def sample_t(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return sample_timesteps(n, gen)

    def loss(self, model: nn.Module, cond, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             labels: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict]:
        pred = velocity(model, cond, interpolate(x0, noise, t), t, labels, autocast)
        loss = flow_loss(pred, x0, noise)
        return loss, {"loss_task": loss.detach()}

    def aux_step(self, step: int) -> dict:
        """After the student's optimiser step (a discriminator update); returns scalars to log."""
        return {}

    def identity(self) -> dict:
        """What a resumed run must share with the checkpoint (teacher, weighting)."""
        return {"kind": self.kind}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
