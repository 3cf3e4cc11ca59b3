"""The quality run (training/quality_run.py) on the one loop: determinism on CPU, common random numbers, the
budget schedule, divergence reporting, metric callback, checkpoints with the spec, the quality preset."""
from dataclasses import fields, replace

import torch

import pytest

from search_space import PRESETS, UNetSpec, apply_overrides
from training.data import FlowData
from training.text import PromptEmbeddings
from training.budget import Budget, BudgetError
from training.conditioning import Conditioner
from training.config import LoopConfig
from training.quality_run import resolve_budget, train
from training.sample import sample_classes
from training.schedule import lr_factor
from training.streams import TrainStream
from training.validation import validation_loss, validation_timesteps
from tests.toys import toy_flow

SPEC = PRESETS["tiny-debug"]


def _data(n=32, nan=False) -> tuple[FlowData, PromptEmbeddings]:
    return toy_flow(n, nan=nan, text_dim=SPEC.text_dim)


CONFIG = LoopConfig.quality_preset(batch_size=8, warmup_steps=1)  # tiny budgets: the warm-up must be shorter


def _seed(seed: int) -> LoopConfig:
    return replace(CONFIG, seed=seed)


def test_the_quality_preset_is_the_quality_runs_configuration():
    """lr 3e-3 with linear decay to exactly zero; everything else the loop's defaults (one place for each)."""
    preset, full = LoopConfig.quality_preset(seed=5), LoopConfig()
    assert (preset.lr, preset.schedule, preset.min_lr_ratio, preset.seed) == (3e-3, "linear", 0.0, 5)
    assert (full.lr, full.schedule, full.min_lr_ratio) == (1e-3, "cosine", 0.1)
    same = {f.name for f in fields(LoopConfig)} - {"lr", "schedule", "min_lr_ratio", "seed"}
    assert all(getattr(preset, name) == getattr(full, name) for name in same)
    assert (preset.batch_size, preset.warmup_steps, preset.grad_clip, preset.ema_decay, preset.cond_dropout,
            preset.weight_decay, preset.sample_steps, preset.cfg_scale) == (32, 10, 1.0, 0.999, 0.1, 0.0, 8, 2.0)


def test_cpu_training_is_deterministic_per_seed():
    data, prompts = _data()
    a = train(SPEC, data, prompts, "4steps", _seed(3), progress=False)
    b = train(SPEC, data, prompts, "4steps", _seed(3), progress=False)
    c = train(SPEC, data, prompts, "4steps", _seed(4), progress=False)
    assert a.val_loss == b.val_loss
    for (ka, va), (_, vb) in zip(a.ema.state_dict().items(), b.ema.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert a.val_loss != c.val_loss
    assert a.step == 4 and a.images == 32


def test_training_lowers_the_validation_loss():
    data, prompts = _data()
    before = train(SPEC, data, prompts, "0steps", _seed(0), progress=False)
    after = train(SPEC, data, prompts, "30steps", replace(CONFIG, lr=3e-3, warmup_steps=5), progress=False)
    assert after.val_loss < before.val_loss


def test_nan_loss_reports_divergence_instead_of_raising():
    data, prompts = _data(nan=True)
    result = train(SPEC, data, prompts, "5steps", _seed(0), progress=False)
    assert result.status == "diverged at step 0"
    assert result.val_loss is None


def test_callback_sees_reports_and_can_stop_the_run():
    data, prompts = _data()
    seen = []

    def callback(report):
        seen.append(report)
        return report["step"] >= 4

    result = train(SPEC, data, prompts, "10steps", _seed(0), callback=callback, progress=False)
    assert [r["step"] for r in seen] == [2, 4]
    assert all({"step", "images", "seconds", "train_loss", "val_loss"} <= set(r) for r in seen)
    assert result.status == "stopped by callback at step 4" and result.step == 4


def test_seconds_budget_stops_on_time():
    data, prompts = _data()
    result = train(SPEC, data, prompts, "1s", _seed(0), progress=False)
    # The upper bound is loose: one step may take seconds when the CPUs are shared.
    assert result.status == "ok" and 1.0 <= result.seconds < 30.0 and result.step >= 1


def test_checkpoint_embeds_the_spec(tmp_path):
    """A quality run's weights go into the one checkpoint format: spec inside, raw and EMA weights."""
    from training.checkpoint import load_trained, read_checkpoint, run_meta, save_checkpoint

    data, prompts = _data()
    result = train(SPEC, data, prompts, "2steps", _seed(0), progress=False)
    save_checkpoint(tmp_path / "checkpoints", result.step, result.raw, result.ema, SPEC,
                    run_meta(data, prompts, cfg_scale=1.0, sample_steps=2), None)
    manifest, tensors = read_checkpoint(tmp_path)
    assert UNetSpec.from_dict(manifest["spec"]) == SPEC and manifest["spec_id"] == SPEC.spec_id
    assert not manifest["resumable"] and list(manifest["files"]) == ["model.safetensors"]
    model, spec, _ = load_trained(tmp_path)
    assert spec == SPEC
    for (name, a), b in zip(model.state_dict().items(), result.ema.state_dict().values()):
        assert torch.equal(a, b), name
    raw, _, _ = load_trained(tmp_path, use_ema=False)
    assert any(not torch.equal(a, b) for a, b in zip(raw.state_dict().values(), model.state_dict().values()))


def test_sampling_is_seeded_and_shaped():
    data, prompts = _data()
    model = train(SPEC, data, prompts, "2steps", _seed(0), progress=False).ema
    labels = torch.tensor([0, 1, 0])
    a = sample_classes(model, SPEC, data, prompts, labels, seed=1, steps=2, cfg_scale=2.0, batch_size=2,
                       progress=False)
    b = sample_classes(model, SPEC, data, prompts, labels, seed=1, steps=2, cfg_scale=2.0, progress=False)
    assert a.shape == (3, SPEC.latent_channels, 8, 8) and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5)  # batching does not change samples


def test_common_random_numbers_across_specs():
    """For one seed every candidate sees the same batches, dropout, noise and timesteps; the model never draws."""
    data, prompts = _data()
    other = apply_overrides(SPEC, ["ffn_ratio=2.0", "attention=mhsa"])
    a = TrainStream(data, 8, seed=3, cond_dropout=0.5)
    b = TrainStream(data, 8, seed=3, cond_dropout=0.5)
    for _ in range(6):  # past one epoch (32 / 8 = 4 batches): the reshuffle is shared too
        for x, y in zip(next(a), next(b)):
            assert torch.equal(x, y)
    assert a.digest == b.digest
    runs = [train(s, data, prompts, "3steps", _seed(seed), progress=False)
            for s, seed in ((SPEC, 3), (other, 3), (SPEC, 4))]
    assert runs[0].stream_digest == runs[1].stream_digest != runs[2].stream_digest


def test_schedule_warms_up_then_reaches_zero_at_the_budget_end():
    total, warmup = 40, 10
    factors = [lr_factor(s, total, warmup) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1) and factors[warmup] == 1.0 and factors[total] == 0.0
    assert all(a < b for a, b in zip(factors[:warmup - 1], factors[1:warmup]))
    assert all(a > b for a, b in zip(factors[warmup:], factors[warmup + 1:]))
    assert factors[total - 1] > 0  # the last update still learns; the rate is zero exactly at the end
    data, prompts = _data()
    lrs = []
    train(SPEC, data, prompts, "5steps", _seed(0), progress=False,
          callback=lambda r: lrs.append(r["lr"]))
    assert lrs[-1] == pytest.approx(CONFIG.lr * lr_factor(4, 5, 1)) and lrs == sorted(lrs, reverse=True)


def test_budgets_resolve_to_steps_and_bad_ones_say_why():
    data, prompts = _data()  # 32 training items, batch 8: 4 steps per epoch
    config = replace(CONFIG, warmup_steps=2)
    assert resolve_budget("3epochs", SPEC, data, prompts, config).steps == 12
    flops = resolve_budget("2e10flops", SPEC, data, prompts, config).steps
    more = resolve_budget("4e10flops", SPEC, data, prompts, config).steps
    assert flops > 2 and more in (2 * flops, 2 * flops + 1)
    assert resolve_budget("60s", SPEC, data, prompts, config) == Budget(seconds=60.0)
    with pytest.raises(BudgetError, match="warm-up; give at least 3steps"):
        resolve_budget("2steps", SPEC, data, prompts, config)
    with pytest.raises(BudgetError, match="warm-up"):
        resolve_budget("0.25epochs", SPEC, data, prompts, config)
    for bad, why in (("-5steps", "negative"), ("soon", "not understood"), ("0epochs", "empty"),
                     ("2.5steps", "whole")):
        with pytest.raises(BudgetError, match=why):
            Budget.parse(bad)
    assert resolve_budget("0steps", SPEC, data, prompts, config).steps == 0  # the untrained model is allowed


def test_validation_loss_is_deterministic_on_a_stratified_grid():
    t = validation_timesteps(16, grid=8)
    assert torch.equal(t[:8], t[8:]) and torch.all(t[1:8] > t[:7])
    assert t[:8].mean().item() == pytest.approx(0.5, abs=1e-6)  # symmetric logit-normal quantiles
    data, prompts = _data()
    model = train(SPEC, data, prompts, "2steps", _seed(0), progress=False).ema
    cond = Conditioner(SPEC, prompts, data.resolution, torch.device("cpu"))
    torch.manual_seed(123)  # the global generator must not matter
    a = validation_loss(model, cond, data, torch.device("cpu"))
    torch.manual_seed(456)
    assert validation_loss(model, cond, data, torch.device("cpu")) == a
