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
        profile = load_profile(chip, profile_dir)
        ms += profile_measurements(profile)
        totals += [row["features"] for row in profile["measurements"]]
    return ms, totals


def profile_measurements(profile: dict) -> list[Measurement]:
    """The measurements a profile was fitted on, as Measurement rows (without their stored feature totals)."""
    out = []
    for row in profile["measurements"]:
        d = {k: v for k, v in row.items() if k != "features"}
        d["input_shape"] = tuple(int(s) for s in d["input_shape"].split("x"))
        out.append(Measurement(**d))
    return out


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
    calibrated = roofline.calibrated_range(measurements, fused, roof)
    fit_id = _fit_id(measurements, fitted[0])
    out_dir = Path(out_dir or PROFILE_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    profiles = {}
    regime = [validation.regime_of(t) for t in totals]
    family_of = {validation.residual_key(regime[i], m, i): m.family for i, m in enumerate(measurements)}
    adopted = {chip: report["chips"][chip]["adopted"] for chip in {m.chip for m in measurements}}
    unfitted = _unfitted_protocol_rows(measurements, regime)
    level, level_why = _band_level(residuals, family_of, adopted, unfitted)
    for chip in sorted({m.chip for m in measurements}):
        mine = [i for i, m in enumerate(measurements) if m.chip == chip]
        chosen = report["chips"][chip]["adopted"]
        bands = {"coverage": predictor.BAND_COVERAGE, "quantile_level": level,
                 "quantile_level_why": level_why}
        for reg in validation.REGIMES:
            method = "roofline" if chosen[reg] == "roofline" else "predictor"
            lo, hi, own, pooled = _band(residuals[method], reg, chip, level=level)
            bands[reg] = {"log_low": lo, "log_high": hi, "model": chosen[reg],
                          "from": (f"leave-one-family-out {reg}-model residuals of {chip} ({own} rows)"
                                   if own >= predictor.MIN_ROWS_FOR_OWN_BAND else f"leave-one-family-out "
                                   f"{reg}-model residuals pooled over all chips ({pooled} rows; {chip} has {own})")}
        bands["leave_one_family_out_coverage"] = _coverage(residuals, family_of, chosen, chip, level, unfitted)
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
            "attention_form": MEASURED_ATTENTION,
            "model": {
                "adopted": chosen, "adopted_because": report["chips"][chip]["adopted_because"],
                "regime_gmacs": validation.LARGE_GMACS, "default_protocol": default_protocol,
                "measured_cost_range_ms": [min(costs), max(costs)],
                "roofline": {
                    "form": "sum over fused ops of smoothmax(compute, memory) + dispatch, + overhead[protocol]",
                    "shared": roof.shared, "peak_factor": roof.chip_peak.get(chip, 1.0),
                    "bandwidth_factor": roof.chip_bw.get(chip, 1.0),
                    "sram_factor": roof.chip_sram.get(chip, 1.0), "calibrated_range": calibrated,
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


def _band(residuals: dict, reg: str, chip: str, family_of: dict | None = None, skip: str | None = None,
          level: float = predictor.BAND_COVERAGE):
    """(log low, log high, own rows, pooled rows) of a regime's band on `chip` from leave-one-family-out
    residuals: the chip's own when it has MIN_ROWS_FOR_OWN_BAND of them, else pooled over all chips; rows of
    family `skip` left out."""
    keep = {k: v for k, v in residuals.items() if skip is None or family_of.get(k) != skip}
    pooled = [v for k, v in keep.items() if k.startswith(reg + "|")]
    own = [v for k, v in keep.items() if k.startswith(f"{reg}|{chip}|")]
    if not pooled:
        return None, None, 0, 0
    lo, hi = predictor.band_quantiles(own if len(own) >= predictor.MIN_ROWS_FOR_OWN_BAND else pooled, level)
    return lo, hi, len(own), len(pooled)


# A prediction under a measuring protocol that has no rows in the fit uses that protocol's prior scale (1, with
# a log-normal prior of PROTOCOL_SCALE_SIGMA: roofline.py), so its band carries that prior too: both edges move
# out by the prior's central-80% half-width, exp(1.2816 * 0.35) = x1.57. The residuals a band is built from
# come from rows whose protocol the refit had seen, so they hold no such term.
PROTOCOL_BAND_Z = 1.2816  # the standard normal's 90th percentile: a central 80% interval


def protocol_band_widening() -> float:
    """Log-units added to each edge of a band for a prediction under a protocol the fit has no rows of."""
    return PROTOCOL_BAND_Z * roofline.PROTOCOL_SCALE_SIGMA


def _unfitted_protocol_rows(measurements: list[Measurement], regime: list[str]) -> set[str]:
    """Residual keys of the rows whose protocol has no row outside their own family: held out with their family,
    they are predicted under a protocol the refit never saw (the conv microbenchmarks' MPSGraph and private ANE
    client runs, the EdgeTAM README, the Depth Anything model card, ...)."""
    out = set()
    for i, m in enumerate(measurements):
        if not any(o.protocol == m.protocol and o.family != m.family for o in measurements):
            out.add(validation.residual_key(regime[i], m, i))
    return out


def _coverage(residuals: dict, family_of: dict, chosen: dict, chip: str,
              level: float = predictor.BAND_COVERAGE, unfitted: set[str] = frozenset()) -> dict:
    """Does the band catch a family it was not built from? For each of the chip's rows: the band rebuilt
    without every row of its family (the same rule as the profile's band) against the row's held-out error;
    a row in `unfitted` (its protocol left the refit with its family) gets the band of a prediction under an
    unfitted protocol (protocol_band_widening). `without_protocol_rule` counts the same rows without that."""
    covered = n = plain = 0
    widen = protocol_band_widening()
    for key, family in sorted(family_of.items()):
        reg, row_chip = key.split("|")[:2]
        method = "roofline" if chosen[reg] == "roofline" else "predictor"
        if row_chip != chip or key not in residuals[method]:
            continue
        lo, hi, _, _ = _band(residuals[method], reg, chip, family_of, skip=family, level=level)
        if lo is None:
            continue
        n += 1
        r = residuals[method][key]
        plain += lo <= r <= hi
        w = widen if key in unfitted else 0.0
        covered += lo - w <= r <= hi + w
    return {"rows": n, "covered": covered, "share": covered / n if n else None, "quantile_level": level,
            "without_protocol_rule": plain,
            "how": "each row against the band rebuilt without its family (leave-one-family-out); a row whose "
                   "protocol has no rows outside its family gets the unfitted-protocol band (x"
                   f"{math.exp(widen):.2f} on each edge)"}


# Quantile levels tried for the band, narrowest first (the 10th..90th percentile of held-out errors first).
BAND_LEVELS = (0.8, 0.85, 0.9, 0.95, 1.0)


def _band_level(residuals: dict, family_of: dict, adopted: dict[str, dict],
                unfitted: set[str] = frozenset()) -> tuple[float, str]:
    """The narrowest quantile level whose band, rebuilt without each row's family, catches BAND_COVERAGE of
    all rows: families share errors, so the 10th..90th percentile of held-out errors catches fewer than 80% of
    a family that was not among them."""
    levels = ", ".join(f"{x:g}" for x in BAND_LEVELS)
    for level in BAND_LEVELS:
        cov = [_coverage(residuals, family_of, adopted[chip], chip, level, unfitted) for chip in sorted(adopted)]
        rows, covered = sum(c["rows"] for c in cov), sum(c["covered"] for c in cov)
        if rows and covered / rows >= predictor.BAND_COVERAGE:
            return level, (f"the narrowest of {levels} whose band, rebuilt without each row's family, catches "
                           f"{predictor.BAND_COVERAGE:.0%} of all rows: {covered}/{rows} at {level:g}")
    return level, (f"none of {levels} catches {predictor.BAND_COVERAGE:.0%} of all rows with the band rebuilt "
                   f"without each row's family; the widest, {level:g}, catches {covered}/{rows}")


# The attention form the profiles' features are walked in. The published rows do not state theirs (apps and
# READMEs time Core ML packages converted by their authors); the walk prices the project's own export.
MEASURED_ATTENTION = "math"


def attention_form(profile: dict) -> str:
    """The attention form a profile was fitted on (profiles before the field: math)."""
    return profile.get("attention_form", MEASURED_ATTENTION)


def band(profile: dict, ms: float, regime: str) -> tuple[float, float]:
    b = profile["band"][regime]
    return ms * math.exp(b["log_low"]), ms * math.exp(b["log_high"])
