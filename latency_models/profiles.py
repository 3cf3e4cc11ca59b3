"""Device profiles: versioned JSON files in profiles/, one per chip, and the names phones go by.

A profile holds both fitted models (the roofline of roofline.py and today's op-class linear model of
predictor.py), which one the chip predicts with per size regime (`model.adopted`, chosen by
validation.compare: the roofline only where it wins on held-out families), the uncertainty band of each
regime's model, the measurements of that chip it was fitted on (with sources and op-class totals) and its
validation report. All profiles of one fit share `fit_id`; refitting (`build_profiles`, `pocketdiff latency
fit`) pools the published rows plus any imported ones, because both models share their structure across
chips.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np

from search_space import SpecError

from . import predictor, roofline, validation
from .chips import CHIPS
from .features import OP_CLASSES
from .measurements import Measurement

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILE_FORMAT = "pocketdiff-latency-profile"
PROFILE_VERSION = 2  # bump when the JSON layout or the model form changes

# Chips the workbench names; a chip without calibration data has no profile until someone measures it.
KNOWN_CHIPS = ("a13", "a14", "a15", "a16", "a17pro", "a18pro", "m1", "m2")
# Phone / tablet -> chip (Apple's published specifications of each model).
ALIASES = {
    "iphone11": "a13", "iphone11pro": "a13", "iphone11promax": "a13", "iphonese2": "a13",
    "iphone12mini": "a14", "iphone12": "a14", "iphone12pro": "a14", "iphone12promax": "a14",
    "iphone13mini": "a15", "iphone13": "a15", "iphone13pro": "a15", "iphone13promax": "a15",
    "iphone14": "a15", "iphone14plus": "a15", "iphonese3": "a15",
    "iphone14pro": "a16", "iphone14promax": "a16", "iphone15": "a16", "iphone15plus": "a16",
    "iphone15pro": "a17pro", "iphone15promax": "a17pro",
    "iphone16pro": "a18pro", "iphone16promax": "a18pro",
    "ipadprom1": "m1", "ipadairm1": "m1", "macbookairm1": "m1", "ipadprom2": "m2", "ipadairm2": "m2",
    "macbookairm2": "m2",
}


class UnknownDevice(SpecError):
    """A device name with no profile; the message lists the known devices."""


def normalize(name: str) -> str:
    """"iPhone 15 Pro" -> "iphone15pro", "A17 Pro" -> "a17pro", "iPad Pro (M1)" -> "ipadprom1"."""
    return re.sub(r"[^a-z0-9]+", "", name.lower().replace("bionic", ""))


def available_chips(profile_dir: Path | None = None) -> list[str]:
    d = Path(profile_dir or PROFILE_DIR)
    return sorted(p.stem for p in d.glob("*.json"))


# What a new chip needs so that both models can be fitted and validated on it: three small families (the
# chip's scale and dispatch regime) and diffusion-scale models (the roofline's compute / memory regime).
MEASUREMENT_PLAN = ("torchvision resnet50 and mobilenet_v2 at 1x3x224x224, timm fastvit_t8 at 1x3x256x256, and "
                    "the presets fig3-a, fig3-c2 and snapgen-decoder at latent 128 (`pocketdiff export coreml "
                    "NAME --latent 128`), compute units CPU_AND_NE, random non-zero weights")


def what_to_measure(chip: str) -> str:
    why = ("no published Neural Engine latency of a model we can rebuild exists for it (the one public A18 Pro "
           "figure is a zero-weight conv benchmark, and the chip skips zero weights)" if chip == "a18pro" else
           "no calibration data")
    return (f"{why}. To add it, time on a device with that chip: {MEASUREMENT_PLAN}; then `pocketdiff latency "
            f"import FILE.csv` and `pocketdiff latency fit --measurements STORE`.")


def resolve_device(name: str, profile_dir: Path | None = None) -> str:
    """Chip name of a device or chip; raises UnknownDevice listing the known ones."""
    key = normalize(name)
    chip = ALIASES.get(key, key)
    have = available_chips(profile_dir)
    if chip in have:
        return chip
    listing = ", ".join(have) or "none"
    aliases = ", ".join(sorted(a for a, c in ALIASES.items() if c in have))
    if chip in KNOWN_CHIPS:
        raise UnknownDevice(f"device {name!r} is chip {chip}, which has no profile yet: {what_to_measure(chip)} "
                            f"Profiles: {listing}")
    raise UnknownDevice(f"unknown device {name!r}; devices with a profile: {listing} (aliases: {aliases})")


def load_profile(chip: str, profile_dir: Path | None = None) -> dict:
    path = Path(profile_dir or PROFILE_DIR) / f"{chip}.json"
    data = json.loads(path.read_text())
    if data.get("format") != PROFILE_FORMAT or data.get("version") != PROFILE_VERSION:
        raise SpecError(f"{path} is not a version-{PROFILE_VERSION} {PROFILE_FORMAT} file; refit with "
                        f"`pocketdiff latency fit`")
    return data


def adopted(profile: dict, totals: dict) -> str:
    """The model this chip predicts `totals` (a model's op-class totals) with: per size regime."""
    return profile["model"]["adopted"][validation.regime_of(totals)]


def roofline_from_profile(profile: dict) -> roofline.RooflineModel:
    r = profile["model"]["roofline"]
    chip = profile["chip"]
    return roofline.RooflineModel(r["shared"], {chip: r["peak_factor"]}, {chip: r["bandwidth_factor"]},
                                  r["overheads_ms"], r["protocol_scale"])


def model_from_profile(profile: dict) -> predictor.FittedModel:
    """Today's op-class linear model of the profile's chip."""
    lin = profile["model"]["linear"]
    structure = lin["structure"]
    if structure["columns"] != list(predictor.COLUMNS):
        raise SpecError(f"profile {profile['chip']} was fitted on other feature columns; refit it")
    return predictor.FittedModel(np.array(structure["theta"]), {profile["chip"]: lin["scale"]},
                                 lin["overheads_ms"])


def measurements_from_profiles(profile_dir: Path | None = None) -> tuple[list[Measurement], list[dict]]:
    """Every profile's fitted-on measurements with their stored feature totals."""
    ms, totals = [], []
    for chip in available_chips(profile_dir):
        for row in load_profile(chip, profile_dir)["measurements"]:
            d = dict(row)
            t = d.pop("features")
            d["input_shape"] = tuple(int(s) for s in d["input_shape"].split("x"))
            ms.append(Measurement(**d))
            totals.append(t)
    return ms, totals


def _fit_id(measurements: list[Measurement]) -> str:
    h = hashlib.sha1(json.dumps([m.to_dict() for m in measurements], sort_keys=True).encode())
    h.update(f"{predictor.FEATURE_VERSION}|{predictor.CLASS_RIDGE}|{PROFILE_VERSION}|roofline".encode())
    return h.hexdigest()[:12]


def build_profiles(measurements: list[Measurement], features: list | None = None,
                   out_dir: Path | None = None, progress=None) -> dict[str, dict]:
    """Fit both models on all in-fit measurements, compare them held out, write one profile per chip."""
    measurements = [m for m in measurements if m.in_fit]
    if features is None:
        features = []
        for m in measurements:
            features.append(predictor.measurement_features(m))
            if progress:
                progress(m)
    totals = [f.totals for f in features]
    linear = predictor.fit(measurements, totals)
    roof = roofline.fit_roofline(measurements, [f.fused for f in features])
    report = validation.compare(measurements, features)
    residuals = report.pop("residuals")
    fit_id = _fit_id(measurements)
    out_dir = Path(out_dir or PROFILE_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    profiles = {}
    regime = [validation.regime_of(t) for t in totals]
    for chip in sorted({m.chip for m in measurements}):
        mine = [i for i, m in enumerate(measurements) if m.chip == chip]
        chosen = report["chips"][chip]["adopted"]
        bands = {"coverage": predictor.BAND_COVERAGE}
        for reg in validation.REGIMES:
            method = "roofline" if chosen[reg] == "roofline" else "predictor"
            pooled = [v for k, v in residuals[method].items() if k.startswith(reg + "|")]
            own = [v for k, v in residuals[method].items() if k.startswith(f"{reg}|{chip}|")]
            use_own = len(own) >= predictor.MIN_ROWS_FOR_OWN_BAND
            lo, hi = predictor.band_quantiles(own if use_own else pooled)
            bands[reg] = {"log_low": lo, "log_high": hi, "model": chosen[reg],
                          "from": (f"leave-one-family-out {reg}-model residuals of {chip} ({len(own)} rows)"
                                   if use_own else f"leave-one-family-out {reg}-model residuals pooled over all "
                                   f"chips ({len(pooled)} rows; {chip} has {len(own)})")}
        protocols = [measurements[i].protocol for i in mine]
        default_protocol = max(sorted(set(protocols)), key=protocols.count)
        costs = [roof.predict(features[i].fused, chip, None) if chosen[regime[i]] == "roofline"
                 else linear.scales[chip] * linear.cost(totals[i]) for i in mine]
        facts = CHIPS.get(chip)
        profile = {
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "chip": chip, "fit_id": fit_id,
            "fitted_on": datetime.date.today().isoformat(),
            "aliases": sorted(a for a, c in ALIASES.items() if c == chip),
            "devices": sorted({measurements[i].device for i in mine}),
            "feature_source": predictor.FEATURE_SOURCE, "feature_version": predictor.FEATURE_VERSION,
            "model": {
                "adopted": chosen, "adopted_because": report["chips"][chip]["adopted_because"],
                "regime_gmacs": validation.LARGE_GMACS, "default_protocol": default_protocol,
                "measured_cost_range_ms": [min(costs), max(costs)],
                "roofline": {
                    "form": "sum over fused ops of smoothmax(compute, memory) + dispatch, + overhead[protocol]",
                    "shared": roof.shared, "peak_factor": roof.chip_peak.get(chip, 1.0),
                    "bandwidth_factor": roof.chip_bw.get(chip, 1.0),
                    "published": None if facts is None else dict(vars(facts)),
                    "overheads_ms": {p: roof.overheads.get(p, 0.0) for p in sorted(set(protocols))},
                    "protocol_scale": {p: roof.protocol_scale.get(p, 1.0) for p in sorted(set(protocols))}},
                "linear": {
                    "form": "scale * sum_c(a_c*GFLOPs_c + b_c*MB_c + g_c*ops_c) + overhead[protocol]",
                    "scale": linear.scales[chip],
                    "overheads_ms": {p: linear.overheads[p] for p in sorted(set(protocols))},
                    "structure": {"columns": list(predictor.COLUMNS), "theta": linear.theta.tolist(),
                                  "units": "ms per GFLOP / per MB / per op on a chip of scale 1",
                                  "class_ridge": predictor.CLASS_RIDGE, "op_classes": list(OP_CLASSES),
                                  "effective_class_terms": linear.class_coefficients()}},
            },
            "band": bands,
            "measurements": [measurements[i].to_dict() | {"features": totals[i]} for i in mine],
            "validation": report["chips"][chip],
        }
        (out_dir / f"{chip}.json").write_text(json.dumps(profile, indent=1, sort_keys=False) + "\n")
        profiles[chip] = profile
    profiles["_report"] = report | {"fit_id": fit_id, "roofline_shared": roof.shared}
    return profiles


def band(profile: dict, ms: float, regime: str) -> tuple[float, float]:
    b = profile["band"][regime]
    return ms * math.exp(b["log_low"]), ms * math.exp(b["log_high"])
