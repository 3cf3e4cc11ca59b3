"""training/full_run.py: resumable at-scale trainer (kill + resume = uninterrupted), DDP on gloo, bad checkpoints, NaN."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from search_space import load_spec
from search_space.compact import encode
from training.checkpoint import CheckpointError, read_checkpoint
from training.config import LoopConfig, TrainError
from training.data import load_data
from training.full_run import prepare_spec, train_full
from training.objectives import Objective
from training.optim import enable_activation_checkpointing
from training.text import class_prompt_embeddings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist5k")


@pytest.fixture()
def setup(mnist, monkeypatch):
    """tiny-debug's proxy on MNIST-5k, one thread (2 threads oversubscribe a shared 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    prompts = class_prompt_embeddings(mnist.class_names)  # also warms the cache subprocesses read
    spec, mapping = prepare_spec(load_spec("tiny-debug"), mnist, prompts)
    yield spec, mnist, prompts
    torch.set_num_threads(threads)


def _config(**kw) -> LoopConfig:
    base = dict(steps=6, batch_size=8, checkpoint_every=2, log_every=1, sample_steps=1, warmup_steps=2)
    return LoopConfig(**{**base, **kw})


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _winner(tmp_path: Path) -> Path:
    spec = load_spec("tiny-debug")
    path = tmp_path / "winner.json"
    path.write_text(json.dumps({"spec": json.loads(spec.to_json()), "spec_id": spec.spec_id,
                                "compact": encode(spec), "study": "t", "trial": 0, "metrics": {}}))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pocketdiff.cli", "train", *args]


def test_killed_cli_run_resumes_exactly(setup, tmp_path):
    spec, data, prompts = setup
    steps = 30
    ref = train_full(spec, data, prompts, tmp_path / "ref", _config(steps=steps, checkpoint_every=5), progress=False)
    assert ref.status == "ok"
    expected = _losses(tmp_path / "ref")
    assert sorted(expected) == list(range(1, steps + 1))

    run = tmp_path / "run"
    args = _cli(str(_winner(tmp_path)), "--out", str(run), "--steps", str(steps), "--batch-size", "8",
                "--checkpoint-every", "5", "--log-every", "1", "--sample-steps", "1", "--warmup-steps", "2", "-q")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = run / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step_0000010":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = int(latest.read_text().strip().split("_")[1])
    assert 10 <= killed_at < steps

    done = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    got = _losses(run)
    assert sorted(got) == list(range(1, steps + 1))  # nothing missing, nothing doubled after the kill
    for step in range(1, steps + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-6, abs=1e-7), f"step {step}"
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["proxy"]["source_spec_id"] == load_spec("tiny-debug").spec_id  # the proxy mapping is recorded
    assert read_checkpoint(run)[0]["step"] == steps


def test_ddp_two_gloo_ranks_agree(setup, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pocketdiff.cli", "train", "tiny-debug", "--out", str(run), "--steps", "3", "--batch-size", "4",
           "--checkpoint-every", "3", "--log-every", "1", "--sample-steps", "1", "-q"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    digests = [r["rank_digests"] for r in rows if "rank_digests" in r]
    assert all(r.get("world_size") == 2 for r in rows if "loss" in r)
    assert len(digests) == 2 and all(len(d) == 2 and d[0] == d[1] for d in digests)  # after step 1 and step 3
    assert digests[0][0] != digests[1][0]  # the weights did change
    assert rows[0]["images"] == 8  # 2 ranks x 4


def test_resume_refuses_corrupt_or_mismatched_checkpoints(setup, tmp_path):
    spec, data, prompts = setup
    run = tmp_path / "run"
    assert train_full(spec, data, prompts, run, _config(steps=2), progress=False).status == "ok"
    with pytest.raises(TrainError, match="--resume"):  # never silently overwrite a run
        train_full(spec, data, prompts, run, _config(steps=4), progress=False)
    with pytest.raises(CheckpointError, match="batch_size"):
        train_full(spec, data, prompts, run, _config(steps=4, batch_size=4), resume=True, progress=False)
    other, _ = prepare_spec(load_spec("tiny-debug", ["stages.0.channels=16"]), data, prompts)
    with pytest.raises(CheckpointError, match="spec_id"):
        train_full(other, data, prompts, run, _config(steps=4), resume=True, progress=False)
    state = run / "checkpoints" / "step_0000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt"):
        train_full(spec, data, prompts, run, _config(steps=4), resume=True, progress=False)


class _Payload:
    """Unpickling this runs a shell command: what a hostile state.pt would carry."""
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_resume_never_runs_code_from_a_state_file(setup, tmp_path):
    """A crafted state.pt whose checksum matches its manifest (so only the loader stands in the way) is refused
    and its command never runs; a manifest without a files table is refused by name."""
    import hashlib

    spec, data, prompts = setup
    run = tmp_path / "run"
    assert train_full(spec, data, prompts, run, _config(steps=2), progress=False).status == "ok"
    ckpt = run / "checkpoints" / "step_0000002"
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "evil": _Payload(marker)}, ckpt / "state.pt")
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    manifest["files"]["state.pt"] = hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest()
    (ckpt / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refused"):
        train_full(spec, data, prompts, run, _config(steps=4), resume=True, progress=False)
    assert not marker.exists()
    del manifest["files"]
    (ckpt / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no valid 'files' table"):
        read_checkpoint(ckpt)


def test_nan_stops_and_keeps_last_good_checkpoint(setup, tmp_path, monkeypatch):
    spec, data, prompts = setup
    calls = {"n": 0}
    original = Objective.loss

    def poisoned(self, *args):
        calls["n"] += 1
        loss, logs = original(self, *args)
        return (loss * float("nan"), logs) if calls["n"] == 4 else (loss, logs)

    monkeypatch.setattr(Objective, "loss", poisoned)
    run = tmp_path / "run"
    result = train_full(spec, data, prompts, run, _config(steps=6), progress=False)
    assert result.status.startswith("diverged at step 3")
    assert result.checkpoint.name == "step_0000002"
    assert (run / "checkpoints" / "latest").read_text() == "step_0000002"
    manifest, tensors = read_checkpoint(run)
    assert manifest["step"] == 2 and all(torch.isfinite(v).all() for v in tensors.values())
    assert max(_losses(run)) == 3  # steps 1-3 were logged; nothing after the NaN


def test_config_and_pairing_errors(setup):
    spec, data, prompts = setup
    with pytest.raises(TrainError, match="grad_accum"):
        _config(grad_accum=0).validate()
    with pytest.raises(TrainError, match="text_dim"):
        prepare_spec(load_spec("tiny-debug"), data, prompts, as_is=True)  # text_dim 32 vs MiniLM's 384


def test_grad_accumulation_trains(setup, tmp_path):
    spec, data, prompts = setup
    a = train_full(spec, data, prompts, tmp_path / "a", _config(steps=2, batch_size=4, grad_accum=2), progress=False)
    assert a.status == "ok" and a.history[0]["images"] == 8


def test_activation_checkpointing_keeps_gradients(setup):
    spec, data, prompts = setup
    from search_space import build_model
    torch.manual_seed(0)
    plain = build_model(spec)
    torch.nn.init.normal_(plain.conv_out.weight, std=0.02)
    ckpt = build_model(spec)
    ckpt.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(ckpt) > 0
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([300.0, 700.0])
    tokens = prompts.tokens[:2]
    for m in (plain, ckpt):
        m(x, t, tokens).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
