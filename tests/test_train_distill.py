"""training/distill.py + training/step_distill.py: teachers (ours, diffusers SD3 / UNet), KD losses, scaling."""
import pytest
import torch

from search_space import load_spec
from training.data import load_data
from training.distill import (KDObjective, SpecTeacher, TeacherError, check_teacher, load_teacher, task_weight,
                              timestep_aware)
from training.full import FullConfig, prepare_spec, train_full
from training.step_distill import StepDistillConfig, StepDistillObjective
from training.text import class_prompt_embeddings


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist5k")


@pytest.fixture()
def setup(mnist):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    prompts = class_prompt_embeddings(mnist.class_names)
    spec, _ = prepare_spec(load_spec("tiny-debug"), mnist, prompts)
    yield spec, mnist, prompts
    torch.set_num_threads(threads)


def _sd3(path, in_channels=4, joint=384, pooled=384):
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=in_channels, out_channels=in_channels,
                          num_layers=2, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=joint,
                          caption_projection_dim=16, pooled_projection_dim=pooled,
                          pos_embed_max_size=16).save_pretrained(path)
    return path


def _unet(path):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=384,
                         norm_num_groups=8, attention_head_dim=4).save_pretrained(path)
    return path


def _config(**kw):
    return FullConfig(**{**dict(steps=2, batch_size=4, checkpoint_every=2, log_every=1, sample_steps=1), **kw})


@pytest.mark.parametrize("kind", ["sd3", "unet"])
def test_diffusers_teacher_kd_trains_student_and_projections(setup, tmp_path, kind):
    spec, data, prompts = setup
    folder = _sd3(tmp_path / "t") if kind == "sd3" else _unet(tmp_path / "t")
    teacher = load_teacher(folder)
    check_teacher(teacher, spec, prompts, data.size)
    obj = KDObjective(teacher, prompts, data.resolution, data.size, "timestep")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = train_full(spec, data, prompts, tmp_path / "run", _config(), objective=obj, progress=False)
    assert result.status == "ok"
    row = result.history[-1]
    assert row["loss_kd_out"] > 0 and row["loss_kd_feat"] > 0
    assert len(obj.projections) == len(teacher.taps) and obj.pairs
    # the projections are trained (their weights are in the checkpoint's optimiser state and moved) ...
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.projections.parameters())
    # ... the teacher is frozen
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    if kind == "sd3":  # image tokens came back as maps on the 8x8 patch grid
        assert teacher._features[teacher.taps[0]].shape[-2:] == (8, 8)


def test_mismatched_teachers_are_refused_before_training(setup, tmp_path):
    spec, data, prompts = setup
    with pytest.raises(TeacherError, match="latent channels: teacher 16, student 4"):
        check_teacher(load_teacher(_sd3(tmp_path / "a", in_channels=16)), spec, prompts, data.size)
    with pytest.raises(TeacherError, match="text token width: teacher 64"):
        check_teacher(load_teacher(_sd3(tmp_path / "b", joint=64)), spec, prompts, data.size)
    with pytest.raises(TeacherError, match="neither a diffusers model folder"):
        load_teacher(tmp_path / "nothing")
    unet = _unet(tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "EulerDiscreteScheduler"}')
    with pytest.raises(TeacherError, match="epsilon/v-prediction"):
        load_teacher(unet)


def test_timestep_aware_scaling_matches_the_formula():
    t = torch.tensor([0.5, 0.02, 0.97])
    a = task_weight(t)
    assert a[0] == pytest.approx(1.0) and a[1] < 0.05 and a[2] < 0.2
    task = torch.tensor([2.0, 3.0, 1.0], requires_grad=True)
    kd = torch.tensor([1.0, 6.0, 4.0], requires_grad=True)
    s = timestep_aware(task, kd, t)
    s.backward()
    # the value is E[a L_task + (1 - a) L_task] (the KD term is rescaled to the task loss's magnitude) ...
    assert float(s) == pytest.approx(float(task.mean()))
    # ... while the gradients follow a_t: dS/dL_task = a / B, dS/dL_kd = (1 - a) |L_task| / |L_kd| / B
    assert torch.allclose(task.grad, a / 3)
    assert torch.allclose(kd.grad, (1 - a) * torch.tensor([2.0, 3.0, 1.0]) / kd.detach() / 3)


def test_spec_teacher_and_fixed_weighting_and_step_distillation(setup, tmp_path):
    spec, data, prompts = setup
    base = tmp_path / "base"
    assert train_full(spec, data, prompts, base, _config(), progress=False).status == "ok"
    teacher = load_teacher(base)
    assert isinstance(teacher, SpecTeacher) and teacher.description.startswith("checkpoint:")
    fixed = KDObjective(teacher, prompts, data.resolution, data.size, "fixed")
    r = train_full(spec, data, prompts, tmp_path / "fixed", _config(), objective=fixed, progress=False)
    row = r.history[-1]
    assert row["loss"] == pytest.approx(row["loss_task"] + row["loss_kd_out"] + row["loss_kd_feat"], rel=1e-5)

    # few-step target: with one teacher sub-step it is the teacher's own velocity
    one = StepDistillObjective(load_teacher(base), prompts, data.resolution, data.size,
                               StepDistillConfig(sampler_steps=4, teacher_substeps=1))
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([1.0, 0.5])
    tokens, pooled, ids = prompts.tokens[:2], prompts.pooled[:2], None
    v, _ = one.teacher(x, t, tokens, pooled, ids)
    assert torch.allclose(one.few_step_target(x, t, tokens, pooled, ids), v, atol=1e-5)
    assert set(one.sample_t(64, torch.Generator().manual_seed(0)).tolist()) == {1.0, 0.75, 0.5, 0.25}

    sd = StepDistillObjective(load_teacher(base), prompts, data.resolution, data.size,
                              StepDistillConfig(sampler_steps=4, teacher_substeps=2))
    run = tmp_path / "sd"
    r = train_full(spec, data, prompts, run, _config(sample_steps=4), objective=sd, init=base, progress=False)
    assert r.status == "ok"
    assert "loss_gen" in r.history[-1] and "loss_disc" in r.history[-1]
    disc_before = {k: v.clone() for k, v in sd.disc.state_dict().items()}
    # resuming restores the discriminator and its optimiser
    sd2 = StepDistillObjective(load_teacher(base), prompts, data.resolution, data.size,
                               StepDistillConfig(sampler_steps=4, teacher_substeps=2))
    r2 = train_full(spec, data, prompts, run, _config(steps=3, sample_steps=4), objective=sd2, resume=True,
                    progress=False)
    assert r2.status == "ok" and r2.history[0]["step"] == 3
    assert sd2._step == 3 and not all(torch.equal(disc_before[k], v) for k, v in sd2.disc.state_dict().items())
