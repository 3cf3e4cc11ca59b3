"""Roofline cost model of the Neural Engine: per-op compute, memory traffic and dispatch, with few fitted terms.

Why a second model: the op-class linear model (predictor.py) is fitted where dispatch and small tensors
dominate (224 px classifiers of 0.1-10 ms) and cannot extrapolate to 128x128-latent UNets, whose dense 3x3
convs run near the engine's peak and whose activations (8-29 MB in fp16) outgrow on-chip memory.

Ops first go through `fuse`, as the Neural Engine compiler does: normalization, activation and add ops join
the op before them (the conv / matmul whose output they read); pure views cost nothing; data-moving layout
ops (transpose, concat, pad, upsample) and unfused vector ops (softmax, reductions) are ops of their own.
Each fused op i then costs, on chip c:

    t_i = softmax_p(compute_i, memory_i) + dispatch
    compute_i = 2 * MACs_i / (peak_c * eff_kind * rows_i / (rows_i + rows_half) * k_i / (k_i + k_half))
                (vector ops: elements_i / (peak_c * eff_vector); layout ops: 0)
    memory_i  = (weight_bytes_i + spill_i * act_bytes_i) / bw_c + (1 - spill_i) * act_bytes_i / (l2x * bw_c)
    spill_i   = max(0, 1 - sram_c / working_set_i)

The working set is the op's activation bytes in and out per slice, and `rows` the output positions (pixels or
tokens; the published sp64 -> sp2048 doubling of ANE throughput) per slice: the engine runs the batch of a
conv, and each (batch, head) of an attention matmul or softmax, one slice after another (batch is not tiled,
eiln/ane; SPLIT_EINSUM runs attention per head), so a slice that fits on-chip memory does not spill even when
the whole tensor would. Shared-K/V attention (MQA, GQA) in the math form folds the G query heads of a K/V head
into one (B, Hkv, G*N, M) product: its slices are still the B*H heads (features.OpFeature.head_group), so MQA
moves the same scores per slice as MHSA and reads each K/V head once for all G of them. `k` is the reduction
length (Cin*kh*kw/groups: a depthwise 3x3 reduces over 9). softmax_p is a smooth maximum (p = 4). Priors:
peak_c, bw_c and sram_c are the published figures of chips.py, scaled by a fitted per-chip factor each (log-normal priors); the efficiencies, half-saturation sizes, the L2/DRAM ratio
and the dispatch cost are shared by all chips; every measuring protocol scales the sum (log-normal prior
around 1) and adds an overhead, capped as in predictor.py. Fitted on log errors by scipy's bounded least
squares. `held_out_roofline` holds out each model or family in turn (validation.py compares it with the
linear model).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .chips import CHIPS
from .features import FeatureTable

KINDS = ("conv", "dwconv", "linear", "attn", "vector", "layout")
MAC_KINDS = ("conv", "dwconv", "linear", "attn")
_CLASS_TO_KIND = {"conv": "conv", "dwconv": "dwconv", "linear": "linear", "attn_matmul": "attn"}
# Views: no data moves (Core ML reshapes are free on the engine; clones and casts come from torch's
# decompositions and have no Core ML counterpart).
_ALIAS_OPS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "unsqueeze", "squeeze", "expand", "expand_as",
              "alias", "detach", "select", "slice", "narrow", "split", "split_with_sizes", "chunk", "unbind",
              "flatten", "unflatten", "as_strided", "lift_fresh", "lift_fresh_copy", "_to_copy", "clone",
              "contiguous", "copy_", "new_empty", "empty_like", "t"}
_FUSIBLE_CLASSES = {"norm", "elementwise"}  # join the op before them (the Neural Engine compiler's rule)
SMOOTH_MAX_P = 4.0
MAX_OVERHEAD_MS = 5.0


@dataclasses.dataclass
class Fused:
    """Fused ops of one model as arrays (one entry per fused op)."""
    kind: np.ndarray  # index into KINDS
    macs: np.ndarray
    rows: np.ndarray
    k: np.ndarray
    act_bytes: np.ndarray
    weight_bytes: np.ndarray
    elements: np.ndarray  # vector ops: elements processed
    slices: np.ndarray  # independent slices the engine runs one after another (batch, and heads of attention)
    module: list[str]
    members: np.ndarray  # ops of the trace fused into this one

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict) -> "Fused":
        kw = {}
        for f in dataclasses.fields(cls):
            v = d[f.name]
            kw[f.name] = v if f.name == "module" else np.asarray(v, dtype=int if f.name in ("kind", "members")
                                                                   else float)
        return cls(**kw)

    def __len__(self) -> int:
        return len(self.kind)


def fuse(table: FeatureTable) -> Fused:
    """Group the trace's ops into what the engine dispatches (see the module docstring)."""
    root: dict[int, int] = {}  # tensor number -> the tensor it is a view of
    open_out: dict[int, int] = {}  # current output tensor of a group -> group index
    inner: dict[int, int] = {}  # superseded output of a group (fused past it) -> group index
    stored: set[tuple[int, int]] = set()
    groups: list[dict] = []

    def r(t: int) -> int:
        while t in root:
            t = root[t]
        return t

    def read_intermediates(ins, in_bytes, g_now):
        # A tensor that a group fused past is still read here: that group must also write it out.
        for t, b in zip(ins, in_bytes):
            g = inner.get(t)
            if g is not None and g != g_now and (g, t) not in stored:
                stored.add((g, t))
                groups[g]["written"] += b

    def new_group(kind, f, ins):
        groups.append({"kind": KINDS.index(kind), "macs": f.macs, "rows": 0.0, "k": 0.0, "read": float(sum(f.in_bytes)),
                       "out": _out_bytes(f), "written": 0.0, "w": f.weight_bytes, "el": 0.0, "module": f.module,
                       "members": 1, "slices": _slices(kind, f.out_shape) * f.head_group})
        g = len(groups) - 1
        read_intermediates(ins, f.in_bytes, g)
        open_out[f.out_id] = g
        return g

    for f in table.ops:
        ins = [r(t) for t in f.in_ids]
        if f.op_class == "layout" and f.op in _ALIAS_OPS:
            if ins:
                root[f.out_id] = ins[0]
            continue
        if f.op_class in _CLASS_TO_KIND:
            g = new_group(_CLASS_TO_KIND[f.op_class], f, ins)
            out = f.out_shape
            channels = out[1] if f.op_class in ("conv", "dwconv") and len(out) > 1 else (out[-1] if out else 1)
            n_out = float(np.prod(out)) if out else 1.0
            groups[g]["rows"] = n_out / max(1, channels)
            groups[g]["k"] = f.macs / max(1.0, n_out)
            continue
        if f.op_class in _FUSIBLE_CLASSES:
            cands = [(b, open_out[t]) for t, b in zip(ins, f.in_bytes)
                     if t in open_out and groups[open_out[t]]["kind"] != KINDS.index("layout")]
            if cands:
                g = max(cands)[1]
                grp = groups[g]
                own = {t for t in ins if open_out.get(t) == g}
                others = [(t, b) for t, b in zip(ins, f.in_bytes) if t not in own]
                grp["read"] += sum(b for _, b in others)  # a second operand (residual, time embedding)
                read_intermediates([t for t, _ in others], [b for _, b in others], g)
                for t in own:  # the group now ends in this op's output; its previous output stays inside
                    open_out.pop(t, None)
                    inner[t] = g
                grp["out"] = _out_bytes(f)
                grp["members"] += 1
                open_out[f.out_id] = g
                continue
        kind = "layout" if f.op_class == "layout" else "vector"
        g = new_group(kind, f, ins)
        if kind == "vector":
            groups[g]["el"] = max(_out_bytes(f), float(sum(f.in_bytes))) / 2  # fp16 elements
    return Fused(kind=np.array([g["kind"] for g in groups], dtype=int),
                 macs=np.array([g["macs"] for g in groups], float),
                 rows=np.array([g["rows"] for g in groups], float), k=np.array([g["k"] for g in groups], float),
                 act_bytes=np.array([g["read"] + g["out"] + g["written"] for g in groups], float),
                 weight_bytes=np.array([g["w"] for g in groups], float),
                 elements=np.array([g["el"] for g in groups], float),
                 slices=np.array([g["slices"] for g in groups], float), module=[g["module"] for g in groups],
                 members=np.array([g["members"] for g in groups], dtype=int))


def _slices(kind: str, shape: tuple[int, ...]) -> float:
    """Independent slices of an op's output: the batch of a conv (batch is not tiled: eiln/ane), every
    (batch, head) of a batched matmul or of a softmax over its scores (SPLIT_EINSUM's per-head form); other
    ops run as one. Working sets and output rows are per slice."""
    if kind in ("conv", "dwconv") and len(shape) == 4:
        return float(shape[0])
    if kind in ("attn", "vector") and len(shape) >= 4:
        return float(np.prod(shape[:-2]))
    return 1.0


def _out_bytes(f) -> float:
    return max(0.0, f.act_bytes - float(sum(f.in_bytes)))


# --- parameters ---------------------------------------------------------------------------------------------

# Shared parameters: (name, prior value, lower, upper, prior sigma in log units). Efficiencies are fractions
# of the chip's peak; a weak prior keeps a parameter the data do not pin at a physical value.
SHARED = (
    ("eff_conv", 0.8, 0.02, 1.0, 1.0),  # dense convs reach ~peak on M1/M4 microbenchmarks (data/README.md)
    ("eff_dwconv", 0.5, 0.005, 1.0, 2.0),  # no published depthwise microbenchmark: weak prior
    ("eff_linear", 0.8, 0.02, 1.0, 1.0),  # 1x1 convs reach peak (maderix); linears are 1x1 convs on the ANE
    ("eff_attn", 0.5, 0.005, 1.0, 2.0),
    ("eff_vector", 0.02, 1e-4, 1.0, 2.0),  # elements per FLOP of peak for softmax / reductions
    ("rows_half", 64.0, 1.0, 1e5, 2.0),  # sp64 -> sp2048 doubles throughput (maderix community report)
    ("k_half", 16.0, 1.0, 1e4, 2.0),
    ("dispatch_us", 20.0, 0.5, 500.0, 2.0),
    ("l2_ratio", 8.0, 1.0, 100.0, 2.0),  # on-chip vs DRAM bandwidth
    # Reduction length (input channels x kernel area) past which a dense conv's rate rolls off: a long reduction
    # accumulates over several passes of the engine. No published figure, and the only published long-reduction
    # measurements (3x3 convs over 128 channels, k = 1,152, at 0.97-0.98 of peak) show no roll-off: the prior
    # sits where the term does nothing (k_pass 1e8 slows k = 11,520 by 1%) and is wide (a factor e^6 at one
    # sigma), so only data that ask for a roll-off (the design-chain ratio rows, with --fit-ratios) move it.
    ("k_pass", 1e8, 64.0, 1e10, 6.0),
)
SHARED_NAMES = tuple(s[0] for s in SHARED)
CHIP_PEAK_SIGMA = 0.35  # log-units: published ratings are marketing figures, int8 vs fp16 ambiguity
CHIP_BW_SIGMA = 0.7  # the ANE's share of DRAM bandwidth is not published
# On-chip memory is published for two chips only, by reverse engineering (chips.py); every other chip borrows
# its generation's figure, so the fitted factor gets a wide prior (a factor e at one sigma).
CHIP_SRAM_SIGMA = 1.0
K_PASS_EXPONENT = 0.5  # how a dense conv's rate falls with reduction length (op_terms)
K_PASS_START = 16384.0  # the second start of the fit (fit_roofline)
# Measuring protocols differ in runtime (Core ML in Xcode, MPSGraph, the private ANE client, 2020 neuralnetwork
# models, apps whose compute unit is not stated), so each protocol scales the model too, not only adds an
# overhead; a protocol without training rows keeps factor 1.
PROTOCOL_SCALE_SIGMA = 0.35


@dataclasses.dataclass
class RooflineModel:
    shared: dict[str, float]
    chip_peak: dict[str, float]  # factor on the published fp16 peak
    chip_bw: dict[str, float]  # factor on the published DRAM bandwidth
    overheads: dict[str, float]  # protocol -> ms
    protocol_scale: dict[str, float] = dataclasses.field(default_factory=dict)  # protocol -> factor
    chip_sram: dict[str, float] = dataclasses.field(default_factory=dict)  # factor on the published on-chip memory

    def chip_terms(self, chip: str) -> tuple[float, float, float] | None:
        """(peak FLOP/s, DRAM bytes/s, on-chip bytes) of a chip, or None for a chip with no published facts."""
        f = CHIPS.get(chip)
        if f is None:
            return None
        return (f.peak_tflops_fp16 * 1e12 * self.chip_peak.get(chip, 1.0),
                f.dram_gbps * 1e9 * self.chip_bw.get(chip, 1.0), f.sram_mb * 1e6 * self.chip_sram.get(chip, 1.0))

    def op_terms(self, fused: Fused, chip: str) -> dict[str, np.ndarray] | None:
        """Per fused op: compute, memory, dispatch and total milliseconds on `chip`."""
        terms = self.chip_terms(chip)
        if terms is None:
            return None
        return op_terms(fused, terms, self.shared)

    def predict(self, fused: Fused, chip: str, protocol: str | None) -> float:
        t = self.op_terms(fused, chip)
        if t is None:
            return math.nan
        return self.protocol_scale.get(protocol, 1.0) * float(t["ms"].sum()) + self.overheads.get(protocol, 0.0)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "RooflineModel":
        return cls(dict(d["shared"]), dict(d["chip_peak"]), dict(d["chip_bw"]), dict(d["overheads"]),
                   dict(d.get("protocol_scale", {})), dict(d.get("chip_sram", {})))


def op_terms(fused: Fused, chip_terms: tuple[float, float, float], p: dict[str, float]) -> dict[str, np.ndarray]:
    peak, bw, sram = chip_terms
    kind = fused.kind
    eff = np.array([p["eff_conv"], p["eff_dwconv"], p["eff_linear"], p["eff_attn"], 1.0, 1.0])[kind]
    slices = np.maximum(fused.slices, 1.0)
    rows = np.maximum(fused.rows / slices, 1.0)
    k = np.maximum(fused.k, 1.0)
    util = rows / (rows + p["rows_half"]) * k / (k + p["k_half"])
    # A dense conv's rate falls with its reduction length (input channels x kernel area) as 1 + (k/k_pass)^0.5.
    # The exponent won a held-out comparison (leave-one-family-out with the design-chain ratio rows in the fit:
    # 0.5, 1, 2 and flat-then-rising forms; docs/latency.md). Weight re-streaming (weights read again per output
    # tile once over a share of on-chip memory) was tried here too: it priced SD 2.1's large linears at 5x their
    # measured time once the SD rows were held out.
    util = util / np.where(kind == KINDS.index("conv"), 1.0 + (k / p["k_pass"]) ** K_PASS_EXPONENT, 1.0)
    is_mac = kind < len(MAC_KINDS)
    compute = np.where(is_mac, 2.0 * fused.macs / (peak * eff * util), 0.0)
    compute = compute + np.where(kind == KINDS.index("vector"), fused.elements / (peak * p["eff_vector"]), 0.0)
    ws = np.maximum(fused.act_bytes / slices, 1.0)
    spill = np.clip(1.0 - sram / ws, 0.0, 1.0)
    memory = (fused.weight_bytes + spill * fused.act_bytes) / bw + (1.0 - spill) * fused.act_bytes / (
        p["l2_ratio"] * bw)
    q = SMOOTH_MAX_P
    body = (compute ** q + memory ** q) ** (1.0 / q)
    dispatch = np.full(len(kind), p["dispatch_us"] * 1e-6)
    return {"compute_ms": compute * 1e3, "memory_ms": memory * 1e3, "dispatch_ms": dispatch * 1e3,
            "ms": (body + dispatch) * 1e3, "spill": spill}


# --- fitting ------------------------------------------------------------------------------------------------

def _concat(fused: list[Fused]) -> tuple[Fused, np.ndarray]:
    """One Fused holding all of `fused` back to back, and the start index of each."""
    starts = np.cumsum([0] + [len(f) for f in fused[:-1]])
    cat = Fused(*(np.concatenate([getattr(f, n) for f in fused]) if n != "module" else []
                  for n in (fl.name for fl in dataclasses.fields(Fused))))
    return cat, starts


def fit_roofline(measurements, fused: list[Fused], max_nfev: int = 200, ratios=(),
                 ratio_fused: list[tuple[Fused, Fused]] = ()) -> RooflineModel:
    """Fit shared terms, per-chip factors and protocol overheads on log errors with priors as extra residuals.

    `ratios` (ratios.RatioMeasurement: latency(after) / latency(before) on one chip) with `ratio_fused`
    (the fused ops of before and after) are log-space constraints: residual (log predicted ratio - log r) /
    sigma_log. The protocol's scale cancels in a ratio and its overhead is left out (one UNet pass is hundreds of
    milliseconds; an overhead is capped at MAX_OVERHEAD_MS). Chips without training rows keep their published
    figures (factor 1): the model still predicts them.
    """
    from scipy.optimize import least_squares  # here: predicting from a profile needs no scipy (api.py)

    ratios, ratio_fused = list(ratios), list(ratio_fused)
    y = np.array([m.latency_ms for m in measurements], float)
    chips = sorted({m.chip for m in measurements + ratios if m.chip in CHIPS})
    protos = sorted({m.protocol for m in measurements})
    cap = np.array([min(MAX_OVERHEAD_MS, 0.5 * min(m.latency_ms for m in measurements if m.protocol == p))
                    for p in protos])
    # Each distinct (model features, chip) pair is evaluated once per step, all pairs in one array.
    keys: dict[tuple, int] = {}
    pair_fused, pair_chip = [], []

    def pair(f, chip):
        key = (id(f), chip)
        if key not in keys:
            keys[key] = len(keys)
            pair_fused.append(f)
            pair_chip.append(chip)
        return keys[key]

    pair_of = np.array([pair(f, m.chip) for m, f in zip(measurements, fused)], int)
    before_of = np.array([pair(f[0], r.chip) for r, f in zip(ratios, ratio_fused)], int)
    after_of = np.array([pair(f[1], r.chip) for r, f in zip(ratios, ratio_fused)], int)
    ok_rows = np.array([m.chip in CHIPS for m in measurements], bool)
    ok_ratios = np.array([r.chip in CHIPS for r in ratios], bool)
    log_r = np.array([math.log(r.ratio) for r in ratios], float)
    sigma_r = np.array([r.sigma_log for r in ratios], float)
    cat, starts = _concat(pair_fused)
    elem_chip = np.repeat([chips.index(c) if c in chips else 0 for c in pair_chip], [len(f) for f in pair_fused])
    base_peak = np.array([CHIPS[c].peak_tflops_fp16 * 1e12 for c in chips])
    base_bw = np.array([CHIPS[c].dram_gbps * 1e9 for c in chips])
    base_sram = np.array([CHIPS[c].sram_mb * 1e6 for c in chips])
    proto_idx = np.array([protos.index(m.protocol) for m in measurements], int)
    n_s, n_c, n_p = len(SHARED), len(chips), len(protos)
    # x = [shared log-terms | chip log-peak | chip log-bandwidth | chip log-sram | overheads | protocol log-scales]
    lo = np.concatenate([[math.log(s[2]) for s in SHARED], np.full(3 * n_c, -3.0), np.zeros(n_p),
                         np.full(n_p, -3.0)])
    hi = np.concatenate([[math.log(s[3]) for s in SHARED], np.full(3 * n_c, 3.0), cap + 1e-12, np.full(n_p, 3.0)])
    x0 = np.clip(np.concatenate([[math.log(s[1]) for s in SHARED], np.zeros(3 * n_c), cap * 0.1, np.zeros(n_p)]),
                 lo, hi)
    o = n_s + 3 * n_c  # offsets of the protocol overheads, then the protocol log-scales
    prior_mu = np.array([math.log(s[1]) for s in SHARED])
    prior_sd = np.array([s[4] for s in SHARED])
    chip_sd = np.repeat([CHIP_PEAK_SIGMA, CHIP_BW_SIGMA, CHIP_SRAM_SIGMA], n_c)
    # Rows weigh by 1/sqrt(rows of their model and chip): repeated rows of one model do not dominate.
    counts: dict[tuple, int] = {}
    for m in measurements:
        counts[(m.arch, m.chip)] = counts.get((m.arch, m.chip), 0) + 1
    w = np.array([1.0 / math.sqrt(counts[(m.arch, m.chip)]) for m in measurements])

    def residuals(x):
        shared = dict(zip(SHARED_NAMES, np.exp(x[:n_s])))
        peak = (base_peak * np.exp(x[n_s:n_s + n_c]))[elem_chip]
        bw = (base_bw * np.exp(x[n_s + n_c:n_s + 2 * n_c]))[elem_chip]
        sram = (base_sram * np.exp(x[n_s + 2 * n_c:o]))[elem_chip]
        ms = op_terms(cat, (peak, bw, sram), shared)["ms"]
        sums = np.add.reduceat(ms, starts) if len(ms) else np.zeros(len(starts))
        pred = np.exp(x[o + n_p:][proto_idx]) * sums[pair_of] + x[o:o + n_p][proto_idx]
        res = np.where(ok_rows, (np.log(pred) - np.log(y)) * w, 0.0)
        res_r = np.where(ok_ratios, (np.log(sums[after_of]) - np.log(sums[before_of]) - log_r) / sigma_r, 0.0) \
            if len(ratios) else np.zeros(0)
        prior = np.concatenate([(x[:n_s] - prior_mu) / prior_sd, x[n_s:o] / chip_sd,
                                x[o + n_p:] / PROTOCOL_SCALE_SIGMA])
        return np.concatenate([res, res_r, prior])

    # Two starts, the lower objective kept: the prior (no roll-off) and a roll-off at k_pass = K_PASS_START (the
    # basin the design-chain ratio rows pull into; from the prior alone the solver can stop in another one).
    fits = [least_squares(residuals, start, bounds=(lo, hi), method="trf", max_nfev=max_nfev)
            for start in (x0, _with(x0, SHARED_NAMES.index("k_pass"), math.log(K_PASS_START), lo, hi))]
    x = min(fits, key=lambda f: f.cost).x
    return RooflineModel({k: float(v) for k, v in zip(SHARED_NAMES, np.exp(x[:n_s]))},
                         {c: float(v) for c, v in zip(chips, np.exp(x[n_s:n_s + n_c]))},
                         {c: float(v) for c, v in zip(chips, np.exp(x[n_s + n_c:n_s + 2 * n_c]))},
                         dict(zip(protos, map(float, x[o:o + n_p]))),
                         dict(zip(protos, map(float, np.exp(x[o + n_p:])))),
                         {c: float(v) for c, v in zip(chips, np.exp(x[n_s + 2 * n_c:o]))})


def _with(x: np.ndarray, i: int, value: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    y = x.copy()
    y[i] = min(max(value, lo[i]), hi[i])
    return y


def calibrated_range(measurements, fused: list[Fused], model: RooflineModel, top: int = 3) -> dict:
    """Per MAC op kind: the largest weights, reduction length and output rows per slice (tokens, for attention)
    of any op in the fitted rows, the fitted efficiency, and the rows that pin it: those where the kind takes
    the largest share of the predicted time (d log latency / d log efficiency is minus that share, for
    compute-bound ops), one entry per model and chip."""
    out = {}
    for kind in MAC_KINDS:
        k = KINDS.index(kind)
        shares: dict[tuple, float] = {}
        w = kk = rows = 0.0
        for m, f in zip(measurements, fused):
            mine = f.kind == k
            if not mine.any():
                continue
            w = max(w, float(f.weight_bytes[mine].max()))
            kk = max(kk, float(f.k[mine].max()))
            rows = max(rows, float((f.rows[mine] / np.maximum(f.slices[mine], 1.0)).max()))
            t = model.op_terms(f, m.chip)
            if t is not None:
                shares[(m.model, m.chip)] = max(shares.get((m.model, m.chip), 0.0),
                                                float(t["ms"][mine].sum() / max(t["ms"].sum(), 1e-30)))
        pinned = sorted(shares.items(), key=lambda kv: -kv[1])[:top]
        out[kind] = {"efficiency": model.shared[f"eff_{kind}"], "max_weight_bytes": w, "max_k": kk,
                     "max_rows_per_slice": rows,
                     "pinned_by": [{"model": mo, "chip": c, "share": sh} for (mo, c), sh in pinned]}
    return out


def held_out_roofline(measurements, fused: list[Fused], group_of, ratios=(),
                      ratio_fused: list[tuple[Fused, Fused]] = ()) -> np.ndarray:
    """Refit without each group (model or family) and predict its rows (chips then fall back to priors).

    Ratio rows whose group (`group_of(ratio)`: a ratio row's family is sd-unet) is held out leave the fit too.
    """
    pred = np.full(len(measurements), math.nan)
    for g in sorted({group_of(m) for m in measurements}):
        test = [i for i, m in enumerate(measurements) if group_of(m) == g]
        train = [i for i in range(len(measurements)) if i not in set(test)]
        keep = [j for j, r in enumerate(ratios) if group_of(r) != g]
        model = fit_roofline([measurements[i] for i in train], [fused[i] for i in train],
                             ratios=[ratios[j] for j in keep], ratio_fused=[ratio_fused[j] for j in keep])
        for i in test:
            pred[i] = model.predict(fused[i], measurements[i].chip, measurements[i].protocol)
    return pred


def predicted_ratio(model: RooflineModel, before: Fused, after: Fused, chip: str) -> float:
    """latency(after) / latency(before) on `chip`, without the protocol's overhead (which a ratio row omits)."""
    return model.predict(after, chip, None) / model.predict(before, chip, None)


def held_out_ratios(measurements, fused: list[Fused], ratios, ratio_fused: list[tuple[Fused, Fused]]) -> np.ndarray:
    """Each ratio row predicted by a refit without it (leave-one-ratio-out), on all latency rows."""
    out = np.full(len(ratios), math.nan)
    for j, r in enumerate(ratios):
        keep = [k for k in range(len(ratios)) if k != j]
        model = fit_roofline(measurements, fused, ratios=[ratios[k] for k in keep],
                             ratio_fused=[ratio_fused[k] for k in keep])
        out[j] = predicted_ratio(model, *ratio_fused[j], r.chip)
    return out
