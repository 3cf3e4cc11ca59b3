"""Measuring latency: Core ML on a Mac (`measure_coreml`), torch on the host CPU / CUDA (`measure_host`).

Core ML runs only on Apple platforms; on Linux `measure_coreml` raises MeasureUnavailable at once. On a Mac it
loads the package once (timing the load, which includes Core ML's on-device compilation), runs warm-up
predictions, then times each `predict` call and appends one row in the measurement schema
(measurements.MEASUREMENT_COLUMNS) to a CSV. An iPhone is measured with Xcode's Performance report on the
exported package (coremltools cannot drive a phone); enter its median as a row and `pocketdiff latency import`.
Host latency is a separate, measured objective (not a predictor of the phone): median of timed forwards.
"""
from __future__ import annotations

import csv
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from search_space.errors import UserError
from search_space.outputs import atomic_write

from .measurements import MEASUREMENT_COLUMNS, MEASUREMENT_OPTIONAL, chip_key

COMPUTE_UNITS = ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only")
DEFAULT_WARMUP = 10


class MeasureUnavailable(UserError, RuntimeError):
    """Measuring is impossible on this machine (Core ML needs macOS)."""


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _mac_chip() -> str:
    """"Apple M2 Pro" -> "m2pro" (sysctl's CPU brand string names the SoC)."""
    brand = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout
    return chip_key(brand.replace("Apple", "").strip() or platform.machine())


def _random_inputs(model) -> dict:
    """One random array per declared input, at the package's fixed shapes and declared dtypes."""
    from coremltools.proto import FeatureTypes_pb2 as ft

    dtypes = {ft.ArrayFeatureType.FLOAT16: np.float16, ft.ArrayFeatureType.FLOAT32: np.float32,
              ft.ArrayFeatureType.INT32: np.int32, ft.ArrayFeatureType.DOUBLE: np.float64}
    feed = {}
    for inp in model.get_spec().description.input:
        arr = inp.type.multiArrayType
        feed[inp.name] = np.random.rand(*[int(s) for s in arr.shape]).astype(dtypes.get(arr.dataType, np.float32))
    return feed


def measure_coreml(package: str | Path, compute_units: str = "cpu_and_ne", runs: int = 100,
                   warmup: int = DEFAULT_WARMUP) -> dict:
    """Time `runs` predictions of a .mlpackage after `warmup`; returns a measurement-schema row (+ stats)."""
    if platform.system() != "Darwin":
        raise MeasureUnavailable(
            f"measuring Core ML latency needs macOS (Core ML runs only on Apple platforms; this is "
            f"{platform.system()}). Copy {package} to a Mac and run this command there, or measure on an "
            f"iPhone with Xcode's Performance report and bring the numbers in with `pocketdiff latency import`.")
    import coremltools as ct

    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f"compute units {compute_units!r} is not one of {', '.join(COMPUTE_UNITS)}")
    units = {"all": ct.ComputeUnit.ALL, "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
             "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU, "cpu_only": ct.ComputeUnit.CPU_ONLY}[compute_units]
    t0 = time.perf_counter()
    model = ct.models.MLModel(str(package), compute_units=units)
    load_ms = (time.perf_counter() - t0) * 1e3
    feed = _random_inputs(model)
    for _ in range(warmup):
        model.predict(feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model.predict(feed)
        times.append((time.perf_counter() - t) * 1e3)
    spec = model.get_spec()
    meta = dict(spec.description.metadata.userDefined)
    shape = "x".join(str(int(s)) for s in spec.description.input[0].type.multiArrayType.shape)
    return {
        "model": meta.get("pocketdiff.model_id") or Path(package).stem,
        "arch": meta.get("pocketdiff.arch", ""), "input_shape": shape, "device": platform.node(),
        "chip": _mac_chip(), "os": f"macOS {platform.mac_ver()[0]}", "compute_units": compute_units,
        "precision": "fp16", "latency_ms": statistics.median(times), "source": "pocketdiff latency measure",
        "p10_ms": _percentile(times, 10), "p90_ms": _percentile(times, 90), "load_ms": load_ms, "runs": runs,
        "weight_bits": 16, "protocol": f"measure-{compute_units}",
        "tool_versions": f"coremltools {ct.__version__}; python {platform.python_version()}",
        "notes": (f"{warmup} warm-up predictions; wall time of MLModel.predict per call; attention form "
                  f"{meta.get('pocketdiff.attention', 'math')}"),
    }


def append_row(row: dict, out: str | Path) -> Path:
    out = Path(out)
    new = not out.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, append=True) as tmp, tmp.open("a", newline="") as f:  # never half a row in the file
        w = csv.DictWriter(f, fieldnames=MEASUREMENT_COLUMNS + MEASUREMENT_OPTIONAL, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
    return out


def measure_host(src, device: str = "cpu", runs: int = 20, warmup: int = 3, half: bool = False) -> dict:
    """Median / p10 / p90 ms of `runs` torch forwards of a ModelSource with real weights on CPU or CUDA."""
    import torch

    from search_space.attention import attention_backend

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MeasureUnavailable("CUDA was asked for but torch sees no CUDA device; use --device cpu")
    dtype = torch.float16 if half else torch.float32
    module = src.module.to(device=device, dtype=dtype).eval()
    inputs = tuple(x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
                   if isinstance(x, torch.Tensor) else x for x in src.inputs)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode(), attention_backend("sdpa"):
        for i in range(warmup + runs):
            sync()
            t = time.perf_counter()
            module(*inputs)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "p10_ms": _percentile(times, 10),
            "p90_ms": _percentile(times, 90), "runs": runs, "warmup": warmup, "device": device,
            "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "torch": torch.__version__}
