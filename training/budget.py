"""Training budgets: `Budget` (steps, epochs, FLOPs or wall-clock seconds) and the loop's warm-up length.

Plain Python (no torch), so a study file's budgets are checked when it loads without importing the training
loop: `study status` and the CLI start at once (docs/architecture.md).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from search_space.errors import UserError

WARMUP_STEPS = 10  # the loop's default linear learning-rate warm-up; a non-zero step budget must be longer


class BudgetError(UserError):
    """A budget string that is not `<N>steps`, `<N>epochs`, `<X>flops`, `<N>s` or `<N>m`, or one too short."""


# ASCII digits only: Python's \d also takes other scripts' digits, which a budget written in them would run with
_BUDGET_RE = re.compile(r"\s*(\d+(?:\.\d*)?(?:e\+?\d+)?)\s*(steps?|epochs?|flops?|s|sec|m|min)\s*", re.ASCII)
# [choose] the largest budget of each kind accepted: far past any run this workbench is for (10^8 steps is weeks
# on a GPU for the smallest model), small enough that no count overflows or allocates by it
LIMITS = {"steps": 10 ** 8, "epochs": 10 ** 6, "flops": 1e25, "seconds": 30 * 86400}


@dataclass(frozen=True)
class Budget:
    """Training length: steps, epochs or training FLOPs (all resolved to a step count: reproducible on any
    machine) or wall-clock seconds (quality then depends on the host's speed and load)."""

    steps: int | None = None
    epochs: float | None = None
    flops: float | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: "str | Budget") -> "Budget":
        if isinstance(text, Budget):
            return text
        raw = str(text).strip().lower()
        if raw.startswith("-"):
            raise BudgetError(f"budget {text!r} is negative; give a positive length, e.g. 2000steps or 3epochs")
        m = _BUDGET_RE.fullmatch(raw)
        if not m:
            raise BudgetError(f"budget {text!r} is not understood; write e.g. 2000steps, 3epochs, 5e12flops, "
                              f"60s or 2m")
        value, unit = float(m.group(1)), m.group(2)
        kind = ("steps" if unit.startswith("step") else "epochs" if unit.startswith("epoch")
                else "flops" if unit.startswith("flop") else "seconds")
        if not value * (60 if unit.startswith("m") else 1) <= LIMITS[kind]:  # also catches inf (1e400steps)
            raise BudgetError(f"budget {text!r} is too large: at most {LIMITS[kind]:g} {kind}")
        if unit.startswith("step"):
            if value != int(value):
                raise BudgetError(f"budget {text!r}: a step count must be whole, e.g. 2000steps")
            return cls(steps=int(value))
        if value <= 0:
            raise BudgetError(f"budget {text!r} is empty; give a positive length (0steps = the untrained model)")
        if unit.startswith("epoch"):
            return cls(epochs=value)
        if unit.startswith("flop"):
            return cls(flops=value)
        return cls(seconds=value * (60 if unit.startswith("m") else 1))

    def __str__(self) -> str:
        if self.steps is not None:
            return f"{self.steps}steps"
        if self.epochs is not None:
            return f"{self.epochs:g}epochs"
        if self.flops is not None:
            return f"{self.flops:g}flops"
        return f"{self.seconds:g}s"

    @property
    def wall_clock(self) -> bool:
        return self.seconds is not None

    def resolve(self, train_count: int, batch_size: int, flops_per_step: "Callable[[], float] | None" = None,
                warmup_steps: int = 0) -> "Budget":
        """A step budget for this data and batch size (wall-clock budgets are returned as they are). A non-zero
        budget must be longer than the warm-up: the schedule needs steps to decay over."""
        if self.seconds is not None:
            return self
        if self.steps is not None:
            steps = self.steps
        elif self.epochs is not None:
            steps = math.ceil(self.epochs * max(1, train_count // max(1, batch_size)))
        else:
            if flops_per_step is None:
                raise BudgetError(f"budget {self}: a FLOPs budget needs the model's FLOPs per step")
            steps = math.floor(self.flops / flops_per_step())
        if self.steps != 0 and steps <= warmup_steps:
            raise BudgetError(f"budget {self} is {steps} steps, not longer than the {warmup_steps}-step warm-up; "
                              f"give at least {warmup_steps + 1}steps (0steps scores the untrained model)")
        return Budget(steps=steps)

    def done(self, step: int, elapsed: float) -> bool:
        self._check_resolved()
        return step >= self.steps if self.steps is not None else elapsed >= self.seconds

    def fraction(self, step: int, elapsed: float) -> float:
        self._check_resolved()
        return step / max(1, self.steps) if self.steps is not None else elapsed / max(1e-9, self.seconds)

    def _check_resolved(self) -> None:
        if self.steps is None and self.seconds is None:
            raise BudgetError(f"budget {self} must be resolved to steps first (Budget.resolve)")


WALL_CLOCK_NOTICE = ("note: a wall-clock budget trains each candidate for as many steps as this host manages "
                     "in that time, so quality then depends on the host's speed and load; use a step budget "
                     "(e.g. 2000steps) to compare designs")


# The default budgets of the two short runs an evaluator makes (each written once; the evaluator declarations,
# the libraries and the CLI read them from here).
# [choose] reproducible steps, not wall clock: tiny-debug on MNIST-5k trains in about a minute on 2 cores
QUALITY_RUN_BUDGET = Budget(steps=500)
# [choose] a decoder run at full size on CPU (docs/quality.md): a minute of training scores the held-out crops
DECODER_RUN_BUDGET = Budget(seconds=60.0)
