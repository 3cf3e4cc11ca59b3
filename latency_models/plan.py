"""Which measurements to take next on a chip: the ones that best tell the roofline's hypotheses apart.

The roofline (roofline.py) has a few shared terms (efficiency per op kind, half-saturation sizes, dispatch,
on-chip/DRAM bandwidth ratio, the dense-conv reduction roll-off) and three factors per chip (peak, DRAM
bandwidth, on-chip memory). A measurement informs them through the derivatives of its log predicted latency
with respect to their logs: a dense 3x3 conv chain at a high resolution pins the conv efficiency and the peak,
a 1x1 chain at low resolution the bandwidth, an attention block at 4,096 tokens the spill of its scores, a
depthwise chain the depthwise efficiency. `plan` picks, greedily, the candidate that most increases the log
determinant of the information matrix (D-optimal design), starting from what the chip already knows: the
priors of the parameters plus the rows its profile was fitted on. Each pick is the candidate whose log
latency the current model is least sure of (the largest predicted variance), which is the same thing.

Assumptions, stated because they shape the choice: every planned row is a noisy observation of log latency
with MEASUREMENT_SIGMA (the model's form error, not the timing noise, dominates); the planned rows share one
new measuring protocol whose scale is unknown (a nuisance parameter with the fit's prior), so a row only
informs through how it differs from the other planned rows; the profile's own rows carry no protocol column
(their protocols' scales were fitted with them). The Jacobian comes from central finite differences of
`roofline.op_terms`, so it follows the model exactly as the fit uses it.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from search_space import SpecError

from . import roofline
from .roofline import CHIP_BW_SIGMA, CHIP_PEAK_SIGMA, CHIP_SRAM_SIGMA, PROTOCOL_SCALE_SIGMA, SHARED, SHARED_NAMES

PARAMS = SHARED_NAMES + ("chip_peak", "chip_bandwidth", "chip_sram", "protocol_scale")
PRIOR_SIGMA = np.array([s[4] for s in SHARED] + [CHIP_PEAK_SIGMA, CHIP_BW_SIGMA, CHIP_SRAM_SIGMA,
                                                 PROTOCOL_SCALE_SIGMA])
# [choose] 0.1 log units per row: held-out family errors of the roofline are 25-50% (reports/), repeat
# timings of one package ~2%. Larger values change which rows are picked little (the ranking is by
# predicted variance) but shrink every gain.
MEASUREMENT_SIGMA = 0.1
FD_STEP = 1e-3  # log-units of each parameter in the central differences
PLAN_PROTOCOL = "measure-cpu_and_ne"  # what `latency measure --compute-units cpu_and_ne` rows get
DEFAULT_LAYERS = {"conv": 8, "dwpw": 8, "attn": 2}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A measurement that could be taken: an architecture string of measurements.py at one input shape."""
    arch: str
    input_shape: tuple[int, ...]
    why: str  # which sweep or --include it came from

    @property
    def shape_text(self) -> str:
        return "x".join(map(str, self.input_shape))

    @property
    def key(self) -> str:
        return f"{self.arch}@{self.shape_text}"


def sweep() -> list[Candidate]:
    """The standard pool: a dense 3x3 conv sweep over widths and resolutions, 1x1 convs, depthwise +
    pointwise blocks around 128x128x256, and self-attention at 1,024 and 4,096 tokens with few and many heads.
    Sizes span the regimes the model's terms switch between (compute- vs memory-bound, spilling on-chip memory
    or not, short vs long reductions)."""
    out = []
    lc, ld, la = DEFAULT_LAYERS["conv"], DEFAULT_LAYERS["dwpw"], DEFAULT_LAYERS["attn"]
    for c in (64, 128, 256, 512):
        for hw in (32, 64, 128):
            out.append(Candidate(f"microbench:conv3x3-c{c}-l{lc}", (1, c, hw, hw), "dense 3x3 conv sweep"))
    for c in (256, 512, 1024):
        out.append(Candidate(f"microbench:conv1x1-c{c}-l{2 * lc}", (1, c, 64, 64), "pointwise conv sweep"))
    for c, hw in ((256, 128), (128, 128), (256, 64), (512, 32)):
        out.append(Candidate(f"microbench:dwpw-c{c}-l{ld}", (1, c, hw, hw), "depthwise + pointwise"))
    for tokens in (1024, 4096):
        for c, h in ((320, 5), (512, 2), (512, 8)):
            out.append(Candidate(f"microbench:attn-c{c}-h{h}-l{la}", (1, tokens, c), "self-attention"))
    return out


def include_candidate(text: str, latent: int = 128, batch: int = 1) -> Candidate:
    """A user's candidate: a preset name or spec JSON path (at `latent`, `batch`), or ARCH@SHAPE for anything
    measurements.py can rebuild (e.g. microbench:conv3x3-c384-l8@1x384x64x64, timm:fastvit_t8@1x3x256x256)."""
    from search_space import PRESETS, load_spec

    from .archs import is_rebuildable
    from .measurements import parse_shape

    if "@" in text:
        arch, _, shape = text.partition("@")
        if not is_rebuildable(arch):
            raise SpecError(f"--include {text!r}: {arch!r} is not an architecture string; write e.g. "
                            f"microbench:conv3x3-c256-l8@1x256x64x64 or timm:fastvit_t8@1x3x256x256")
        return Candidate(arch, parse_shape(shape), "--include")
    if text in PRESETS:
        arch = f"preset:{text}"
    elif Path(text).is_file():
        arch = f"spec:{text}"
    else:
        raise SpecError(f"--include {text!r} is neither a preset, a spec JSON file nor ARCH@SHAPE "
                        f"(e.g. microbench:conv3x3-c256-l8@1x256x64x64)")
    spec = load_spec(text)
    return Candidate(arch, (batch, spec.latent_channels, latent, latent), "--include")


# --- the information a measurement carries ----------------------------------------------------------------

def _perturbed(model: roofline.RooflineModel, chip: str, j: int, step: float) -> roofline.RooflineModel:
    shared = dict(model.shared)
    peak, bw, sram = dict(model.chip_peak), dict(model.chip_bw), dict(model.chip_sram)
    n = len(SHARED_NAMES)
    if j < n:
        shared[SHARED_NAMES[j]] *= math.exp(step)
    else:
        d = (peak, bw, sram)[j - n]
        d[chip] = d.get(chip, 1.0) * math.exp(step)
    return roofline.RooflineModel(shared, peak, bw, dict(model.overheads), dict(model.protocol_scale), sram)


def log_jacobian(model: roofline.RooflineModel, chip: str, fused: list[roofline.Fused],
                 protocol_column: float = 1.0) -> np.ndarray:
    """(rows, PARAMS) derivatives of log predicted ms (without overhead) w.r.t. the log of each parameter.
    The last column is the measuring protocol's log-scale: 1 for rows under the planned protocol."""
    if model.chip_terms(chip) is None:
        raise SpecError(f"chip {chip!r} has no published peak / bandwidth (chips.py); it cannot be planned for")
    jac = np.zeros((len(fused), len(PARAMS)))
    for j in range(len(PARAMS) - 1):
        up, down = _perturbed(model, chip, j, FD_STEP), _perturbed(model, chip, j, -FD_STEP)
        for i, f in enumerate(fused):
            jac[i, j] = (math.log(up.predict(f, chip, None)) - math.log(down.predict(f, chip, None))) / (2 * FD_STEP)
    jac[:, -1] = protocol_column
    return jac


def prior_information(base_jacobian: np.ndarray | None = None) -> np.ndarray:
    """The information before planning: parameter priors plus the rows already fitted on."""
    info = np.diag(1.0 / PRIOR_SIGMA ** 2)
    if base_jacobian is not None and len(base_jacobian):
        info = info + base_jacobian.T @ base_jacobian / MEASUREMENT_SIGMA ** 2
    return info


@dataclasses.dataclass
class Choice:
    index: int  # into the candidate list
    gain: float  # increase of log det(information) from adding it
    sd_log: float  # the model's uncertainty about this candidate's log latency before it was added
    informs: list[tuple[str, float]]  # parameters whose variance it cut most: (name, share of variance removed)


def select(jacobian: np.ndarray, info0: np.ndarray, n: int, allowed: np.ndarray | None = None) -> list[Choice]:
    """Greedy D-optimal choice of `n` rows of `jacobian`, each used at most once."""
    cov = np.linalg.inv(info0)
    free = np.ones(len(jacobian), bool) if allowed is None else allowed.copy()
    out = []
    s2 = MEASUREMENT_SIGMA ** 2
    for _ in range(min(n, int(free.sum()))):
        var = np.einsum("ij,jk,ik->i", jacobian, cov, jacobian)
        gain = np.where(free, np.log1p(var / s2), -np.inf)
        i = int(np.argmax(gain))
        j = jacobian[i]
        cj = cov @ j
        new = cov - np.outer(cj, cj) / (s2 + j @ cj)  # Sherman-Morrison: one more row of information
        cut = 1.0 - np.diag(new) / np.diag(cov)
        top = np.argsort(-cut)[:2]
        out.append(Choice(i, float(gain[i]), float(math.sqrt(var[i])),
                          [(PARAMS[k], float(cut[k])) for k in top if cut[k] > 0.01]))
        cov, free[i] = new, False
    return out


def plan_measurements(model: roofline.RooflineModel, chip: str, candidates: list[roofline.Fused], n: int,
                      base: list[roofline.Fused] = ()) -> list[Choice]:
    """The `n` candidates (their fused ops) that best pin the roofline on `chip`, given rows `base` (fused ops
    of the measurements already fitted on that chip)."""
    base_jac = log_jacobian(model, chip, list(base), protocol_column=0.0) if len(base) else None
    return select(log_jacobian(model, chip, candidates), prior_information(base_jac), n)


# --- the plan file ----------------------------------------------------------------------------------------

PLAN_EXTRA_COLUMNS = ("predicted_ms", "uncertainty_log", "informs", "export_command", "measure_command")


def export_command(c: Candidate, out_dir: str = "plan") -> tuple[str, str]:
    """The `pocketdiff export coreml` command that makes the package, and where it writes it."""
    kind, _, name = c.arch.partition(":")
    stem = f"{name.replace('/', '_').replace('.json', '')}-{c.shape_text}"
    out = f"{out_dir}/{stem}.mlpackage"
    if kind == "preset" or kind == "spec":
        cmd = f"pocketdiff export coreml {name} --latent {c.input_shape[-1]} --batch {c.input_shape[0]}"
    elif kind in ("timm", "torchvision"):
        cmd = f"pocketdiff export coreml --{kind} {name} --input {c.shape_text}"
    else:
        cmd = f"pocketdiff export coreml --arch {c.arch} --input {c.shape_text}"
    return f"{cmd} -o {out}", out


def plan_rows(candidates: list[Candidate], choices: list[Choice], predicted_ms: list[float], chip: str,
              device: str, fit_id: str) -> list[dict]:
    """Measurement-schema rows (latency_ms blank, to fill) plus why each was chosen and how to make it."""
    from .measurements import MEASUREMENT_COLUMNS

    rows = []
    for ch in choices:
        c = candidates[ch.index]
        export, package = export_command(c)
        row = dict.fromkeys(MEASUREMENT_COLUMNS, "")
        row.update({"model": c.arch.split(":", 1)[1], "arch": c.arch, "input_shape": c.shape_text, "device": device,
                    "chip": chip, "compute_units": "cpu_and_ne", "precision": "fp16",
                    "source": f"pocketdiff latency plan (profile fit {fit_id})",
                    "predicted_ms": f"{predicted_ms[ch.index]:.4g}", "uncertainty_log": f"{ch.sd_log:.3f}",
                    "informs": "; ".join(f"{k} {100 * v:.0f}%" for k, v in ch.informs),
                    "export_command": export,
                    "measure_command": f"pocketdiff latency measure {package} --compute-units cpu_and_ne "
                                       f"--out measured.csv"})
        rows.append(row)
    return rows


def write_plan(rows: list[dict], path: str | Path) -> Path:
    import csv

    from .measurements import MEASUREMENT_COLUMNS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MEASUREMENT_COLUMNS + PLAN_EXTRA_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return path


def plan_for_device(chip: str, n: int = 8, include: tuple[str, ...] = (), latent: int = 128, batch: int = 1,
                    profile_dir=None, progress=None) -> tuple[list[dict], dict]:
    """Plan `n` measurements for `chip` from its current profile; returns (plan rows, summary)."""
    from . import profiles
    from .predictor import arch_features, measurement_features

    profile = profiles.load_profile(chip, profile_dir)
    model = profiles.roofline_from_profile(profile)
    cands = sweep() + [include_candidate(t, latent, batch) for t in include]
    seen, unique = set(), []
    for c in cands:
        if c.key not in seen:
            seen.add(c.key)
            unique.append(c)
    if progress:
        progress(f"features of {len(unique)} candidates and {len(profile['measurements'])} fitted rows of {chip} "
                 f"(meta-device walks, cached after the first run)")
    fused = [arch_features(c.arch, c.input_shape).fused for c in unique]
    base = [measurement_features(m).fused for m in profiles.profile_measurements(profile)]
    choices = plan_measurements(model, chip, fused, n, base)
    predicted = [model.predict(f, chip, None) for f in fused]
    device = (profile.get("devices") or [chip])[0]
    rows = plan_rows(unique, choices, predicted, chip, device, profile["fit_id"])
    return rows, {"chip": chip, "fit_id": profile["fit_id"], "candidates": len(unique), "base_rows": len(base),
                  "gain": sum(c.gain for c in choices)}
