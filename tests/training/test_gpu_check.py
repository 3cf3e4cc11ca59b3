"""benchmarks/gpu_check.py: without CUDA it says so and checks nothing; its checks' code paths run on CPU (gloo
instead of NCCL, CPU bf16 autocast) so a broken path is found before anyone lends a GPU."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_cuda_fails_cleanly(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "nothing was checked" in err[0]


def test_a_failing_check_is_named_and_exits_1(gpu_check, monkeypatch, capsys):
    def broken(device, workdir):
        raise RuntimeError("kernel launch failed\nmore detail")

    monkeypatch.setitem(gpu_check.CHECKS, "ddp-nccl-one-gpu", broken)
    monkeypatch.setitem(gpu_check.CHECKS, "bf16-checkpointed-training", lambda d, w: "fine")
    assert gpu_check.main(["--device", "cpu", "--only", "bf16-checkpointed-training", "ddp-nccl-one-gpu"]) == 1
    out = capsys.readouterr()
    assert "ok    bf16-checkpointed-training" in out.out
    assert "FAIL  ddp-nccl-one-gpu" in out.out and "kernel launch failed" in out.out
    assert out.err.strip().splitlines()[-1] == "gpu_check: FAILED: ddp-nccl-one-gpu"


def test_bf16_checkpointed_training_path_on_cpu(gpu_check, tmp_path):
    assert "resumed at 3" in gpu_check.check_training(torch.device("cpu"), tmp_path)
    assert (tmp_path / "train" / "checkpoints" / "latest").is_file()


def test_ddp_path_on_cpu_with_gloo(gpu_check, tmp_path):
    import torch.distributed as dist

    assert gpu_check.check_ddp(torch.device("cpu"), tmp_path).startswith("gloo world 1")
    assert not dist.is_initialized()
    summary = (tmp_path / "ddp" / "summary.json").read_text()
    assert '"status": "ok"' in summary


@pytest.mark.slow
def test_quality_path_on_cpu(gpu_check, tmp_path):
    assert "roofline ratio" in gpu_check.check_quality(torch.device("cpu"), tmp_path)
