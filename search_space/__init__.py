"""Search space: typed UNet / decoder specs, their compact strings, presets and builders."""
from .spec import DecoderSpec, Spec, SpecError, StageSpec, UNetSpec, apply_overrides, spec_from_dict
from .presets import PRESETS, PRESET_DOCS, get_preset
from .build import build_model, load_spec, example_inputs

__all__ = [
    "DecoderSpec", "Spec", "SpecError", "StageSpec", "UNetSpec", "apply_overrides", "spec_from_dict",
    "PRESETS", "PRESET_DOCS", "get_preset", "build_model", "load_spec", "example_inputs",
]
