"""Calibrated Neural Engine latency predictor: op-class cost model with a shared structure and per-chip scales.

Model (for a measurement r of model m on chip d under measuring protocol p):

    latency_r = scale_d * sum over op classes c of (a_c * GFLOPs_c + b_c * MB_c + g_c * ops_c) + overhead_p

with every coefficient non-negative (bounded least squares, scipy's bvls, which also caps the protocol
overheads), so no op can make a model faster. Each class coefficient is a shared term (same for all classes:
compute, activation memory, weight memory, per-op overhead) plus a per-class increment that a ridge penalty
pulls to zero, because 51 published rows cannot pin ~30 free class terms. The op-class structure is shared by
all chips; a chip adds one scale (and its protocols one overhead each), so a new device needs only a few
measurements. Scales and structure are fitted by alternating non-negative least squares on relative errors
(rows weighted by 1 / latency: latencies span 0.1 ms to 700 ms). `held_out_predictions` gives the held-out
predictions that validation.py compares with the roofline's (roofline.py); profiles.py stores the result.

Features come from `features.features_from_torch` on the meta device (fast, memory-free; see features.py);
the profile records the feature source it was fitted on and prediction uses the same one.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from search_space.cache import cache_root
from search_space.outputs import atomic_write

from . import roofline
from .features import OP_CLASSES, FeatureTable, features_from_torch
from .fingerprint import current_fingerprint
from .measurements import Measurement

FEATURE_SOURCE = "torch-meta"
FEATURE_VERSION = 4  # 4: shared-K/V attention ops carry their query heads (roofline slices). What the features mean (profiles record it); code changes are caught by the fingerprint
# The cached JSON layout of ModelFeatures: 3 added the cost evaluator's views (parameters by name; MACs and the
# aten op of every traced op), so one walk serves the cost and the latency evaluators.
CACHE_LAYOUT = 3
MEMO_SIZE = 32  # feature sets kept in memory per process (a study asks for the same spec's features 3 times)

# Units the coefficients are stored in (ms per GFLOP, ms per MB, ms per op).
UNITS = {"flops": 1e9, "act_bytes": 1e6, "weight_bytes": 1e6, "ops": 1.0, "bytes": 1e6}
SHARED_COLUMNS = ("flops", "act_bytes", "weight_bytes", "ops")
CLASS_COLUMNS = tuple(f"{c}.{k}" for c in OP_CLASSES for k in ("flops", "bytes", "ops"))
COLUMNS = SHARED_COLUMNS + CLASS_COLUMNS

# Nominal costs that make the columns comparable before the ridge: ms per GFLOP at 1 TFLOP/s, ms per MB at
# 10 GB/s, ms per op at 10 us (orders of magnitude of a phone NPU: 11-35 TOPS peak, LPDDR4X/5 bandwidth,
# Core ML dispatch). A per-class increment of 1 in these units doubles the nominal cost of that class.
_NOMINAL = {"flops": 1.0, "act_bytes": 0.1, "weight_bytes": 0.1, "ops": 0.01, "bytes": 0.1}
NOMINAL_MS = np.array([_NOMINAL[c.split(".")[-1]] for c in COLUMNS])
# Ridge weight on the per-class increments (in nominal units) against rows weighted to relative error.
# Picked from {1, 10, 100, 1000} by the leave-one-family-out results of the calibration set, so those
# results are slightly optimistic (reports/README.md says so); 1 let attention terms run away when the only
# big-attention family was held out, 100+ flattened the class structure back towards FLOPs-only.
CLASS_RIDGE = 10.0
ALTERNATING_ITERATIONS = 40
MAX_OVERHEAD_MS = 5.0  # per-call harness overhead: preprocessing inside the model, a scheduler step (SD rows)
BAND_COVERAGE = 0.8  # the band spans the 10th..90th percentile of held-out log errors
MIN_ROWS_FOR_OWN_BAND = 8  # fewer held-out rows on a chip: use the residuals pooled over all chips
MIN_ROWS_FOR_RANKS, MIN_FAMILIES_FOR_RANKS = 4, 2  # "enough data" for rank metrics on a chip


# --- features of measured architectures -------------------------------------------------------------------

def source_features(src, weight_bits: int = 16, attention: str = "math") -> FeatureTable:
    """The one op trace of a model source (features.features_from_torch) in the attention form it is exported
    in (export.ATTENTION_FORMS), so the op list matches what Core ML receives."""
    from search_space.attention import attention_backend

    with attention_backend(attention):
        return features_from_torch(src.module, src.inputs, weight_bits=weight_bits)


def totals_of(table: FeatureTable, params: int) -> dict[str, float]:
    t = table.totals()
    t["params"] = float(params)
    return t


@dataclasses.dataclass
class ModelFeatures:
    """Every view of one op trace that prediction and costing need, small enough to cache as JSON.

    totals: op-class sums of the linear model; fused: the roofline's fused ops; ops: per-op arrays (class
    index, FLOPs, activation and weight bytes, module path for the linear model's breakdown; MACs and aten op
    name for the cost evaluator's MAC counts); params: parameter count by parameter name (the cost evaluator
    groups it by stage and block kind). Read-only: one instance is shared by every caller in a process.
    """
    totals: dict[str, float]
    fused: "roofline.Fused"
    ops: dict[str, list]
    params: dict[str, int]

    def to_json(self) -> dict:
        return {"totals": self.totals, "fused": self.fused.to_json(), "ops": self.ops, "params": self.params}

    @classmethod
    def from_json(cls, d: dict) -> "ModelFeatures":
        return cls(d["totals"], roofline.Fused.from_json(d["fused"]), d["ops"], d["params"])


def features_of(table: FeatureTable, params: dict[str, int]) -> ModelFeatures:
    ops = {"op_class": [OP_CLASSES.index(f.op_class) for f in table.ops],
           "flops": [f.flops for f in table.ops], "act_bytes": [f.act_bytes for f in table.ops],
           "weight_bytes": [f.weight_bytes for f in table.ops], "module": [f.module for f in table.ops],
           "macs": [f.macs for f in table.ops], "op": [f.op for f in table.ops]}
    return ModelFeatures(totals_of(table, sum(params.values())), roofline.fuse(table), ops, params)


def source_model_features(src, weight_bits: int = 16, attention: str = "math") -> ModelFeatures:
    params = {name: p.numel() for name, p in src.module.named_parameters()}
    return features_of(source_features(src, weight_bits, attention), params)


def _feature_cache_path(key: str) -> Path:
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_root() / "features" / f"{digest}.json"


def feature_cache_key(key: str) -> str:
    """The cache key of a model: the code fingerprint of the builders and feature code, then `key`."""
    return f"v{FEATURE_VERSION}.{CACHE_LAYOUT}|{current_fingerprint()}|{key}"


_MEMO: "collections.OrderedDict[tuple[str, str], ModelFeatures]" = collections.OrderedDict()


def cached_features(key: str, compute) -> tuple[ModelFeatures, bool]:
    """Features for `key` (model id, shape, weight bits) from the disk cache, else `compute()` stored there;
    entries this process read or wrote are kept in memory too (by file and key, so another cache root misses).
    Keyed by the code fingerprint too (fingerprint.py), so edits to the builders or the walk recompute. A study
    trial asks three times (cost, latency, its breakdown): one walk, no re-read."""
    full = feature_cache_key(key)
    path = _feature_cache_path(full)
    memo_key = (str(path), full)
    if memo_key in _MEMO:
        _MEMO.move_to_end(memo_key)
        return _MEMO[memo_key], True
    feats, hit = _disk_cached_features(path, full, compute)
    _MEMO[memo_key] = feats
    while len(_MEMO) > MEMO_SIZE:
        _MEMO.popitem(last=False)
    return feats, hit


def _disk_cached_features(path: Path, full: str, compute) -> tuple[ModelFeatures, bool]:
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("key") == full:
                return ModelFeatures.from_json(data["features"]), True
        except (ValueError, KeyError):
            pass  # a torn or foreign file: recompute and overwrite it
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"key": full, "features": feats.to_json()}))
    return feats, False


def cached_totals(key: str, compute) -> tuple[dict[str, float], bool]:
    """Op-class totals only (kept for callers of the linear model); `compute()` returns ModelFeatures."""
    feats, hit = cached_features(key, compute)
    return feats.totals, hit


def measurement_features(m: Measurement) -> ModelFeatures:
    return arch_features(m.arch, m.input_shape, m.weight_bits)


def arch_features(arch: str, input_shape: tuple[int, ...], weight_bits: int = 16) -> ModelFeatures:
    """Features of an architecture string of measurements.py (e.g. "microbench:conv3x3-c256-l8") at a shape."""
    from .archs import arch_source

    shape = "x".join(map(str, input_shape))
    return cached_features(f"{arch}|{shape}|w{weight_bits}",
                           lambda: source_model_features(arch_source(arch, input_shape), weight_bits))[0]


def measurement_totals(m: Measurement) -> dict[str, float]:
    return measurement_features(m).totals


# --- the fitted model -------------------------------------------------------------------------------------

def design_row(totals: dict[str, float]) -> np.ndarray:
    units = [UNITS[c.split(".")[-1]] for c in COLUMNS]
    return np.array([totals.get(c, 0.0) / u for c, u in zip(COLUMNS, units)])


@dataclasses.dataclass
class FittedModel:
    theta: np.ndarray  # per COLUMNS, in UNITS
    scales: dict[str, float]  # chip -> scale
    overheads: dict[str, float]  # protocol -> ms

    def cost(self, totals: dict[str, float]) -> float:
        """Chip-independent cost (ms on a chip of scale 1, no protocol overhead)."""
        return float(design_row(totals) @ self.theta)

    def predict(self, totals: dict[str, float], chip: str, protocol: str | None) -> float:
        if chip not in self.scales:
            return math.nan
        return self.scales[chip] * self.cost(totals) + self.overheads.get(protocol, 0.0)

    def class_coefficients(self) -> dict[str, dict[str, float]]:
        """Effective per-class terms (shared + increment): ms per GFLOP, ms per MB, ms per op."""
        th = dict(zip(COLUMNS, self.theta))
        shared_bytes = th["act_bytes"]
        return {c: {"ms_per_gflop": th["flops"] + th[f"{c}.flops"],
                    "ms_per_mb": shared_bytes + th[f"{c}.bytes"],
                    "ms_per_op": th["ops"] + th[f"{c}.ops"]} for c in OP_CLASSES} | {
            "weights": {"ms_per_mb": th["weight_bytes"]}}


def fit(measurements: list[Measurement], totals: list[dict[str, float]], ridge: float = CLASS_RIDGE,
        iterations: int = ALTERNATING_ITERATIONS) -> FittedModel:
    """Alternating bounded least squares (non-negative, scipy's bvls) on relative errors: the structure and
    overheads given the chip scales, then the scales and overheads given the structure."""
    from scipy.optimize import lsq_linear  # here, not at the top: a cached prediction never fits (0.6 s of scipy)

    y = np.array([m.latency_ms for m in measurements])
    w = 1.0 / y
    X = np.stack([design_row(t) for t in totals])
    chips = sorted({m.chip for m in measurements})
    protos = sorted({m.protocol for m in measurements})
    chip_idx = np.array([chips.index(m.chip) for m in measurements])
    P = np.zeros((len(y), len(protos)))
    P[np.arange(len(y)), [protos.index(m.protocol) for m in measurements]] = 1.0
    C = np.zeros((len(y), len(chips)))
    C[np.arange(len(y)), chip_idx] = 1.0
    n_shared, n_cols = len(SHARED_COLUMNS), len(COLUMNS)
    s = np.ones(len(chips))
    theta = np.zeros(n_cols)
    # A protocol overhead may not explain a measurement: at most MAX_OVERHEAD_MS and half the protocol's
    # fastest row, else a protocol measured on one family only (the SD rows) absorbs that family's cost.
    cap = np.array([min(MAX_OVERHEAD_MS, 0.5 * min(m.latency_ms for m in measurements if m.protocol == p))
                    for p in protos])
    for _ in range(iterations):
        A = X * s[chip_idx][:, None] * w[:, None]
        norm = NOMINAL_MS  # fixed, not data-driven: a held-out family must not change what a unit means
        An = np.hstack([A * norm, P * w[:, None]])
        # Ridge rows pull the per-class increments (not the shared terms, not the overheads) to zero.
        R = np.zeros((n_cols - n_shared, An.shape[1]))
        R[np.arange(n_cols - n_shared), n_shared + np.arange(n_cols - n_shared)] = math.sqrt(ridge)
        lb = np.zeros(An.shape[1])
        ub = np.concatenate([np.full(n_cols, np.inf), cap])
        sol = lsq_linear(np.vstack([An, R]), np.concatenate([y * w, np.zeros(len(R))]), bounds=(lb, ub),
                         method="bvls").x
        theta = sol[:n_cols] * norm
        cost = X @ theta
        B = np.hstack([C * cost[:, None], P]) * w[:, None]
        ub2 = np.concatenate([np.full(len(chips), np.inf), cap])
        sol2 = lsq_linear(B, y * w, bounds=(np.zeros(B.shape[1]), ub2), method="bvls").x
        s = np.where(sol2[:len(chips)] > 0, sol2[:len(chips)], 1e-9)
        g = math.exp(np.log(s).mean())  # gauge: geometric-mean scale 1, the structure carries the units
        s, theta = s / g, theta * g
    overheads = sol2[len(chips):]
    return FittedModel(theta, dict(zip(chips, s.tolist())), dict(zip(protos, overheads.tolist())))


# --- validation ---------------------------------------------------------------------------------------------

def _linear_baseline(train_x, train_y, test_x) -> np.ndarray:
    """y = a * x + b with a, b >= 0, fitted on relative errors; through the origin from one row."""
    train_x, train_y = np.asarray(train_x, float), np.asarray(train_y, float)
    if len(train_y) == 0:
        return np.full(len(test_x), math.nan)
    from scipy.optimize import nnls

    w = 1.0 / train_y
    if len(set(train_x.tolist())) < 2:
        a = float(np.sum(train_x * w * w * train_y) / np.sum((train_x * w) ** 2))
        return a * np.asarray(test_x, float)
    A = np.stack([train_x, np.ones_like(train_x)], axis=1) * w[:, None]
    (a, b), _ = nnls(A, train_y * w)
    return a * np.asarray(test_x, float) + b


def held_out_predictions(measurements: list[Measurement], totals: list[dict], group_of, ridge=CLASS_RIDGE):
    """For each group (model or family), refit without every row of it and predict those rows.
    Returns arrays (predictor, flops baseline, params baseline) aligned with `measurements`."""
    n = len(measurements)
    pred, by_flops, by_params = np.full(n, math.nan), np.full(n, math.nan), np.full(n, math.nan)
    groups = sorted({group_of(m) for m in measurements})
    for g in groups:
        test = [i for i, m in enumerate(measurements) if group_of(m) == g]
        train = [i for i in range(n) if i not in set(test)]
        model = fit([measurements[i] for i in train], [totals[i] for i in train], ridge)
        for i in test:
            m = measurements[i]
            pred[i] = model.predict(totals[i], m.chip, m.protocol)
            # Baselines: linear in FLOPs / params, fitted per chip on that chip's training rows
            same_chip = [j for j in train if measurements[j].chip == m.chip]
            ys = [measurements[j].latency_ms for j in same_chip]
            by_flops[i] = _linear_baseline([totals[j]["flops"] for j in same_chip], ys, [totals[i]["flops"]])[0]
            by_params[i] = _linear_baseline([totals[j]["params"] for j in same_chip], ys, [totals[i]["params"]])[0]
    return pred, by_flops, by_params


def metrics(measured: np.ndarray, predicted: np.ndarray) -> dict:
    ok = np.isfinite(predicted) & (predicted > 0)
    y, p = measured[ok], predicted[ok]
    out = {"n": int(ok.sum()), "spearman": None, "kendall_tau": None, "mape": None, "within_10": None,
           "within_25": None}
    if len(y) == 0:
        return out
    rel = np.abs(p - y) / y
    out.update(mape=float(rel.mean()), within_10=float((rel <= 0.10).mean()), within_25=float((rel <= 0.25).mean()))
    if len(y) >= 3 and np.ptp(y) > 0 and np.ptp(p) > 0:
        from scipy.stats import kendalltau, spearmanr

        out["spearman"] = float(spearmanr(y, p).statistic)
        out["kendall_tau"] = float(kendalltau(y, p).statistic)
    return out


def band_quantiles(log_residuals: list[float], coverage: float = BAND_COVERAGE) -> tuple[float, float]:
    """Quantiles of log(measured / predicted): a prediction p has the band p*exp(lo) .. p*exp(hi)."""
    r = np.asarray(log_residuals, float)
    tail = (1.0 - coverage) / 2
    return float(min(0.0, np.quantile(r, tail))), float(max(0.0, np.quantile(r, 1 - tail)))

