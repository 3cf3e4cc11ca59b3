"""Search space: typed UNet / decoder specs, their compact strings, presets and builders.

Specs, presets, spec loading and errors are plain Python; the builders need torch, so `build_model` and
`example_inputs` are imported on first use (PEP 562): `pocketdiff --help`, `presets list` and a cached
`latency predict` start without loading torch (docs/architecture.md: the CLI and study-file loading import no
torch).
"""
from .errors import SpecError
from .spec import SCHEMA_VERSION, DecoderSpec, Spec, StageSpec, UNetSpec, migrate_spec_dict, spec_from_dict
from .overrides import apply_overrides
from .presets import PRESETS, PRESET_DOCS, get_preset, load_spec

_LAZY = {"build_model": "build", "example_inputs": "build"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMA_VERSION", "DecoderSpec", "Spec", "SpecError", "StageSpec", "UNetSpec", "apply_overrides",
    "migrate_spec_dict", "spec_from_dict",
    "PRESETS", "PRESET_DOCS", "get_preset", "build_model", "load_spec", "example_inputs",
]
