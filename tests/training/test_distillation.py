"""training/teachers.py, kd.py, kd_scaling.py, step_distill.py: teachers with their own conditioning (ours, a tiny SD3
pipeline with its CLIP/T5 encoders, bare diffusers models), monotone depth pairing, per-channel standardisation,
KD magnitudes per timestep bin, step distillation that trains the sampler's own states."""
import json

import pytest
import torch

from search_space import load_spec
from training.config import LoopConfig
from training.data import load_data
from training.full_run import prepare_spec, train_full
from training.kd import FeatureStandardizer, KDObjective, monotone_pairs
from training.kd_scaling import KDWeighting, LossMagnitudes, bin_edges, mean_kd_share, task_weight
from training.config import StepDistillConfig, StepDistillError
from training.step_distill import StepDistillObjective
from training.teachers import SpecTeacher, TeacherError, check_teacher, load_teacher, student_taps
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


def _sd3(path, in_channels=4, joint=384, pooled=384, layers=2):
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=in_channels, out_channels=in_channels,
                          num_layers=layers, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=joint,
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


def _tokenizer(path, max_length):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = ["[PAD]", "[UNK]", "[EOS]", "a", "photo", "of", "handwritten", "digit", "zero", "one", "two"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]",
                            model_max_length=max_length).save_pretrained(path)


def _sd3_pipeline(root, clip_l=8, clip_g=16, t5=32, layers=4):
    """A tiny SD3 pipeline folder with the real widths' structure: CLIP-L + CLIP-G states (8 + 16, as 768 + 1280)
    zero-padded to the T5 width (32, as 4096), pooled = both CLIP projections (24, as 2048)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel
    torch.manual_seed(0)
    for name, width in (("text_encoder", clip_l), ("text_encoder_2", clip_g)):
        CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=11, hidden_size=width, intermediate_size=2 * width,
                                                   num_hidden_layers=2, num_attention_heads=2,
                                                   max_position_embeddings=8, projection_dim=width,
                                                   eos_token_id=2)).save_pretrained(root / name)
    T5EncoderModel(T5Config(vocab_size=11, d_model=t5, d_kv=8, d_ff=2 * t5, num_layers=1, num_heads=2)
                   ).save_pretrained(root / "text_encoder_3")
    for name, n in (("tokenizer", 8), ("tokenizer_2", 8), ("tokenizer_3", 6)):
        _tokenizer(root / name, n)
    _sd3(root / "transformer", joint=t5, pooled=clip_l + clip_g, layers=layers)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "x"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "x"],
        "text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer_3": ["transformers", "x"]}))
    return root


def _config(**kw):
    return LoopConfig(**{**dict(steps=2, batch_size=4, checkpoint_every=2, log_every=1, sample_steps=1), **kw})


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
    assert row["grad_task"] > 0 and row["grad_kd_out"] > 0 and row["grad_kd_feat"] > 0  # gradient norms logged
    assert 0 < row["kd_share"] < 1
    assert len(obj.projections) == len(obj.taps) == len(teacher.taps)  # every student level is distilled
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.projections.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # the teacher is frozen
    assert not any(p.requires_grad for p in teacher.parameters())


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


def test_kd_magnitudes_per_bin_recover_a_known_loss_ratio():
    """Per-sample losses whose task/KD ratio is c_b in timestep bin b (noisy, and the KD loss shrinking over
    time as a student nearing its teacher): the running magnitudes give back c_b per bin, and every sample of a
    bin is scaled by the same ratio (not by its own)."""
    g = torch.Generator().manual_seed(0)
    edges = bin_edges()
    ratios = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 3.0, 1.5, 0.25])
    m = LossMagnitudes()
    for step in range(400):
        t = torch.sigmoid(torch.randn(64, generator=g))
        b = torch.bucketize(t, edges)
        kd = (1.0 + torch.rand(64, generator=g)) * (1 - step / 800)
        task = ratios[b] * kd * (1 + 0.2 * torch.randn(64, generator=g))
        m.update("task", t, task)
        m.update("kd", t, kd)
    got = m.per_bin("task") / m.per_bin("kd")
    assert torch.allclose(got, ratios, rtol=0.08), got
    t = torch.tensor([0.02, 0.021, 0.5, 0.98])
    r = m.ratio("task", "kd", t)
    assert r[0] == r[1] and r[0] == pytest.approx(float(ratios[0]), rel=0.08)
    # the scaled KD term: gradient (1 - a_t) * ratio_bin / B, the value's KD part has the task magnitude
    task, kd = torch.tensor([2.0, 2.0, 2.0, 2.0]), torch.tensor([1.0, 1e-6, 1.0, 1.0], requires_grad=True)
    s, kd_part = KDWeighting("timestep").combine(task, kd, t, m, "task", "kd")
    s.backward()
    assert torch.allclose(kd.grad, (1 - task_weight(t)) * r / 4)  # bounded as a sample's KD loss -> 0
    assert float(kd_part) == pytest.approx(float(((1 - task_weight(t)) * r * kd.detach()).mean()))


def test_fixed_weighting_matches_the_timestep_aware_kd_share():
    share = mean_kd_share(1.0)
    assert 0.1 < share < 0.3  # under logit-normal t the timestep-aware weighting gives KD about a fifth
    fixed = KDWeighting("fixed")
    assert fixed.fixed_share == pytest.approx(share)
    t = torch.sigmoid(torch.randn(20000, generator=torch.Generator().manual_seed(1)))
    assert float(1 - KDWeighting("timestep").task_weights(t).mean()) == pytest.approx(share, abs=0.01)
    assert float(1 - fixed.task_weights(t).mean()) == pytest.approx(share, abs=1e-6)
    assert mean_kd_share(2.0) > share > mean_kd_share(0.5) > mean_kd_share(0.0) == 0  # the shape sweep
    with pytest.raises(ValueError, match="share"):
        KDWeighting("fixed", share=1.5)


def test_teacher_depth_pairs_monotonically_with_student_depth(setup, tmp_path):
    assert monotone_pairs(5, 24) == [0, 6, 12, 17, 23]
    assert monotone_pairs(5, 3) == [0, 0, 1, 2, 2]
    for n_s in range(1, 7):
        for n_t in range(1, 30):
            p = monotone_pairs(n_s, n_t)
            assert all(a <= b for a, b in zip(p, p[1:])) and p[-1] == n_t - 1 and max(p) < n_t
    spec, data, prompts = setup
    teacher = load_teacher(_sd3(tmp_path / "t", layers=6))
    obj = KDObjective(teacher, prompts, data.resolution, data.size)
    from training.distributed import DistContext
    from search_space import build_model
    model = build_model(spec)
    obj.attach(model, torch.device("cpu"), DistContext())
    taps = student_taps(model)
    assert taps[0].startswith("down.") and "mid" in taps and taps[-1].startswith("up.")
    blocks = [int(name.split(".")[1]) for name in teacher.taps]
    assert blocks[0] == 0 and blocks[-1] == 5 and blocks == sorted(blocks)
    mid = taps.index("mid")
    assert blocks[mid] <= blocks[mid + 1]  # early teacher blocks -> down/mid, late -> up


def test_kd_projections_and_discriminator_heads_are_paired(setup, tmp_path):
    """The objectives' trainable modules are drawn from (run seed, module path) (search_space/init.py): one-knob
    students share the projections of the taps they share, and the caller's global stream (each rank's own)
    changes nothing, so every rank starts with the same ones."""
    from search_space import apply_overrides, build_model
    from training.distributed import DistContext
    spec, data, prompts = setup
    root = _sd3(tmp_path / "t", layers=4)

    def attached(objective, student, seed, global_seed):
        objective.seed = seed
        torch.manual_seed(global_seed)
        objective.attach(build_model(student, seed=seed), torch.device("cpu"), DistContext())
        return objective

    def projections(student, seed=0, global_seed=0):
        obj = attached(KDObjective(load_teacher(root), prompts, data.resolution, data.size), student, seed,
                       global_seed)
        return {obj.taps[i]: p.weight.detach() for (i, _), p in zip(obj.pairs, obj.projections)}

    def heads(seed=0, global_seed=0):
        obj = StepDistillObjective(load_teacher(root), prompts, data.resolution, data.size, StepDistillConfig())
        return [p.detach() for p in attached(obj, spec, seed, global_seed).disc.parameters()]

    base = projections(spec)
    assert all(torch.equal(base[k], v) for k, v in projections(spec, global_seed=1).items())
    wider = projections(apply_overrides(spec, ["stages.0.channels=48"]))
    same = [k for k in base if base[k].shape == wider[k].shape]
    assert same and len(same) < len(base)  # the knob reshapes some projections, not all
    assert all(torch.equal(base[k], wider[k]) for k in same)
    assert not any(torch.equal(base[k], v) for k, v in projections(spec, seed=1).items())
    first = heads()
    assert all(torch.equal(a, b) for a, b in zip(first, heads(global_seed=1)))
    assert not all(torch.equal(a, b) for a, b in zip(first, heads(seed=1)))


def test_teacher_features_are_standardised_per_channel():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(8, 6, 4, 4, generator=g)
    f[:, 2] = f[:, 2] * 300 + 1000  # one huge channel, as in transformer hidden states
    std = FeatureStandardizer(6)
    std.update(f)
    z = std(f)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(6), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(6), atol=1e-3)


def test_tiny_sd3_pipeline_teacher_brings_its_own_text_encoders(setup, tmp_path):
    spec, data, prompts = setup
    root = _sd3_pipeline(tmp_path / "sd3")
    teacher = load_teacher(root)
    assert teacher.text_dim == 32 and teacher.pooled_dim == 24  # not the student's MiniLM 384
    check_teacher(teacher, spec, prompts, data.size, data.class_names)
    own = teacher.prompt_table(data.class_names, prompts)
    assert own.tokens.shape == (11, 8 + 6, 32) and own.pooled.shape == (11, 24)
    assert torch.all(own.tokens[:, :8, 24:] == 0)  # CLIP states zero-padded to the T5 width, as SD3
    assert not torch.equal(own.tokens[0], own.tokens[1])  # the class prompts differ
    obj = KDObjective(teacher, prompts, data.resolution, data.size, class_names=data.class_names)
    r = train_full(spec, data, prompts, tmp_path / "run", _config(steps=1), objective=obj, progress=False)
    assert r.status == "ok" and r.history[-1]["loss_kd_feat"] > 0
    with pytest.raises(TeacherError, match="class names"):
        check_teacher(load_teacher(root), spec, prompts, data.size)
    import shutil
    shutil.rmtree(root / "text_encoder_3")
    with pytest.raises(TeacherError, match=r"teacher file missing: .*text_encoder_3"):
        load_teacher(root)


def test_step_distillation_trains_the_samplers_own_states(setup, tmp_path):
    spec, data, prompts = setup
    base = tmp_path / "base"
    assert train_full(spec, data, prompts, base, _config(), progress=False).status == "ok"
    assert isinstance(load_teacher(base), SpecTeacher)
    with pytest.raises(StepDistillError, match="supports 2, 4, 8 steps"):
        StepDistillConfig(sampler_steps=3).validate()

    from search_space import build_model
    from training.distributed import DistContext
    from training.conditioning import Conditioner
    one = StepDistillObjective(load_teacher(base), prompts, data.resolution, data.size,
                               StepDistillConfig(sampler_steps=4, teacher_substeps=1, teacher_cfg=1.0))
    student = build_model(spec)
    one.attach(student, torch.device("cpu"), DistContext())
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([1.0, 0.5]), torch.tensor([3, 7])
    v, _ = one.teacher(x, t, *one.tcond(y))
    assert torch.allclose(one.few_step_target(x, t, y), v, atol=1e-5)  # one sub-step: the teacher's velocity
    assert set(one.sample_t(64, torch.Generator().manual_seed(0)).tolist()) == {1.0, 0.75, 0.5, 0.25}
    # the rollout: k Euler steps of the student's own sampler from the noise
    cond = Conditioner(spec, prompts, data.resolution, torch.device("cpu"))
    torch.nn.init.normal_(student.conv_out.weight, std=0.1)
    states = one.rollout(student, cond, x, y, torch.tensor([0, 2]), False)
    assert torch.equal(states[0], x[0])
    from training.conditioning import velocity
    x1 = x[1:] - 0.25 * velocity(student, cond, x[1:], torch.ones(1), y[1:])
    x2 = x1 - 0.25 * velocity(student, cond, x1, torch.full((1,), 0.75), y[1:])
    assert torch.allclose(states[1:], x2, atol=1e-5)

    sd = StepDistillObjective(load_teacher(base), prompts, data.resolution, data.size,
                              StepDistillConfig(sampler_steps=4, teacher_substeps=2, adv_start=0.5))
    run = tmp_path / "sd"
    r = train_full(spec, data, prompts, run, _config(steps=4, cfg_scale=1.0, sample_steps=4), objective=sd,
                   init=base, progress=False)
    assert r.status == "ok"
    rows = {h["step"]: h for h in r.history if "loss" in h}
    assert "loss_gen" not in rows[1] and "loss_gen" not in rows[2]  # KD-only warm-up: half of 4 steps
    assert "loss_gen" in rows[3] and "loss_kd_rollout" in rows[1]
    assert all("loss_disc" in rows[k] for k in (1, 2, 3, 4))  # the discriminator trains from the first step
    assert json.loads((run / "run.json").read_text())["cfg_scale"] == 1.0  # the student samples at CFG 1
    disc_before = {k: v.clone() for k, v in sd.disc.state_dict().items()}
    sd2 = StepDistillObjective(load_teacher(base), prompts, data.resolution, data.size,
                               StepDistillConfig(sampler_steps=4, teacher_substeps=2, adv_start=0.5))
    r2 = train_full(spec, data, prompts, run, _config(steps=5, cfg_scale=1.0, sample_steps=4), objective=sd2,
                    resume=True, progress=False)
    assert r2.status == "ok" and r2.history[0]["step"] == 5
    assert sd2._step == 5 and not all(torch.equal(disc_before[k], v) for k, v in sd2.disc.state_dict().items())


def test_kd_run_resumes_step_for_step(setup, tmp_path):
    """The KD objective's state (running loss magnitudes per bin, teacher feature statistics, projections)
    travels in the checkpoint: 2 + 2 resumed steps log the losses of 4 uninterrupted ones."""
    spec, data, prompts = setup
    teacher_dir = tmp_path / "teacher"
    assert train_full(spec, data, prompts, teacher_dir, _config(), progress=False).status == "ok"

    def kd():
        return KDObjective(load_teacher(teacher_dir), prompts, data.resolution, data.size, "timestep")

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}

    ref = tmp_path / "ref"
    assert train_full(spec, data, prompts, ref, _config(steps=4), objective=kd(), progress=False).status == "ok"
    run = tmp_path / "run"
    assert train_full(spec, data, prompts, run, _config(steps=4), objective=kd(), progress=False,
                      stop_at=2).status.startswith("stopped at step 2")
    assert train_full(spec, data, prompts, run, _config(steps=4), objective=kd(), resume=True,
                      progress=False).status == "ok"
    expected, got = losses(ref), losses(run)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step
