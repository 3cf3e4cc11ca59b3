"""Limits on the numbers and sizes a user can give, and the one reader of the JSON and TOML files a user hands us.

One validation layer, used at load by specs (spec.py), study files (studies/config.py, the evaluators' option
declarations) and command-line flags, so that a value out of range ends in one line naming the key instead of a
traceback deep in torch or a study whose every trial fails:
- `out_of_range(value, low, high)` says what is wrong with a number (not a number, NaN or infinite, outside the
  range) in words each caller puts after its own key; `check_number` raises with `name=value` in front.
- `read_json` / `loads_json` / `read_toml` parse a user's file or text and refuse, with one line naming it,
  what would otherwise crash the parser or whatever walks the result: nesting deeper than MAX_NESTING levels,
  integers longer than MAX_INT_DIGITS digits, text that is not UTF-8, malformed text (with its line and column),
  and (`expect`) a top level of the wrong kind.
Refusing work whose tensors cannot fit in the memory this machine has free is memory.py's (it needs torch).

The limits are generous on purpose: they sit far above any model or run the workbench is for (the paper's
latents are 128x128, its widest stage 1280 channels) and far below where sizes overflow or cannot be allocated.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_CHANNELS = 16384  # widths: stage channels, head_dim, text_dim (SDXL's widest stage is 1280, T5-XXL's 4096)
MAX_DEPTH = 64  # layers or transformer blocks in one place (SDXL's deepest stage has 10)
MAX_STAGES = 8  # resolution stages (a downsampling factor of 128)
MAX_RATIO = 64.0  # ffn_ratio, conv_expansion, time_embed_ratio (the paper uses up to 4 and 6)
MAX_LATENT = 1024  # latent side: 8192 px under an 8x VAE (the paper measures at 128 = 1024 px)
MAX_RESOLUTION = 8192  # image side in pixels
MAX_LATENT_CHANNELS = 256  # latent / image channels (SD3 and Flux latents have 16)
MAX_NESTING = 64  # levels of nested lists / tables in a user's file (a spec or study needs 4)
MAX_INT_DIGITS = 100  # digits of an integer in a user's file (a seed needs 10)


def show(value: Any) -> str:
    """A value for a one-line message: a huge integer by its digit count instead of its digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** 20:
        if value.bit_length() < 10_000:  # str() of a longer one is refused by Python itself
            text = str(value)
            return f"{text[:8]}...({len(text.lstrip('-'))} digits)"
        return f"(an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits)"
    return repr(value)


def out_of_range(value: Any, low: float, high: float, *, whole: bool = False, low_open: bool = False,
                 unit: str = "") -> str | None:
    """None when `value` is a number (a whole one if `whole`; never a bool, NaN or infinity) within
    [low, high] (low itself excluded if `low_open`), else what it must be, e.g. "must be a whole number from 1 to
    10000": the caller puts its key and value in front."""
    kind = "a whole number" if whole else "a finite number"
    bound = f"> {low:g} and <= {high:g}" if low_open else f"from {low:g} to {high:g}"
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if ok and not isinstance(value, bool):
        if isinstance(value, int) or math.isfinite(value):
            if (value > low if low_open else value >= low) and value <= high:
                return None
    return f"must be {kind} {bound}{' ' + unit if unit else ''}"


def check_number(value: Any, name: str, low: float, high: float, *, whole: bool = False, low_open: bool = False,
                 unit: str = "", error: type[UserError] = UserError) -> Any:
    """`value` if `out_of_range` has nothing to say, else `error("name=value must be ...")`."""
    problem = out_of_range(value, low, high, whole=whole, low_open=low_open, unit=unit)
    if problem:
        raise error(f"{name}{' ' if name.startswith('--') else '='}{show(value)} {problem}")
    return value


def check_latent(value: Any, name: str, error: type[UserError] = UserError) -> int:
    """A latent side (`--latent`, [target] latent): a whole number from 1 to MAX_LATENT."""
    return check_number(value, name, 1, MAX_LATENT, whole=True, error=error,
                        unit=f"(the latent side; {MAX_LATENT} is {MAX_LATENT * 8} px under an 8x VAE)")


# --- the reader of a user's JSON and TOML --------------------------------------------------------------------

def _check_shape(data: Any, where: str, error: type[UserError]) -> Any:
    """Walk the parsed value without recursion: refuse nesting deeper than MAX_NESTING and long integers."""
    limit = 10 ** MAX_INT_DIGITS
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_NESTING:
                raise error(f"{where} nests lists or tables deeper than {MAX_NESTING} levels; a spec or study "
                            f"needs a few")
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
        elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= limit:
            raise error(f"{where} holds an integer longer than {MAX_INT_DIGITS} digits; no setting needs one")
    return data


_RAISE = object()


def _parse(parse, text: str, where: str, fmt: str, error: type[UserError], default: Any = _RAISE) -> Any:
    try:
        data = parse(text)
    except RecursionError:
        raise error(f"{where} nests lists or tables deeper than {MAX_NESTING} levels; a spec or study needs "
                    f"a few") from None
    except ValueError as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors, and so is an integer of
        if "integer string conversion" in str(e):  # more digits than Python converts
            raise error(f"{where} holds an integer longer than {MAX_INT_DIGITS} digits; no setting needs one") \
                from None
        if default is not _RAISE:
            return default
        import json
        if isinstance(e, json.JSONDecodeError):
            raise error(f"{where} is malformed JSON: {e.msg}: line {e.lineno} column {e.colno}") from None
        raise error(f"{where} is not valid {fmt}: {str(e).splitlines()[0]}") from None
    return _check_shape(data, where, error)


def loads_json(text: str, where: str, error: type[UserError] = UserError, default: Any = _RAISE) -> Any:
    """JSON text (a file's, or a `--set` value) parsed, or `error` naming `where`; with `default`, text that is
    not JSON at all gives `default` instead (a `--set` value may be a bare word), while too deep or too long
    still raises. NaN and Infinity are read (records hold NaN losses): whoever takes a number checks it."""
    import json
    return _parse(json.loads, text, where, "JSON", error, default)


def _read_text(path: Path, what: str, error: type[UserError]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None


_KINDS = {dict: "an object {...}", list: "a list [...]", str: "a string", int: "a number", float: "a number",
          bool: "true or false", type(None): "null"}


def read_json(path: str | Path, what: str = "file", error: type[UserError] = UserError,
              expect: type | None = None) -> Any:
    """A user's JSON file (a spec, a checkpoint's or a data folder's metadata, a diffusers folder's
    model_index.json or config.json), parsed; with `expect`, its top level must be of that type. Every failure
    is one `error` line naming `what` and the path."""
    path = Path(path)
    value = loads_json(_read_text(path, what, error), f"{what} {path}", error)
    if expect is not None and not isinstance(value, expect):
        raise error(f"{what} {path} holds {_KINDS[type(value)]} at the top level, expected {_KINDS[expect]}")
    return value


def read_toml(path: str | Path, what: str = "file", error: type[UserError] = UserError) -> dict:
    """A user's TOML file (a study file), parsed, as `read_json`."""
    import tomllib
    path = Path(path)
    return _parse(tomllib.loads, _read_text(path, what, error), f"{what} {path}", "TOML", error)
