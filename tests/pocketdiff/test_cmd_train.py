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


def test_every_loop_config_field_is_a_train_flag_with_its_default(capsys):
    """The flags of `train unet` are LoopConfig's fields: same names, defaults and types, none copied by hand."""
    from dataclasses import fields

    from pocketdiff.cli import build_parser
    from pocketdiff.cmd_train import config_from_flags
    from training.config import LoopConfig

    parser = build_parser()
    assert config_from_flags(parser.parse_args(["train", "unet", "tiny-debug", "--out", "x"]), LoopConfig) == LoopConfig()
    changed = parser.parse_args(["train", "unet", "tiny-debug", "--out", "x", "--weight-decay", "0.01",
                                 "--min-lr-ratio", "0.05", "--grad-clip", "0.5", "--cond-dropout", "0.2",
                                 "--no-fast-step", "--steps", "7", "--schedule", "linear", "--autocast", "off"])
    config = config_from_flags(changed, LoopConfig)
    assert (config.weight_decay, config.min_lr_ratio, config.grad_clip, config.cond_dropout, config.fast_step,
            config.steps, config.schedule, config.autocast) == (0.01, 0.05, 0.5, 0.2, False, 7, "linear", "off")
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "unet", "--help"])
    help_text = capsys.readouterr().out
    for f in fields(LoopConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "unet", "tiny-debug", "--out", "x", "--schedule", "step"])


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
    from training.checkpoint import load_trained

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


@pytest.fixture()
def quality_run(tmp_path, one_thread):
    """A quality run's checkpoint, written the way `eval quality --out` writes it (evaluators/quality.py)."""
    from search_space import load_spec
    from training.config import LoopConfig
    from training.data import load_data
    from training.full_run import prepare_spec
    from training.quality_run import save_run_checkpoint, train
    from training.text import class_prompt_embeddings

    data = load_data("mnist5k")
    prompts = class_prompt_embeddings(data.class_names)
    spec, _ = prepare_spec(load_spec("tiny-debug"), data, prompts)
    result = train(spec, data, prompts, "3steps", LoopConfig.quality_preset(batch_size=8, warmup_steps=1),
                   progress=False)
    out = tmp_path / "quality"
    save_run_checkpoint(out, result, spec, data, prompts, 2.0, 8, {"budget": "3steps"})
    return out


def test_a_quality_runs_checkpoint_feeds_every_consumer(quality_run, tmp_path, capsys):
    """One checkpoint format: a quality run's checkpoint is a --teacher, an --init, an export source and a
    sampler input, like a full run's."""
    import argparse
    from pocketdiff.cmd_export import checkpoint_source
    from training.checkpoint import load_trained
    from training.teachers import SpecTeacher, load_teacher

    model, spec, manifest = load_trained(quality_run)
    assert manifest["meta"]["kind"] == "quality" and not manifest["resumable"]
    # sample
    out = tmp_path / "s.png"
    assert main(["sample", str(quality_run), "--prompt", "a photo of a handwritten digit two", "-n", "2",
                 "-o", str(out)]) == 0 and out.is_file()
    # export
    src = checkpoint_source(argparse.Namespace(checkpoint=str(quality_run), spec=None, torchvision=None, timm=None,
                                               overrides=[], latent=16, batch=1))
    assert all(torch.equal(a, b) for a, b in zip(src.module.state_dict().values(), model.state_dict().values()))
    # teacher
    teacher = load_teacher(quality_run)
    assert isinstance(teacher, SpecTeacher) and teacher.spec == spec
    run = tmp_path / "kd"
    assert main(["train", "tiny-debug", "--teacher", str(quality_run), "--out", str(run), "--steps", "1",
                 "--batch-size", "4", "--sample-steps", "1", "-q"]) == 0
    assert json.loads((run / "run.json").read_text())["objective"]["teacher"].startswith("checkpoint:")
    # init: with a vanishing learning rate the student stays at the quality run's weights
    run = tmp_path / "init"
    assert main(["train", "tiny-debug", "--init", str(quality_run), "--out", str(run), "--steps", "1", "--lr",
                 "1e-12", "--batch-size", "4", "--sample-steps", "1", "-q"]) == 0
    started, _, _ = load_trained(run)
    for (name, a), b in zip(started.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    # a weights-only checkpoint cannot be resumed, and says so
    assert main(["train", "tiny-debug", "--out", str(tmp_path / "r"), "--resume", str(quality_run), "--steps",
                 "2", "-q"]) == 2
    assert "weights only" in capsys.readouterr().err


def test_bad_distillation_input_is_one_line_and_touches_nothing(quality_run, tmp_path, capsys):
    run = tmp_path / "sd"
    q = str(quality_run)
    assert main(["train", "tiny-debug", "--step-distill", "3", "--teacher", q, "--init", q, "--out", str(run)]) == 2
    assert "the sampler supports 2, 4, 8 steps" in capsys.readouterr().err and not run.exists()
    assert main(["train", "tiny-debug", "--step-distill", "4", "--teacher-substeps", "0", "--teacher", q, "--init",
                 q, "--out", str(run)]) == 2
    assert "teacher_substeps=0 must be >= 1" in capsys.readouterr().err and not run.exists()
    assert main(["train", "tiny-debug", "--teacher", str(tmp_path / "no-such-teacher"), "--out", str(run)]) == 2
    assert "no-such-teacher" in capsys.readouterr().err and not run.exists()
    before = {p: p.read_bytes() for p in quality_run.rglob("*") if p.is_file()}
    assert main(["train", "tiny-debug", "--kd", "fixed", "--kd-share", "2", "--teacher", q, "--out", str(run)]) == 2
    assert "share" in capsys.readouterr().err and not run.exists()
    assert before == {p: p.read_bytes() for p in quality_run.rglob("*") if p.is_file()}


def test_every_step_distill_field_is_a_flag_with_its_default():
    """Step distillation's settings are StepDistillConfig's fields: --step-distill N sets sampler_steps and every
    other field is a flag of the same name and default."""
    from pocketdiff.cli import build_parser
    from pocketdiff.cmd_train import config_from_flags
    from training.config import StepDistillConfig

    parser = build_parser()
    plain = parser.parse_args(["train", "unet", "tiny-debug", "--out", "x", "--step-distill", "8"])
    assert config_from_flags(plain, StepDistillConfig, sampler_steps=8) == StepDistillConfig(sampler_steps=8)
    changed = parser.parse_args(["train", "unet", "tiny-debug", "--out", "x", "--step-distill", "4",
                                 "--rollout-share", "0.25", "--task-weight", "0.5", "--disc-lr", "2e-4",
                                 "--adv-weight", "0", "--adv-start", "0.2"])
    config = config_from_flags(changed, StepDistillConfig, sampler_steps=4)
    assert (config.rollout_share, config.task_weight, config.disc_lr, config.adv_weight, config.adv_start) \
        == (0.25, 0.5, 2e-4, 0.0, 0.2)


def test_step_distill_flags_reach_the_objective(quality_run, tmp_path):
    run = tmp_path / "sd"
    q = str(quality_run)
    assert main(["train", "tiny-debug", "--step-distill", "2", "--teacher-substeps", "1", "--teacher-cfg", "1.5",
                 "--teacher", q, "--init", q, "--out", str(run), "--steps", "1", "--batch-size", "4", "-q"]) == 0
    objective = json.loads((run / "run.json").read_text())["objective"]
    assert (objective["kind"], objective["sampler_steps"], objective["teacher_substeps"],
            objective["teacher_cfg"]) == ("step_distill", 2, 1, 1.5)
