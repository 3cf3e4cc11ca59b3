"""Reading a JSON side file a user hands in (a checkpoint's checkpoint.json, a diffusers folder's model_index.json
or config.json): one place that turns every way such a file can be wrong into one line naming the file.

Plain Python, in the lowest layer, so that training/ and latency_models/ share it. A missing or unreadable file,
text that is not UTF-8, malformed JSON (with the line and column), nesting too deep for the parser, an integer
with more digits than Python converts, and a top-level value of the wrong kind (a list where a table belongs)
all raise the caller's `UserError` subclass with the file's path.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

_NAMES = {dict: "an object {...}", list: "a list [...]", str: "a string", int: "a number", float: "a number",
          bool: "true or false", type(None): "null"}


def read_json(path: str | Path, what: str, error: type[UserError] = UserError, expect: type = dict):
    """The parsed contents of `path` (a `what`, e.g. "checkpoint metadata"), which must be an `expect`."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        value = json.loads(text)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start}); it is not a JSON file") from None
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is malformed JSON: {e.msg}: line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise error(f"{what} {path} nests too deeply to read; it is not a file this tool writes") from None
    except ValueError as e:  # an integer of thousands of digits (Python's int conversion limit)
        raise error(f"{what} {path} holds a number too large to read ({str(e).splitlines()[0][:80]})") from None
    if not isinstance(value, expect):
        raise error(f"{what} {path} holds {_NAMES[type(value)]} at the top level, expected {_NAMES[expect]}")
    return value
