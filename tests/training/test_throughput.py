"""Training throughput (training/throughput.py): the host's matmul peak is measured once per key and cached under the
cache root; every run records achieved FLOP/s from the one op trace and its ratio to that peak."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_space import PRESETS, build_model
from search_space.attention import attention_backend
from training import throughput
from training.data import FlowData
from training.text import PromptEmbeddings
from training.config import LoopConfig
from training.quality_run import train
from tests.toys import toy_flow

SPEC = PRESETS["tiny-debug"]


@pytest.fixture
def counted(monkeypatch):
    """measure_matmul_peak replaced by a fixed 1e9 FLOP/s that counts its calls; no in-process memo."""
    calls = []

    def fake(device="cpu", dtype=torch.float32, size=None, repeats=throughput.PEAK_REPEATS):
        calls.append((str(device), dtype, torch.get_num_threads()))
        return {"flops_per_s": 1e9, "median_flops_per_s": 9e8, "size": 8, "repeats": 1}

    monkeypatch.setattr(throughput, "measure_matmul_peak", fake)
    monkeypatch.setattr(throughput, "_MEMO", {})
    return calls


def test_peak_is_measured_once_and_cached_under_the_cache_root(counted, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path))
    first = throughput.matmul_peak("cpu")
    again = throughput.matmul_peak("cpu")
    assert len(counted) == 1 and not first["cached"] and again["cached"]
    files = list((tmp_path / "throughput").glob("matmul-peak-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["flops_per_s"] == 1e9
    monkeypatch.setattr(throughput, "_MEMO", {})  # a new process: the file alone serves it
    assert throughput.matmul_peak("cpu")["cached"] and len(counted) == 1
    assert not throughput.matmul_peak("cpu", refresh=True)["cached"] and len(counted) == 2


def test_peak_is_keyed_by_host_threads_and_dtype(counted, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path))
    threads = torch.get_num_threads()
    throughput.matmul_peak("cpu")
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        throughput.matmul_peak("cpu")
    finally:
        torch.set_num_threads(threads)
    assert len(counted) == 2 and counted[0][2] != counted[1][2]
    throughput.matmul_peak("cpu", torch.bfloat16)
    assert len(counted) == 3
    monkeypatch.setattr(throughput.socket, "gethostname", lambda: "another-host")
    throughput.matmul_peak("cpu")
    assert len(counted) == 4
    assert len(list((tmp_path / "throughput").glob("*.json"))) == 4


def test_a_foreign_or_torn_cache_file_is_measured_again(counted, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path))
    path = throughput.peak_path(throughput.peak_key("cpu"))
    path.write_text("{not json")
    assert not throughput.matmul_peak("cpu")["cached"] and len(counted) == 1
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "key": {**record["key"], "host": "elsewhere"}}))
    monkeypatch.setattr(throughput, "_MEMO", {})
    assert not throughput.matmul_peak("cpu")["cached"] and len(counted) == 2


def test_real_measurement_is_a_plausible_rate():
    m = throughput.measure_matmul_peak("cpu", size=128, repeats=2)
    assert 1e6 < m["flops_per_s"] < 1e15 and m["flops_per_s"] >= m["median_flops_per_s"]


def test_flops_per_step_from_the_trace_match_torch_flop_counter():
    """The one op trace's count against an independent count (torch's FlopCounterMode on real weights)."""
    model = build_model(SPEC).eval()
    inputs = (torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 5, SPEC.text_dim), None, None)
    with attention_backend("math"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    ours = throughput.training_flops_per_step(SPEC, (4, 8, 8), 5, SPEC.text_dim, images_per_step=7)
    assert ours == 3 * 7 * counter.get_total_flops() > 0


def _data(n=32):
    return toy_flow(n, text_dim=SPEC.text_dim)


def test_a_run_records_flops_per_second_and_its_ratio_to_the_peak(counted):
    data, prompts = _data()
    r = train(SPEC, data, prompts, "4steps", LoopConfig.quality_preset(batch_size=8, warmup_steps=1),
              progress=False)
    t = r.throughput
    flops = throughput.training_flops_per_step(SPEC, (4, 8, 8), 4, SPEC.text_dim, images_per_step=8)
    assert t["train_flops_per_step"] == flops
    assert 0 < t["train_step_seconds"] * 4 <= r.seconds  # the steps alone, measured, within the run's wall time
    assert t["train_flops_per_s"] == pytest.approx(flops / t["train_step_seconds"])
    assert t["matmul_peak_flops_per_s"] == 1e9 and len(counted) == 1
    assert t["roofline_ratio"] == pytest.approx(t["train_flops_per_s"] / 1e9)


def test_no_steps_no_throughput_fields(counted):
    data, prompts = _data()
    r = train(SPEC, data, prompts, "0steps", LoopConfig.quality_preset(batch_size=8, warmup_steps=1),
              progress=False)
    assert r.throughput == {} and counted == []


def test_fast_step_agrees_with_the_per_tensor_step():
    """The loop's fused AdamW + multi-tensor clipping and EMA train the same weights as torch's per-tensor loops,
    up to float rounding (with a learning rate large enough that a wrong update would show)."""
    from dataclasses import replace

    from training.distributed import DistContext
    from training.loop import fit

    data, prompts = _data()
    config = LoopConfig(steps=6, batch_size=8, warmup_steps=1, schedule="constant", lr=3e-3, weight_decay=0.01)
    runs = [fit(SPEC, data, prompts, replace(config, fast_step=fast), DistContext(), stream="crn", progress=False)
            for fast in (True, False)]
    moved = 0
    for (name, a), b, init in zip(runs[0].raw.state_dict().items(), runs[1].raw.state_dict().values(),
                                  _initial_weights(config.seed).values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        moved += int(not torch.equal(a, init))
    assert moved > 10  # the weights did train
    for a, b in zip(runs[0].ema.state_dict().values(), runs[1].ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert runs[0].metrics["val_loss"] == pytest.approx(runs[1].metrics["val_loss"], rel=1e-4)


def _initial_weights(seed: int) -> dict:
    return build_model(SPEC, seed=seed).state_dict()  # what the loop starts from (paired, search_space/init.py)


def test_fast_ema_and_clipping_equal_the_loops():
    from training.optim import clip_gradients, ema_update

    torch.manual_seed(0)
    model, ema_a = build_model(SPEC), build_model(SPEC)
    ema_b = build_model(SPEC)
    ema_b.load_state_dict(ema_a.state_dict())
    ema_update(ema_a, model, 0.9, fast=True)
    ema_update(ema_b, model, 0.9, fast=False)
    for a, b in zip(ema_a.parameters(), ema_b.parameters()):
        assert torch.equal(a, b)
    grads = [torch.randn(5, 3) * 10, torch.randn(7) * 10]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    twins = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, q, g in zip(params, twins, grads):
        p.grad, q.grad = g.clone(), g.clone()
    norm_a, norm_b = clip_gradients(params, 1.0, fast=True), clip_gradients(twins, 1.0, fast=False)
    torch.testing.assert_close(norm_a, norm_b)
    assert norm_a > 1
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.grad, q.grad)


def test_a_peak_measured_under_more_load_is_measured_again_keeping_the_best(counted, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path))
    monkeypatch.setattr(throughput, "_load", lambda: 5.0)
    throughput.matmul_peak("cpu")
    monkeypatch.setattr(throughput, "_MEMO", {})
    monkeypatch.setattr(throughput, "_load", lambda: 4.5)  # within the margin: the cached number serves
    assert throughput.matmul_peak("cpu")["cached"] and len(counted) == 1
    monkeypatch.setattr(throughput, "_MEMO", {})
    monkeypatch.setattr(throughput, "_load", lambda: 1.0)  # quieter now: measured again
    again = throughput.matmul_peak("cpu")
    assert not again["cached"] and len(counted) == 2 and again["load_average"] == 1.0
    monkeypatch.setattr(throughput, "_MEMO", {})
    assert throughput.matmul_peak("cpu")["cached"] and len(counted) == 2


def test_the_flop_count_is_cached_on_disk_by_spec_and_shape(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETDIFF_CACHE", str(tmp_path))
    walks = []
    real = throughput._walk_macs
    monkeypatch.setattr(throughput, "_walk_macs", lambda *a: walks.append(a) or real(*a))
    throughput.forward_macs.cache_clear()
    first = throughput.training_flops_per_step(SPEC, (4, 8, 8), 5, SPEC.text_dim, 2)
    throughput.forward_macs.cache_clear()  # a new process: the file serves it
    assert throughput.training_flops_per_step(SPEC, (4, 8, 8), 5, SPEC.text_dim, 2) == first and len(walks) == 1
    throughput.training_flops_per_step(SPEC, (4, 16, 16), 5, SPEC.text_dim, 2)  # another shape: walked
    assert len(walks) == 2 and len(list((tmp_path / "throughput").glob("macs-*.json"))) == 2
    throughput.forward_macs.cache_clear()


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12),
                                        ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA GeForce RTX 4090", None)])
def test_published_bf16_peaks_by_device_name(name, peak):
    assert throughput.published_peak(name) == peak
