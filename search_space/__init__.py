"""Search space: typed UNet / decoder specs, their compact strings, presets and builders."""
from .spec import (
    SCHEMA_VERSION, DecoderSpec, Spec, SpecError, StageSpec, UNetSpec, apply_overrides, migrate_spec_dict, spec_from_dict,
)
from .presets import PRESETS, PRESET_DOCS, get_preset
from .build import build_model, load_spec, example_inputs

__all__ = [
    "SCHEMA_VERSION", "DecoderSpec", "Spec", "SpecError", "StageSpec", "UNetSpec", "apply_overrides",
    "migrate_spec_dict", "spec_from_dict",
    "PRESETS", "PRESET_DOCS", "get_preset", "build_model", "load_spec", "example_inputs",
]
