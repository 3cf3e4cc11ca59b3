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
