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
from pathlib import Path

import numpy as np

from search_space import SpecError

from . import predictor, roofline, validation
from .chips import CHIPS
from .devices import (ALIASES, KNOWN_CHIPS, MEASUREMENT_PLAN, PROFILE_DIR, UnknownDevice,  # noqa: F401 (API)
                      available_chips, normalize, resolve_device, what_to_measure)
from .features import OP_CLASSES
from .measurements import Measurement

PROFILE_FORMAT = "pocketdiff-latency-profile"
PROFILE_VERSION = 3  # bump when the JSON layout or the model form changes (3: on-chip memory factor, ratio rows)

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
                                  r["overheads_ms"], r["protocol_scale"], {chip: r["sram_factor"]})


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


def _fit_id(measurements: list[Measurement], ratios=()) -> str:
    h = hashlib.sha1(json.dumps([m.to_dict() for m in measurements] + [r.to_dict() for r in ratios],
                                sort_keys=True).encode())
    h.update(f"{predictor.FEATURE_VERSION}|{predictor.CLASS_RIDGE}|{PROFILE_VERSION}|roofline".encode())
    return h.hexdigest()[:12]


def build_profiles(measurements: list[Measurement], features: list | None = None,
                   out_dir: Path | None = None, progress=None, ratios=(), ratio_features=None,
                   fit_ratios: bool = False) -> dict[str, dict]:
    """Fit both models on all in-fit measurements, compare them held out, write one profile per chip.

    `ratios` (ratios.RatioMeasurement) are checked against the fitted roofline; with `fit_ratios` the roofline
    is also fitted on them (and each is then checked by a refit without it). They are not fitted by default:
    on the published rows, fitting them costs held-out accuracy on every other family (docs/latency.md).
    """
    measurements = [m for m in measurements if m.in_fit]
    ratios = list(ratios)
    if features is None:
        features = []
        for m in measurements:
            features.append(predictor.measurement_features(m))
            if progress:
                progress(m)
    if ratios and ratio_features is None:
        raise ValueError("build_profiles: pass ratio_features (api.ratio_features of each ratio row) with ratios")
    ratio_features = list(ratio_features or [])
    totals = [f.totals for f in features]
    fused = [f.fused for f in features]
    rfused = [(a.fused, b.fused) for a, b in ratio_features]
    linear = predictor.fit(measurements, totals)
    fitted = (ratios, rfused) if fit_ratios else ((), ())
    roof = roofline.fit_roofline(measurements, fused, ratios=fitted[0], ratio_fused=fitted[1])
    report = validation.compare(measurements, features, *fitted[:1], ratio_features if fit_ratios else ())
    held = (roofline.held_out_ratios(measurements, fused, ratios, rfused) if fit_ratios else
            np.array([roofline.predicted_ratio(roof, a, b, r.chip) for r, (a, b) in zip(ratios, rfused)]))
    report["ratios"] = validation.ratio_report(ratios, ratio_features, roof, held) | {"in_fit": fit_ratios}
    residuals = report.pop("residuals")
    fit_id = _fit_id(measurements, fitted[0])
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
                    "sram_factor": roof.chip_sram.get(chip, 1.0),
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
            "ratio_band": report["ratios"]["band"], "ratios_in_fit": fit_ratios,
            "measurements": [measurements[i].to_dict() | {"features": totals[i]} for i in mine],
            "ratios": [x for x in report["ratios"]["rows"] if x["chip"] == chip],
            "validation": report["chips"][chip],
        }
        (out_dir / f"{chip}.json").write_text(json.dumps(profile, indent=1, sort_keys=False) + "\n")
        profiles[chip] = profile
    profiles["_report"] = report | {"fit_id": fit_id, "roofline_shared": roof.shared}
    return profiles


def band(profile: dict, ms: float, regime: str) -> tuple[float, float]:
    b = profile["band"][regime]
    return ms * math.exp(b["log_low"]), ms * math.exp(b["log_high"])
