"""Tiny-decoder training with a frozen encoder, and the decoder quality evaluator (docs/paper.md section 2)."""
import json

import pytest
import torch

from evaluators.decoder_quality import evaluate_decoder_quality
from search_space import PRESETS
from training.decoder import DecoderDataError, load_encoder, load_patches, psnr, split_photos, train_decoder


def test_held_out_crops_never_overlap_training_crops():
    # pixels carry their own column index, so every crop tells where it came from
    photo = torch.arange(200.0).expand(3, 96, 200).clone()
    train, held = split_photos([photo], 32, torch.Generator().manual_seed(0))
    assert train[:, 0].max() < 150 <= held[:, 0].min()  # split at 3/4 of the width
    data = load_patches("sample-images", patch=32)
    assert data.train.shape[1:] == (3, 32, 32) and data.held_out.shape[1:] == (3, 32, 32)
    assert data.train.min() >= -1 and data.train.max() <= 1


def test_psnr():
    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x, x) == float("inf")
    assert psnr(x + 0.2, x) == pytest.approx(20.0)  # error 0.1 on [0, 1] -> 20 dB


def test_decoder_learns_and_evaluator_records(tmp_path):
    spec = PRESETS["tiny-debug-decoder"]
    untrained = evaluate_decoder_quality(spec, budget="0steps", seed=0, ae_steps=30)
    trained = evaluate_decoder_quality(spec, budget="60steps", seed=0, out_dir=tmp_path, ae_steps=30)
    assert trained["psnr"] > untrained["psnr"] + 1.0, (untrained["psnr"], trained["psnr"])
    assert trained["train_steps"] == 60
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["spec_id"] == spec.spec_id and (tmp_path / "reconstructions.png").is_file()
    assert record["baseline"]["psnr"] > 0


def test_mismatched_encoder_and_missing_vae_are_refused(tmp_path):
    data = load_patches("sample-images", patch=32)
    enc = load_encoder("tiny-ae", data, latent_channels=4, stages=2, ae_steps=1)
    with pytest.raises(DecoderDataError, match="latent_channels=16 but the encoder"):
        train_decoder(PRESETS["snapgen-decoder"], data, enc, "1steps")
    with pytest.raises(DecoderDataError, match="encoder VAE folder .*nope does not exist"):
        load_encoder(f"vae:{tmp_path}/nope", data, 16)
    with pytest.raises(DecoderDataError, match="does not exist"):
        load_patches(f"folder:{tmp_path}/nope")


def test_a_decoder_that_cannot_fit_is_refused_before_it_is_built(tmp_path, monkeypatch):
    """The training step's tensors are estimated on the meta device against the memory free here (patched small):
    one line naming the decoder, and no weights built."""
    import search_space.memory as memory
    import training.decoder as decoder

    data = load_patches("sample-images", patch=32)
    enc = load_encoder("tiny-ae", data, latent_channels=4, stages=2, ae_steps=1)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 10_000)
    built, real = [], decoder.build_model
    monkeypatch.setattr(decoder, "build_model", lambda spec, device=None, **k: built.append(device) or
                        real(spec, device, **k))
    with pytest.raises(DecoderDataError, match=r"training decoder \w+ on 32x32 crops at batch size 16 needs at "
                                               r"least .* but cpu has 0.0 GiB free; lower the decoder's widths"):
        train_decoder(PRESETS["tiny-debug-decoder"], data, enc, "1steps")
    assert built == ["meta"]
