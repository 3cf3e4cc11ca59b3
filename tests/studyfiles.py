"""Study files for tests, written from Python values instead of TOML pasted into each test module.

`study(name, **sections)` builds a study as the dict `studies.config.parse_study` reads; `toml(study)` writes it
as a study file. Sections given replace the defaults whole, except `study`, whose keys are merged into the
default `[study]` table. Two spaces cover what the tests search: `TINY_SPACE` (tiny-debug, cheap to count and
to train) and `SNAPGEN_SPACE` (full-size UNets, counted on the meta device).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

TINY_SPACE = {"base": "tiny-debug", "ffn_ratio": {"choices": [2.0, 3.0, 4.0]}}
SNAPGEN_SPACE = {"base": "snapgen-unet",
                 "stages.1.channels": {"choices": [384, 512, 640]},
                 "stages.2.channels": {"choices": [640, 768, 896]},
                 "ffn_ratio": {"choices": [2.0, 3.0, 4.0]},
                 "attention": {"choices": ["mqa", "mhsa"]}}


def study(name: str = "t", *, n_trials: int = 2, space: dict | None = None, **sections: Any) -> dict:
    """A study table: `[study]` (name, random sampler, n_trials, plus `study=`'s keys), a 32x32 latent target,
    `space` (TINY_SPACE by default) and params as the one objective unless sections say otherwise."""
    d: dict[str, Any] = {"study": {"name": name, "sampler": "random", "n_trials": n_trials},
                         "target": {"latent": 32},
                         "space": dict(TINY_SPACE if space is None else space),
                         "objectives": {"params_m": "minimize"}}
    d["study"].update(sections.pop("study", {}))
    d.update(sections)
    return d


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE.fullmatch(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v if x is not None) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"no TOML form for {v!r}")


def toml(d: dict) -> str:
    """The study as a TOML file: one table per section, values inline; None (TOML has no null) leaves a key out."""
    out = []
    for section, table in d.items():
        out.append(f"[{section}]")
        out += [f"{_key(k)} = {_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    return "\n".join(out)


def write(path: Path, d: dict) -> Path:
    path.write_text(toml(d))
    return path
