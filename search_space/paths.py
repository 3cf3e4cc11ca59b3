"""Dotted paths into a spec's dict form: `stages.1.channels`, `attention`, `decoder.channels.0`.

The one knob grammar of the project: `--set key=value` (overrides.apply_overrides), study-file knobs
(sampling.py), `describe --compare` and the explorer's knob columns and trial diffs all go through
`get_path`, `set_path`, `flatten` and `diff` here, so the same mistake gives the same message everywhere. A
path is keys of objects and indices of lists joined by dots; `set_path` replaces a leaf value only (a
per-stage list or a nested object is changed one field at a time).
"""
from __future__ import annotations

from typing import Any

from .errors import SpecError
from .limits import loads_json

MISSING = object()


def _step(node: Any, part: str, path: str, where: str) -> Any:
    if isinstance(node, list):
        if not (part.isdigit() and int(part) < len(node)):
            raise SpecError(f"{where}{path}: index {part!r} is out of range (there are {len(node)} entries, "
                            f"0 to {len(node) - 1})")
        return node[int(part)]
    if isinstance(node, dict):
        if part not in node:
            raise SpecError(f"{where}{path}: unknown key {part!r}; known: {', '.join(sorted(node))}")
        return node[part]
    raise SpecError(f"{where}{path}: {part!r} goes below a single value; the path ends one level higher")


def get_path(d: Any, path: str, default: Any = MISSING, where: str = "") -> Any:
    """The value at `path`; a missing step raises SpecError naming it, unless a `default` is given."""
    node = d
    for part in path.split("."):
        try:
            node = _step(node, part, path, where)
        except SpecError:
            if default is MISSING:
                raise
            return default
    return node


def _describe(v: Any) -> str:
    if isinstance(v, list):
        return f"a list of {len(v)} entries"
    if isinstance(v, dict):
        return f"an object with keys {', '.join(sorted(v))}"
    return "a single value"


def set_path(d: Any, path: str, value: Any, where: str = "") -> None:
    """Set the leaf at `path` in place. Replacing a list or an object by another shape is refused: set one
    field of it instead (`stages.0.channels=256`, not `stages=3`)."""
    parts = path.split(".")
    node = d
    for part in parts[:-1]:
        node = _step(node, part, path, where)
    current = _step(node, parts[-1], path, where)
    if isinstance(current, (list, dict)) and not isinstance(value, type(current)) \
            or current is not None and not isinstance(current, (list, dict)) and isinstance(value, (list, dict)):
        leaves = sorted(flatten(current, path + ".")) if isinstance(current, (list, dict)) and current else []
        example = next((p for p in leaves if p != path), f"{path}.0" if isinstance(current, list) else path)
        raise SpecError(f"{where}{path} is {_describe(current)}, not {_describe(value)}: set one field at a time, "
                        f"e.g. {example}=...")
    if isinstance(current, dict) and isinstance(value, dict) and set(current) - set(value):
        missing = sorted(set(current) - set(value))
        raise SpecError(f"{where}{path}: an object without {', '.join(missing)} would reset those fields to their "
                        f"defaults; set the fields you mean one at a time, e.g. {path}.{sorted(value or current)[0]}=...")
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def parse_assignment(item: str, where: str = "--set ") -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is JSON where it parses (numbers, true/false, null, lists), else
    the string itself."""
    if "=" not in item:
        raise SpecError(f"{where}{item!r} must look like key=value, e.g. stages.1.channels=512")
    key, raw = item.split("=", 1)
    if not key.strip() or not key.isprintable():
        raise SpecError(f"{where}{item!r}: the key {key!r} is empty or holds control characters; write e.g. "
                        f"stages.1.channels=512")
    return key.strip(), loads_json(raw, f"{where}{key.strip()}: the value", SpecError, default=raw)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"stages": [{"channels": 256}], "heads": [1, 2]} -> {"stages.0.channels": 256, "heads": [1, 2]}: objects
    and lists of objects open into paths; other lists are leaf values."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        items = d.items()
    elif isinstance(d, (list, tuple)) and d and all(isinstance(x, dict) for x in d):
        items = ((str(i), x) for i, x in enumerate(d))
    else:
        return {prefix.rstrip("."): d}
    for k, v in items:
        if isinstance(v, dict) or isinstance(v, (list, tuple)) and v and all(isinstance(x, dict) for x in v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(path, value in a, value in b) for every leaf that differs, in path order; a path only one side has
    shows MISSING on the other."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k, MISSING), fb.get(k, MISSING)) for k in sorted({*fa, *fb})
            if fa.get(k, MISSING) != fb.get(k, MISSING)]
