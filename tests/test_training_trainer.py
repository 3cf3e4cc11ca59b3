"""Training loop: determinism on CPU, divergence reporting, metric callback, checkpoints with the spec."""
import json

import torch

from search_space import PRESETS, UNetSpec
from training.data import FlowData
from training.text import PromptEmbeddings
from training.trainer import TrainConfig, sample, save_checkpoint, train

SPEC = PRESETS["tiny-debug"]


def _data(n=32, nan=False) -> tuple[FlowData, PromptEmbeddings]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, SPEC.latent_channels, 8, 8, generator=g), torch.arange(n) % 2
    if nan:
        x[:] = float("nan")
    data = FlowData(name="toy", kind="latent", class_names=["a", "b"], resolution=8, channels=x.shape[1], size=8,
                    val_x=x[:8], val_y=y[:8], ref_x=x, ref_y=y, train_x=x, train_y=y)
    prompts = PromptEmbeddings(tokens=torch.randn(3, 4, SPEC.text_dim, generator=g),
                               pooled=torch.randn(3, SPEC.text_dim, generator=g), encoder="toy")
    return data, prompts


CONFIG = TrainConfig(batch_size=8)


def test_cpu_training_is_deterministic_per_seed():
    data, prompts = _data()
    a = train(SPEC, data, prompts, "4steps", seed=3, config=CONFIG, progress=False)
    b = train(SPEC, data, prompts, "4steps", seed=3, config=CONFIG, progress=False)
    c = train(SPEC, data, prompts, "4steps", seed=4, config=CONFIG, progress=False)
    assert a.val_loss == b.val_loss
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert a.val_loss != c.val_loss
    assert a.steps == 4 and a.images == 32


def test_training_lowers_the_validation_loss():
    data, prompts = _data()
    before = train(SPEC, data, prompts, "0steps", seed=0, config=CONFIG, progress=False)
    after = train(SPEC, data, prompts, "30steps", seed=0, config=TrainConfig(batch_size=8, lr=3e-3),
                  progress=False)
    assert after.val_loss < before.val_loss


def test_nan_loss_reports_divergence_instead_of_raising():
    data, prompts = _data(nan=True)
    result = train(SPEC, data, prompts, "5steps", seed=0, config=CONFIG, progress=False)
    assert result.status == "diverged at step 0"
    assert result.val_loss is None


def test_callback_sees_reports_and_can_stop_the_run():
    data, prompts = _data()
    seen = []

    def callback(report):
        seen.append(report)
        return report["step"] >= 4

    result = train(SPEC, data, prompts, "10steps", seed=0, config=CONFIG, callback=callback, progress=False)
    assert [r["step"] for r in seen] == [2, 4]
    assert all({"step", "images", "seconds", "train_loss", "val_loss"} <= set(r) for r in seen)
    assert result.status == "stopped by callback at step 4" and result.steps == 4


def test_seconds_budget_stops_on_time():
    data, prompts = _data()
    result = train(SPEC, data, prompts, "1s", seed=0, config=CONFIG, progress=False)
    # The upper bound is loose: one step may take seconds when the CPUs are shared.
    assert result.status == "ok" and 1.0 <= result.seconds < 30.0 and result.steps >= 1


def test_checkpoint_embeds_the_spec(tmp_path):
    data, prompts = _data()
    result = train(SPEC, data, prompts, "1steps", seed=0, config=CONFIG, progress=False)
    save_checkpoint(tmp_path / "ckpt.pt", result.model, SPEC, {"steps": result.steps})
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert UNetSpec.from_dict(json.loads(ckpt["spec"])) == SPEC and ckpt["spec_id"] == SPEC.spec_id
    assert ckpt["state_dict"].keys() == result.model.state_dict().keys()


def test_sampling_is_seeded_and_shaped():
    data, prompts = _data()
    model = train(SPEC, data, prompts, "2steps", seed=0, config=CONFIG, progress=False).model
    labels = torch.tensor([0, 1, 0])
    a = sample(model, SPEC, data, prompts, labels, seed=1, steps=2, cfg_scale=2.0, batch_size=2, progress=False)
    b = sample(model, SPEC, data, prompts, labels, seed=1, steps=2, cfg_scale=2.0, progress=False)
    assert a.shape == (3, SPEC.latent_channels, 8, 8) and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5)  # batching does not change samples
