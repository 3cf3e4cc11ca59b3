"""Device profiles: versioned JSON files in profiles/, one per chip, and the names phones go by.

A profile holds the shared op-class structure, its chip's scale and protocol overheads, the uncertainty band,
the measurements of that chip it was fitted on (with sources and feature totals, so refits need no feature
extraction) and its validation report. All profiles of one fit share `fit_id`; refitting (`build_profiles`,
`pocketdiff latency fit`) pools every profile's measurements plus any imported ones, because the structure
is shared across chips.
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

from . import predictor
from .features import OP_CLASSES
from .measurements import Measurement

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILE_FORMAT = "pocketdiff-latency-profile"
PROFILE_VERSION = 1  # bump when the JSON layout or the model form changes

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
        raise UnknownDevice(f"device {name!r} is chip {chip}, which has no profile yet (no calibration data); "
                            f"measure it (`pocketdiff latency measure` on a Mac, or import Xcode results with "
                            f"`pocketdiff latency import`) and run `pocketdiff latency fit`. Profiles: {listing}")
    raise UnknownDevice(f"unknown device {name!r}; devices with a profile: {listing} (aliases: {aliases})")


def load_profile(chip: str, profile_dir: Path | None = None) -> dict:
    path = Path(profile_dir or PROFILE_DIR) / f"{chip}.json"
    data = json.loads(path.read_text())
    if data.get("format") != PROFILE_FORMAT or data.get("version") != PROFILE_VERSION:
        raise SpecError(f"{path} is not a version-{PROFILE_VERSION} {PROFILE_FORMAT} file; refit with "
                        f"`pocketdiff latency fit`")
    return data


def model_from_profile(profile: dict) -> predictor.FittedModel:
    structure = profile["model"]["structure"]
    if structure["columns"] != list(predictor.COLUMNS):
        raise SpecError(f"profile {profile['chip']} was fitted on other feature columns; refit it")
    return predictor.FittedModel(np.array(structure["theta"]), {profile["chip"]: profile["model"]["scale"]},
                                 profile["model"]["overheads_ms"])


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
    h.update(f"{predictor.FEATURE_VERSION}|{predictor.CLASS_RIDGE}|{PROFILE_VERSION}".encode())
    return h.hexdigest()[:12]


def build_profiles(measurements: list[Measurement], totals: list[dict] | None = None,
                   out_dir: Path | None = None, progress=None) -> dict[str, dict]:
    """Fit the shared model on all measurements, validate it, and write one profile per chip."""
    if totals is None:
        totals = []
        for m in measurements:
            totals.append(predictor.measurement_totals(m))
            if progress:
                progress(m)
    model = predictor.fit(measurements, totals)
    report = predictor.validate(measurements, totals)
    residuals = report.pop("residuals")
    pooled = list(residuals.values())
    fit_id = _fit_id(measurements)
    out_dir = Path(out_dir or PROFILE_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    profiles = {}
    for chip in sorted(model.scales):
        mine = [i for i, m in enumerate(measurements) if m.chip == chip]
        own = [v for k, v in residuals.items() if k.startswith(chip + "|")]
        use_own = len(own) >= predictor.MIN_ROWS_FOR_OWN_BAND
        lo, hi = predictor.band_quantiles(own if use_own else pooled)
        protocols = [measurements[i].protocol for i in mine]
        default_protocol = max(sorted(set(protocols)), key=protocols.count)
        costs = [model.scales[chip] * model.cost(totals[i]) for i in mine]
        profile = {
            "format": PROFILE_FORMAT, "version": PROFILE_VERSION, "chip": chip, "fit_id": fit_id,
            "fitted_on": datetime.date.today().isoformat(),
            "aliases": sorted(a for a, c in ALIASES.items() if c == chip),
            "devices": sorted({measurements[i].device for i in mine}),
            "feature_source": predictor.FEATURE_SOURCE, "feature_version": predictor.FEATURE_VERSION,
            "model": {
                "form": "scale * sum_c(a_c*GFLOPs_c + b_c*MB_c + g_c*ops_c) + overhead[protocol]",
                "scale": model.scales[chip],
                "overheads_ms": {p: model.overheads[p] for p in sorted(set(protocols))},
                "default_protocol": default_protocol,
                "structure": {"columns": list(predictor.COLUMNS), "theta": model.theta.tolist(),
                              "units": "ms per GFLOP / per MB / per op on a chip of scale 1",
                              "class_ridge": predictor.CLASS_RIDGE, "op_classes": list(OP_CLASSES),
                              "effective_class_terms": model.class_coefficients()},
                "measured_cost_range_ms": [min(costs), max(costs)],
            },
            "band": {"coverage": predictor.BAND_COVERAGE, "log_low": lo, "log_high": hi,
                     "from": (f"leave-one-family-out residuals of {chip} ({len(own)} rows)" if use_own else
                              f"leave-one-family-out residuals pooled over all chips ({len(pooled)} rows; "
                              f"{chip} has {len(own)})")},
            "measurements": [measurements[i].to_dict() | {"features": totals[i]} for i in mine],
            "validation": report["chips"][chip],
        }
        (out_dir / f"{chip}.json").write_text(json.dumps(profile, indent=1, sort_keys=False) + "\n")
        profiles[chip] = profile
    profiles["_report"] = report | {"fit_id": fit_id}
    return profiles


def band(profile: dict, ms: float) -> tuple[float, float]:
    b = profile["band"]
    return ms * math.exp(b["log_low"]), ms * math.exp(b["log_high"])
