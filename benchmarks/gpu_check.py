"""Run every CUDA path of the training code once, in a few minutes (docs/training.md).

For anyone with a GPU: each check is the library's own code path at a tiny size, not a re-implementation.
- `bf16-checkpointed-training`: the one loop (training/loop.py) on tiny-debug with bf16 autocast and activation
  checkpointing forced on, an out_dir (checkpoints, metrics, sample grid), then resumed from its checkpoint.
- `ddp-nccl-one-gpu`: the same loop under DistributedDataParallel with an NCCL process group of world size 1
  (the loop's DDP wrapping, all-reduces, gathers and barriers all run; torchrun is not needed).
- `quality-run`: the quality evaluator (evaluators/quality.py) on tiny-debug / MNIST-5k on the GPU: proxy
  training, batched sampling and the domain FD, with the throughput fields (FLOP/s, roofline ratio).
Prints one line per check; exits 1 naming every failing check, 2 when there is no CUDA device (nothing checked).
`--device cpu` runs the same checks on CPU (gloo instead of NCCL), which is how the tests cover them.

  python benchmarks/gpu_check.py [--only NAME ...] [--device cuda|cpu]
Then `python benchmarks/proxy_throughput.py --device cuda` gives the bf16 throughput table and MFU.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Idle OpenMP threads spin by default; beside other work on a small machine that slows every op (as
# pocketdiff/__init__.py sets it). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search_space import PRESETS  # noqa: E402
from training.data import FlowData  # noqa: E402
from training.distributed import DistContext  # noqa: E402
from training.config import LoopConfig  # noqa: E402
from training.loop import fit  # noqa: E402
from training.text import PromptEmbeddings  # noqa: E402

SPEC = PRESETS["tiny-debug"]
NO_CUDA = "no CUDA device: torch.cuda.is_available() is False (torch {}); nothing was checked"


def toy_data(n: int = 64) -> tuple[FlowData, PromptEmbeddings]:
    """Random 4 x 16 x 16 'latents' in two classes and random prompt embeddings: no files, no encoder."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, SPEC.latent_channels, 16, 16, generator=g), torch.arange(n) % 2
    data = FlowData(name="toy", kind="latent", class_names=["a", "b"], resolution=16, channels=4, size=16,
                    val_x=x[:16], val_y=y[:16], ref_x=x, ref_y=y, train_x=x, train_y=y)
    prompts = PromptEmbeddings(tokens=torch.randn(3, 4, SPEC.text_dim, generator=g),
                               pooled=torch.randn(3, SPEC.text_dim, generator=g), encoder="toy")
    return data, prompts


def _ok(result) -> None:
    if result.status != "ok":
        raise RuntimeError(f"run status {result.status!r}")
    loss = result.metrics.get("val_loss")
    if loss is None or not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"validation loss {loss!r}")


def check_training(device: torch.device, workdir: Path) -> str:
    data, prompts = toy_data()
    config = LoopConfig(steps=6, batch_size=8, warmup_steps=2, checkpoint_every=3, sample_steps=2,
                        autocast="on", grad_checkpoint="on")
    out = workdir / "train"
    first = fit(SPEC, data, prompts, config, DistContext(device=device), out_dir=out, stop_at=3, progress=False)
    if first.step != 3 or first.checkpoint is None:
        raise RuntimeError(f"stopped at step {first.step} with checkpoint {first.checkpoint}")
    result = fit(SPEC, data, prompts, config, DistContext(device=device), out_dir=out, resume=True, progress=False)
    _ok(result)
    return f"6 steps in 2 slices (resumed at 3), val_loss {result.metrics['val_loss']:.4f}"


class OneRankDDP(DistContext):
    """A world of one that still takes the loop's data-parallel path (DDP wrapper, collectives)."""

    @property
    def enabled(self) -> bool:
        return True


def check_ddp(device: torch.device, workdir: Path) -> str:
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # DDP takes device_ids=[index]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        data, prompts = toy_data()
        config = LoopConfig(steps=4, batch_size=8, warmup_steps=1, checkpoint_every=4, sample_steps=2)
        result = fit(SPEC, data, prompts, config, OneRankDDP(device=device), out_dir=workdir / "ddp",
                     progress=False)
        _ok(result)
        return f"{backend} world 1, 4 steps, val_loss {result.metrics['val_loss']:.4f}"
    finally:
        dist.destroy_process_group()


def check_quality(device: torch.device, workdir: Path) -> str:
    from evaluators.quality import evaluate_quality

    record = evaluate_quality("tiny-debug", "mnist5k", "12steps", seed=0, num_samples=200, fid="off",
                              device=str(device), progress=False, out_dir=workdir / "quality")
    if record["status"] != "ok" or record.get("fd_domain") is None:
        raise RuntimeError(f"status {record['status']!r}, fd_domain {record.get('fd_domain')!r}")
    return (f"fd_domain {record['fd_domain']:.1f}, {record['train_flops_per_s'] / 1e9:.1f} GFLOP/s, "
            f"roofline ratio {record['roofline_ratio']:.3f}")


CHECKS = {"bf16-checkpointed-training": check_training, "ddp-nccl-one-gpu": check_ddp,
          "quality-run": check_quality}


def run_checks(device: torch.device, names: list[str]) -> list[str]:
    """Run the named checks; print one line each; return the names that failed."""
    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            try:
                detail = CHECKS[name](device, Path(tmp))
                print(f"ok    {name} ({time.perf_counter() - t0:.1f} s): {detail}", flush=True)
            except Exception as e:  # every failure is reported by name; the traceback goes to stderr
                traceback.print_exc(file=sys.stderr)
                first = (str(e).splitlines() or [""])[0]
                print(f"FAIL  {name} ({time.perf_counter() - t0:.1f} s): {type(e).__name__}: {first}", flush=True)
                failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), default=list(CHECKS))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: {NO_CUDA.format(torch.__version__)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check on {name}, torch {torch.__version__}", flush=True)
    failed = run_checks(device, args.only)
    if failed:
        print(f"gpu_check: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"gpu_check: all {len(args.only)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
