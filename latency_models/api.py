"""Prediction API: `predict_latency(spec_or_module, input_shape, device) -> (ms, (low, high))`.

`predict` returns the full record (chip, feature source, band provenance, extrapolation warning, timing).
The chip's profile says which model predicts (`adopted`: the roofline or today's op-class linear model).
Features come from the torch graph on the meta device (the source the profiles were fitted on), computed once
per model id + input shape + weight precision + code fingerprint and cached on disk, so a repeat prediction
reads one JSON file. No weights are allocated for specs and library models; a module passed in with real weights is
walked with meta stand-ins (features.features_from_torch), never copied.

A cached prediction of a spec, preset or library model imports neither torch nor scipy, whose imports would
be most of its time: the key needs only the spec_id (or library name and shape) and the code fingerprint, and
both models predict with numpy. Torch is imported where a model is built (`_source_for`, on a cache miss);
tests/pocketdiff/test_startup.py checks it.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import TYPE_CHECKING

from search_space.errors import SpecError
from search_space.spec import Spec

from . import predictor, profiles
from .validation import regime_of

if TYPE_CHECKING:
    from .export import ModelSource

# A prediction this far outside the model costs measured on the chip is flagged as an extrapolation.
EXTRAPOLATION_FACTOR = 3.0


@dataclasses.dataclass
class Prediction:
    ms: float
    low_ms: float
    high_ms: float
    chip: str
    model: str
    model_id: str
    input_shape: str
    feature_source: str
    feature_note: str
    band_note: str
    protocol: str
    cost_model: str  # "roofline" or "op-class-linear" (the chip's choice for this model's size regime)
    profile_fit_id: str
    cached_features: bool
    seconds: float
    warnings: list[str]
    attention: str = "math"  # the attention form the features were walked in (export coreml --attention)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_module(target) -> bool:
    """Whether `target` is an nn.Module, without importing torch for it: no module exists before torch is loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(target, torch.nn.Module)


def _source_for(target, input_shape, latent: int, batch: int) -> ModelSource:
    from .export import model_for

    if _is_module(target):
        return model_for(module=target, input_shape=input_shape, device="meta")
    if isinstance(target, Spec):
        return model_for(target, latent=latent, batch=batch, device="meta")
    kind, _, name = str(target).partition(":")
    if kind == "timm" and name:
        return model_for(timm=name, input_shape=input_shape, device="meta")
    if kind == "torchvision" and name:
        return model_for(torchvision=name, input_shape=input_shape, device="meta")
    return model_for(str(target), latent=latent, batch=batch, device="meta")


def _cache_key(target, input_shape, latent: int, batch: int) -> tuple[str | None, str]:
    """(key known without building anything, or None for modules; the primary input's shape as text)."""
    shape_text = "x".join(map(str, input_shape or ()))
    if _is_module(target):
        return None, shape_text
    text = str(target)
    if text.startswith(("timm:", "torchvision:")):
        return f"{text}|{shape_text}", shape_text
    from search_space import load_spec

    spec = target if isinstance(target, Spec) else load_spec(text)
    return f"{spec.spec_id}|b{batch}|latent{latent}", f"{batch}x{spec.latent_channels}x{latent}x{latent}"


def predict(target, input_shape: tuple[int, ...] | None, device: str, latent: int = 128, batch: int = 1,
            weight_bits: int = 16, profile_dir=None, attention: str | None = None) -> Prediction:
    """Predict the on-device latency of a spec / preset name / spec JSON path / "timm:NAME" /
    "torchvision:NAME" / nn.Module. For specs `input_shape` may be None (then `latent` and `batch` apply);
    given as (B, C, H, W) it sets batch = B and latent = H."""
    t0 = time.perf_counter()
    chip = profiles.resolve_device(device, profile_dir)
    profile = profiles.load_profile(chip, profile_dir)
    if input_shape is not None and not _is_module(target) and \
            not str(target).startswith(("timm:", "torchvision:")):
        batch, latent = input_shape[0], input_shape[-1]
    measured = profiles.attention_form(profile)
    attention = attention or measured
    feats, cached, key, shape = model_features(target, input_shape, latent, batch, weight_bits, attention)
    protocol = profile["model"]["default_protocol"]
    kind = profiles.adopted(profile, feats.totals)
    regime = regime_of(feats.totals)
    ms = predict_ms(profile, feats, protocol)
    low, high = profiles.band(profile, ms, regime)
    warnings = []
    lo_cost, hi_cost = profile["model"]["measured_cost_range_ms"]
    if ms > EXTRAPOLATION_FACTOR * hi_cost or ms < lo_cost / EXTRAPOLATION_FACTOR:
        warnings.append(f"extrapolating: the models measured on {chip} span {lo_cost:.3g}-{hi_cost:.3g} ms; "
                        f"the band comes from held-out families and may be too narrow this far out")
    if attention != measured:
        warnings.append(f"priced in the {attention} attention form; {chip}'s profile was fitted on {measured} "
                        f"features, so the difference between forms is the model's, not a measurement's")
    return Prediction(
        ms=ms, low_ms=low, high_ms=high, chip=chip, model=_label(target),
        model_id=key.split("|")[0], input_shape=shape, feature_source=profile["feature_source"],
        feature_note="torch graph walked on the meta device (the source this profile was fitted on; Core ML "
                     "program features are available with `pocketdiff latency features --source coreml`)",
        band_note=(f"{int(profile['band']['coverage'] * 100)}% band: the central "
                   f"{profile['band'].get('quantile_level', profile['band']['coverage']):.0%} of "
                   f"{profile['band'][regime]['from']}"),
        protocol=protocol, cost_model=kind, profile_fit_id=profile["fit_id"], cached_features=cached,
        seconds=time.perf_counter() - t0, warnings=warnings, attention=attention)


# The attention forms a model can be exported in (export.ATTENTION_FORMS; repeated here so a cached
# prediction does not import the exporter).
ATTENTION_FORMS = ("math", "split_einsum")


def model_features(target, input_shape, latent: int = 128, batch: int = 1, weight_bits: int = 16,
                   attention: str = "math"):
    """(ModelFeatures, from cache?, model id, input shape text) of a prediction target in one attention form:
    one walk, cached."""
    if not isinstance(weight_bits, int) or isinstance(weight_bits, bool) or not 1 <= weight_bits <= 32:
        raise SpecError(f"weight bits {weight_bits!r} must be a whole number from 1 to 32 "
                        f"(16 = fp16, 8 = int8, 6 = 6-bit palettized)")
    if attention not in ATTENTION_FORMS:
        raise SpecError(f"attention form {attention!r} is not one of {', '.join(ATTENTION_FORMS)}")
    key, shape = _cache_key(target, input_shape, latent, batch)
    built: dict = {}

    def compute():
        src = built.setdefault("src", _source_for(target, input_shape, latent, batch))
        return predictor.source_model_features(src, weight_bits, attention)

    if key is None:
        src = built["src"] = _source_for(target, input_shape, latent, batch)
        key = f"{src.model_id}|{shape}"
    form = "" if attention == "math" else f"|{attention}"  # math keys stay as they were
    feats, cached = predictor.cached_features(f"{key}|w{weight_bits}{form}", compute)
    built.clear()  # the meta module holds no weights, but nothing needs it past this point
    return feats, cached, key, shape


def predict_ms(profile: dict, feats, protocol: str | None) -> float:
    """The chip's adopted model on one model's features."""
    chip = profile["chip"]
    if profiles.adopted(profile, feats.totals) == "roofline":
        return profiles.roofline_from_profile(profile).predict(feats.fused, chip, protocol)
    return profiles.model_from_profile(profile).predict(feats.totals, chip, protocol)


def _label(target) -> str:
    if isinstance(target, Spec):
        return target.spec_id
    return type(target).__name__ if _is_module(target) else str(target)


def predict_latency(spec_or_module, input_shape: tuple[int, ...] | None, device: str,
                    **kwargs) -> tuple[float, tuple[float, float]]:
    """(predicted ms, (low ms, high ms)) on `device` (a chip such as "a17pro" or a phone such as
    "iphone15pro"). See `predict` for what `spec_or_module` and `input_shape` may be."""
    p = predict(spec_or_module, input_shape, device, **kwargs)
    return p.ms, (p.low_ms, p.high_ms)


def ratio_features(r) -> tuple:
    """(features of model_before, features of model_after) of a ratios.RatioMeasurement, from the cached walk."""
    return tuple(model_features(name, None, r.latent, r.batch, 16)[0] for name in (r.model_before, r.model_after))
