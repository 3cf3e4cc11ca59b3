"""Rectified-flow numerics (training/flow.py) and budgets, checked without any network."""
import re

import pytest
import torch

from training.flow import (cfg_velocity, euler_sample, euler_timesteps, flow_loss, interpolate, sample_timesteps,
                           velocity_target)
from training.budget import Budget, BudgetError


def test_logit_normal_timesteps_are_in_open_interval_and_centred():
    t = sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(float(t.median()) - 0.5) < 0.02  # logit-normal(0, 1) is symmetric about 1/2
    # More mass in the middle than uniform: P(0.25 < t < 0.75) = P(|u| < ln 3) ~ 0.73 for u ~ N(0, 1).
    assert 0.70 < float(((t > 0.25) & (t < 0.75)).float().mean()) < 0.76


def test_interpolation_endpoints_and_target():
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert torch.equal(interpolate(x0, eps, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, eps, torch.ones(3)), eps)
    t = torch.tensor([0.1, 0.5, 0.9])
    h = 1e-3
    finite_diff = (interpolate(x0, eps, t + h) - interpolate(x0, eps, t - h)) / (2 * h)
    assert torch.allclose(finite_diff, velocity_target(x0, eps), atol=1e-3)
    assert flow_loss(velocity_target(x0, eps), x0, eps) == 0


def test_euler_sampler_lands_on_the_data_point_of_a_straight_field():
    # With one data point x0 the exact rectified-flow velocity is (x_t - x0) / t: paths are straight,
    # so Euler integration is exact at any step count.
    x0 = torch.randn(1, 3, 4, 4)
    noise = torch.randn(5, 3, 4, 4)
    field = lambda x, t: (x - x0) / t.view(-1, 1, 1, 1)  # noqa: E731
    for steps in (1, 3, 8):
        out = euler_sample(field, noise, steps)
        assert torch.allclose(out, x0.expand_as(out), atol=1e-5)


def test_euler_timesteps_and_shift():
    t = euler_timesteps(4)
    assert torch.allclose(t, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = euler_timesteps(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and (shifted[1:-1] > t[1:-1]).all()
    with pytest.raises(ValueError):
        euler_timesteps(0)


def test_cfg_combines_conditional_and_unconditional():
    pair = lambda x, t: (torch.full_like(x, 3.0), torch.full_like(x, 1.0))  # noqa: E731
    x, t = torch.zeros(2, 1), torch.ones(2)
    assert torch.equal(cfg_velocity(pair, 1.0)(x, t), torch.full_like(x, 3.0))
    assert torch.equal(cfg_velocity(pair, 0.0)(x, t), torch.full_like(x, 1.0))
    assert torch.equal(cfg_velocity(pair, 2.0)(x, t), torch.full_like(x, 5.0))


@pytest.mark.parametrize("text,steps,seconds", [("60s", None, 60.0), ("2m", None, 120.0), ("500steps", 500, None),
                                                ("1step", 1, None), ("0steps", 0, None), ("1.5s", None, 1.5)])
def test_budget_parse(text, steps, seconds):
    b = Budget.parse(text)
    assert (b.steps, b.seconds) == (steps, seconds)
    assert Budget.parse(str(b)) == b


@pytest.mark.parametrize("text", ["", "60", "fast", "1.5steps", "-3s", "10 parsecs", "0epochs",
                                  "\u0663steps", "\uff15\uff10steps"])  # Arabic-Indic 3, fullwidth 50
def test_budget_rejects_bad_strings(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


@pytest.mark.parametrize("text,says", [("1e400steps", "at most 1e+08 steps"), ("1e400epochs", "at most 1e+06 epochs"),
                                       ("200000000steps", "at most 1e+08 steps"), ("1e30flops", "at most 1e+25"),
                                       ("100000m", "at most 2.592e+06 seconds")])
def test_budget_refuses_infinite_and_huge_lengths(text, says):
    with pytest.raises(BudgetError, match=re.escape(f"budget {text!r} is too large: {says}")):
        Budget.parse(text)
    assert Budget.parse("100000000steps").steps == 10 ** 8  # the limit itself is a budget
