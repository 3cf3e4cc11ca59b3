"""Latency models: Core ML export, on-device measurement, op features, the calibrated predictor, device profiles.

export.py        spec / torchvision / timm / nn.Module -> fp16 mlprogram (iOS17, iOS18), cached
features.py      the one op trace (torch graph on the meta device) and the Core ML program walk
archs.py         rebuilds of every measured architecture from configs written out here (no downloads)
measurements.py  measurement CSV schemas, validation, import; the copied published data (data/)
chips.py         published peak, bandwidth and on-chip memory per chip (the roofline's priors)
roofline.py      fused-op roofline cost model: compute, memory with spill, dispatch; few fitted terms
predictor.py     today's op-class linear model; cached features keyed by the code fingerprint
fingerprint.py   fingerprint of the builder and feature code
validation.py    held-out comparison of both models and the baselines; which model each chip adopts
profiles.py      versioned per-chip JSON profiles (profiles/) and device aliases
api.py           predict_latency(spec_or_module, input_shape, device) -> (ms, (low, high))
explain.py       predicted ms per stage / op kind / block / term, and the difference of two models
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
