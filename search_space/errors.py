"""The error types for mistakes a user can fix (a bad spec value, an unknown preset, a study file naming a
metric nothing produces, a storage that holds no such study).

Every layer raises a subclass of `UserError` for such mistakes, with a message that says what is wrong and how
to fix it; the CLI catches `UserError` in one place and prints it as one line (exit code 2). It lives here, in
the lowest layer, so that every other layer can subclass it without importing upwards.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input; the message is one line naming what was wrong and the fix."""


class SpecError(UserError):
    """A spec value is invalid; the message names the field and how to fix it."""


MAX_SEED = 2 ** 32 - 1  # numpy's generators and Optuna's samplers take seeds from 0 to 2**32 - 1


def seed_arg(text: str) -> int:
    """An argparse type for `--seed`: a whole number from 0 to MAX_SEED (a larger one fails deep in a sampler)."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..{MAX_SEED} (2**32 - 1)")
    return value
