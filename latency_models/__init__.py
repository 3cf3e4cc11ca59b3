"""Latency models: Core ML export, on-device measurement, op features, the calibrated predictor, device profiles.

export.py        spec / torchvision / timm / nn.Module -> fp16 mlprogram (iOS17, iOS18), cached
features.py      per-op tables from a Core ML program or from the torch graph on the meta device
measurements.py  measurement CSV schemas, validation, import; the copied calibration data (data/)
predictor.py     op-class cost model, shared across chips with per-chip scales; held-out validation
profiles.py      versioned per-chip JSON profiles (profiles/) and device aliases
api.py           predict_latency(spec_or_module, input_shape, device) -> (ms, (low, high))
measure.py       Core ML timing on a Mac, torch timing on the host
report.py        validation tables (reports/)
"""
from __future__ import annotations


def __getattr__(name: str):
    # Lazy, so `import latency_models.features` does not pull in scipy and the profiles.
    if name in ("predict_latency", "predict"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'latency_models' has no attribute {name!r}")
