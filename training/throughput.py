"""Training throughput against the machine's limit (docs/quality.md, "Throughput").

Two numbers make a run's speed readable: the FLOPs one training step costs and the host's dense matmul peak.
- FLOPs per step come from the project's one op trace (search_space/trace.py, the walk the cost evaluator's
  MACs are a view of) on the meta device: 2 FLOPs per multiply-accumulate of the convs, linear layers and
  attention products of one forward pass, times 3 for forward + backward (Kaplan et al. 2020: the backward pass
  costs about twice the forward), times the images per step. Norms, activations and the optimiser are not
  counted: they are not matmul work, so the ratio below is the share of the matmul roofline the step reaches.
- The matmul peak is measured, not looked up: the best of a few square matmuls at the training dtype, once per
  (host, CPU/GPU model, device, dtype, thread count, torch version) and cached as JSON under the cache root
  (search_space/cache.py, $POCKETDIFF_CACHE), plus an in-process memo. A loaded machine measures lower: the load
  average at measurement time is stored beside the number, and a peak measured on a busier machine than now is
  measured again (the better one is kept).
`throughput_metrics` turns (FLOPs per step, steps, seconds spent in training steps, peak) into the fields every
quality record and the training loop's metrics carry.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import torch

from search_space.cache import cache_dir
from search_space.outputs import atomic_write

PEAK_VERSION = 1  # bump when the measurement changes: it names the cache files
# [choose] square matmuls of 1024 (CPU: ~2 GFLOP each, tens of ms on 2 cores) or 8192 (GPU: ~1 TFLOP, a few ms
# on an H100): large enough for the BLAS to reach its steady state, small enough to measure in under a second.
PEAK_SIZE = {"cpu": 1024, "cuda": 8192}
PEAK_REPEATS = 8
PEAK_WARMUP = 2
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (Kaplan et al. 2020)
FLOPS_PER_MAC = 2

# A peak measured while the 1-minute load average was this much higher than now is measured again (keeping the
# better of the two): a busy machine measures low (one 2-core host: 41 GFLOP/s at load 3.8 with spinning OpenMP
# threads, 163 GFLOP/s at load 2 with passive ones).
RELOAD_MARGIN = 1.0

_MEMO: dict[str, dict] = {}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu or platform.machine()


def peak_key(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             threads: int | None = None) -> dict:
    """What a measured peak depends on; two keys that differ never share a cached number."""
    device = torch.device(device)
    return {"version": PEAK_VERSION, "host": socket.gethostname(), "device": device.type,
            "device_name": _device_name(device), "dtype": str(dtype).removeprefix("torch."),
            "threads": threads if threads is not None else torch.get_num_threads(), "torch": torch.__version__}


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def peak_path(key: dict) -> Path:
    return cache_dir("throughput") / f"matmul-peak-{key['device']}-{key['dtype']}-t{key['threads']}-" \
                                     f"{_key_digest(key)}.json"


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        size: int | None = None, repeats: int = PEAK_REPEATS) -> dict:
    """The best FLOP/s of `repeats` (size x size) @ (size x size) products after a warm-up, and their median."""
    device = torch.device(device)
    n = size or PEAK_SIZE.get(device.type, 1024)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(PEAK_WARMUP + repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        if i >= PEAK_WARMUP:
            times.append(time.perf_counter() - t0)
    flops = FLOPS_PER_MAC * n ** 3
    return {"flops_per_s": flops / min(times), "median_flops_per_s": flops / statistics.median(times),
            "size": n, "repeats": repeats}


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                refresh: bool = False) -> dict:
    """The host's dense matmul peak for (device, dtype, current thread count): cached, else measured once.

    Returns the cache record: flops_per_s (the best repeat), median_flops_per_s, the key, when it was measured,
    the 1-minute load average then, and `cached` (whether it came from the cache)."""
    key = peak_key(device, dtype)
    path = peak_path(key)
    previous = None
    if not refresh:
        if path.is_file():
            try:
                record = json.loads(path.read_text())
                if record.get("key") == key:
                    if _load() + RELOAD_MARGIN >= (record.get("load_average") or 0.0):
                        _MEMO[_key_digest(key)] = record
                        return {**record, "cached": True}
                    previous = record  # measured on a busier machine than now: measure again, keep the best
            except (OSError, json.JSONDecodeError):
                pass  # a torn or foreign file: measure again
        memo = _MEMO.get(_key_digest(key))
        if memo is not None:  # measured by this process under another cache root
            _write(path, memo)
            return {**memo, "cached": True}
    record = {**measure_matmul_peak(device, dtype), "key": key, "measured_at": time.time(), "load_average": _load()}
    if previous is not None and previous["flops_per_s"] > record["flops_per_s"]:
        record = {**previous, "load_average": record["load_average"]}
    _MEMO[_key_digest(key)] = record
    _write(path, record)
    return {**record, "cached": False}


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def _write(path: Path, record: dict) -> None:
    with atomic_write(path) as tmp:  # a concurrent reader sees the old file or the new one
        tmp.write_text(json.dumps(record, indent=1))


@functools.lru_cache(maxsize=64)
def forward_macs(spec, in_shape: tuple[int, int, int], text_tokens: int, text_dim: int) -> float:
    """Multiply-accumulates of one forward pass of `spec` on one (C, H, W) input with `text_tokens` prompt
    tokens: the project's one op trace on the meta device, attention through the explicit-matmul backend so
    its products are counted (as evaluators/cost.py counts them). The walk of a proxy takes about 0.7 s on the
    2-core machine, so the count is cached under the cache root by spec_id, shapes and the fingerprint of the
    builder and trace code (search_space/fingerprint.py): seeds, promotions and reruns do not walk again."""
    from search_space.fingerprint import builder_fingerprint

    c, h, w = in_shape
    path = cache_dir("throughput") / (f"macs-{spec.spec_id}-{c}x{h}x{w}-t{text_tokens}x{text_dim}-"
                                      f"{builder_fingerprint()}.json")
    try:
        return float(json.loads(path.read_text())["macs"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet (or a torn file): walk
    macs = _walk_macs(spec, in_shape, text_tokens, text_dim)
    _write(path, {"macs": macs, "spec_id": spec.spec_id, "in_shape": list(in_shape), "text_tokens": text_tokens,
                  "text_dim": text_dim})
    return macs


def _walk_macs(spec, in_shape: tuple[int, int, int], text_tokens: int, text_dim: int) -> float:
    from search_space import build_model, example_inputs
    from search_space.attention import attention_backend
    from search_space.trace import trace_forward

    c, h, w = in_shape
    if (c, h, text_dim) != (spec.latent_channels, w, spec.text_dim):
        raise ValueError(f"input {c}x{h}x{w} with {text_dim}-d text does not fit spec {spec.spec_id} "
                         f"({spec.latent_channels} latent channels, {spec.text_dim}-d text, square latents)")
    model = build_model(spec, "meta")
    inputs = example_inputs(spec, h, text_tokens=text_tokens, device="meta")  # the project's one input builder
    with attention_backend("math"):
        ops = trace_forward(model, inputs)
    return float(sum(op.macs for op in ops))


def training_flops_per_step(spec, in_shape: tuple[int, int, int], text_tokens: int, text_dim: int,
                            images_per_step: int) -> float:
    """Matmul FLOPs of one training step: 2 x MACs of one forward pass x 3 (forward + backward) x images."""
    macs = forward_macs(spec, tuple(in_shape), text_tokens, text_dim)
    return float(FLOPS_PER_MAC * TRAIN_FLOPS_PER_FORWARD * macs * images_per_step)


THROUGHPUT_FIELDS = ("train_flops_per_step", "train_step_seconds", "train_flops_per_s", "matmul_peak_flops_per_s",
                     "roofline_ratio")


def throughput_metrics(flops_per_step: float, steps: int, step_seconds: float, peak: dict | None) -> dict:
    """The throughput fields of a record: step time (the training steps only: no validation, checkpoints or
    sampling), achieved FLOP/s, the matmul peak and their ratio (the roofline ratio)."""
    if steps <= 0 or step_seconds <= 0:
        return {}
    achieved = flops_per_step * steps / step_seconds
    out = {"train_flops_per_step": flops_per_step, "train_step_seconds": step_seconds / steps,
           "train_flops_per_s": achieved}
    if peak is not None:
        out["matmul_peak_flops_per_s"] = peak["flops_per_s"]
        out["roofline_ratio"] = achieved / peak["flops_per_s"]
    return out


# Published dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's datasheets: H100 / H200 (the
# "H100 Tensor Core GPU" and "H200" product pages' spec tables list BF16 "with sparsity"; dense is half),
# A100 ("NVIDIA A100 Tensor Core GPU" datasheet: BF16 312 TFLOPS dense, 624 with sparsity, every A100 form).
# Matched against torch.cuda.get_device_name() in this order (the first rule whose words all occur wins).
PUBLISHED_BF16_PEAK = {
    "H200 NVL": 835e12,  # 1,671 TFLOPS with sparsity
    "H200": 989e12,  # SXM: 1,979 with sparsity
    "H100 NVL": 835e12,  # 1,671 with sparsity
    "H100 PCIe": 756e12,  # 1,513 with sparsity
    "H100": 989e12,  # SXM5 (device name "NVIDIA H100 80GB HBM3"): 1,979 with sparsity
    "A100": 312e12,
}


def published_peak(device_name: str) -> float | None:
    """The published dense bf16 peak of a GPU by its torch device name; None for a GPU not in the table."""
    name = device_name.lower()
    for key, value in PUBLISHED_BF16_PEAK.items():
        if all(word.lower() in name for word in key.split()):
            return value
    return None
