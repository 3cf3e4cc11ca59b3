"""`pocketdiff train` / `pocketdiff sample` / `pocketdiff train decoder` / `export coreml --checkpoint`."""
import json

import pytest
import torch
from PIL import Image

from pocketdiff.cli import main


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def trained(tmp_path, one_thread):
    run = tmp_path / "run"
    assert main(["train", "unet", "tiny-debug", "--out", str(run), "--steps", "2", "--batch-size", "4",
                 "--checkpoint-every", "2", "--sample-steps", "1", "-q"]) == 0
    return run


def test_sample_writes_a_grid(trained, tmp_path, capsys):
    out = tmp_path / "img" / "digits.png"
    assert main(["sample", str(trained), "--prompt", "a photo of a handwritten digit seven", "--steps", "4",
                 "-n", "4", "-o", str(out)]) == 0
    img = Image.open(out)
    assert img.size == (4 * 32 + 5 * 2, 32 + 2 * 2)  # save_image grid: 4 digits of 32 px, 2 px padding
    assert "4 steps" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "missing"), "--prompt", "x", "-o", str(out)]) == 2


def test_teacher_mismatch_is_a_usage_error_before_training(tmp_path, one_thread, capsys):
    from diffusers import SD3Transformer2DModel
    SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=1,
                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=384,
                          caption_projection_dim=16, pooled_projection_dim=384,
                          pos_embed_max_size=16).save_pretrained(tmp_path / "sd3")
    run = tmp_path / "run"
    assert main(["train", "tiny-debug", "--out", str(run), "--steps", "2", "--teacher", str(tmp_path / "sd3")]) == 2
    assert "latent channels: teacher 16, student 4" in capsys.readouterr().err
    assert not run.exists()


def test_export_checkpoint_source_carries_the_trained_weights(trained):
    import argparse
    from pocketdiff.cmd_export import checkpoint_source
    from training.full import load_trained

    args = argparse.Namespace(checkpoint=str(trained), spec=None, overrides=[], torchvision=None, timm=None, latent=16,
                              batch=1)
    src = checkpoint_source(args)
    model, spec, manifest = load_trained(trained)
    assert src.spec == spec and src.model_id.startswith(spec.spec_id + "-w")
    for (name, a), b in zip(src.module.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert src.module.conv_out.weight.abs().sum() > 0  # trained, not the zero-initialised output conv


@pytest.mark.slow
def test_export_checkpoint_converts(trained, tmp_path):
    assert main(["export", "coreml", "--checkpoint", str(trained), "--latent", "16", "-o",
                 str(tmp_path / "m.mlpackage")]) == 0
    assert (tmp_path / "m.mlpackage" / "Manifest.json").is_file()


def test_train_decoder_cli_against_a_frozen_diffusers_vae(tmp_path, one_thread, capsys):
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
                  norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2).save_pretrained(tmp_path / "vae")
    out = tmp_path / "dec"
    assert main(["train", "decoder", "tiny-debug-decoder", "--encoder", f"vae:{tmp_path / 'vae'}",
                 "--budget", "4steps", "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["steps"] == 4 and record["baseline"]["psnr"] > 0
    assert record["psnr_vs_baseline"] == pytest.approx(record["metrics"]["psnr"] - record["baseline"]["psnr"])
    assert (out / "decoder.safetensors").is_file() and (out / "reconstructions.png").is_file()
    assert "baseline" in capsys.readouterr().out
    assert main(["train", "decoder", "tiny-debug", "--out", str(out)]) == 2  # a UNet spec is refused
