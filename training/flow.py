"""Rectified-flow numerics: timestep sampling, the training target and loss, and the Euler ODE sampler.

docs/paper.md section 3 (objective [paper], as SD3): x_t = (1 - t) x_0 + t eps, target v = eps - x_0,
loss ||v_theta(x_t, t) - v||^2, timesteps from a logit-normal(0, 1) distribution [choose: SD3 default].
Nothing here knows about a network: the sampler takes a velocity function, so the same code drives the
UNet, a test's analytic field, or a teacher.
"""
from __future__ import annotations

from typing import Callable

import torch

# SD3 (Esser et al. 2024, section 3.1 and table 1): logit-normal timestep density with m = 0, s = 1.
LOGIT_NORMAL_MEAN = 0.0
LOGIT_NORMAL_STD = 1.0
# diffusers' flow-matching scheduler feeds the network `t * 1000`; our UNet's timestep embedding expects it.
TIMESTEP_SCALE = 1000.0

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t in [0, 1]) -> velocity


def sample_timesteps(n: int, generator: torch.Generator | None = None, mean: float = LOGIT_NORMAL_MEAN,
                     std: float = LOGIT_NORMAL_STD, device: str | torch.device = "cpu") -> torch.Tensor:
    """t = sigmoid(u), u ~ N(mean, std^2): mass in the middle, where predicting the velocity is hardest."""
    u = torch.randn(n, generator=generator) * std + mean
    return torch.sigmoid(u).to(device)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x_0 + t eps, t broadcast over all but the batch dimension."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt for the straight path: constant along it, eps - x_0."""
    return noise - x0


def flow_loss(pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error against the velocity target, computed in float32 (bf16 autocast outputs upcast)."""
    return (pred.float() - velocity_target(x0, noise).float()).pow(2).mean()


def euler_timesteps(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 times from 1 (noise) to 0 (data); `shift` > 1 spends more steps near the noise end (SD3 eq. 23)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


def cfg_velocity(velocity_cond_uncond: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 scale: float) -> VelocityFn:
    """Classifier-free guidance: v = v_uncond + scale * (v_cond - v_uncond); scale 1 is the plain conditional."""
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_cond, v_uncond = velocity_cond_uncond(x, t)
        return v_uncond + scale * (v_cond - v_uncond)
    return fn


@torch.no_grad()
def euler_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (x = noise) to t = 0 with `steps` explicit Euler steps."""
    times = euler_timesteps(steps, shift).to(noise.device)
    x = noise
    for t_now, t_next in zip(times[:-1], times[1:]):
        t = torch.full((x.shape[0],), float(t_now), device=x.device)
        x = x + (t_next - t_now) * velocity(x, t).to(x.dtype)  # (t_next - t_now) < 0: towards data
    return x
