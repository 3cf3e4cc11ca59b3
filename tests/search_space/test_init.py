"""Paired initialisation (search_space/init.py): every weight a function of (seed, module path), every module
covered, one-knob pairs identical wherever the knob does not reach, in the builders and in the training loop."""
import pytest
import torch

import search_space.build
from search_space import PRESETS, DecoderSpec, apply_overrides, build_model
from search_space.init import build_paired, paired_init, path_seed, shared_weights, untouched_modules
from training.proxy import ProxyConfig, proxy_spec

TINY = PRESETS["tiny-debug"]
# One knob each (tiny-debug: ffn 3, MQA, QK RMSNorm, separable x2, channels [32, 64], depth 1, SA in stage 1 only).
KNOBS = ("ffn_ratio=2.0", "attention=mhsa", "stages.1.channels=96", "qk_norm=none", "conv_expansion=1.0",
         "stages.1.down_transformer_depth=2", "stages.0.self_attention=true")


def tiny(name: str):
    """Every preset at tiny-debug size: UNets through a 32-channel proxy (heads, depths and every structural
    knob kept), decoders with their widths divided by 8; the module tree (and so every module kind) is kept."""
    spec = PRESETS[name]
    if isinstance(spec, DecoderSpec):
        return spec.replace(channels=tuple(8 * max(1, c // 64) for c in spec.channels), norm_groups=8)
    return proxy_spec(spec, 4, 32, 32 if spec.pooled_dim else 0, ProxyConfig(max_channels=32))[0]


def assert_paired(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every weight that exists in both with the same path and shape is bit-identical, except the parameters of a
    module the knob reshaped (a bias keeps its shape when its weight's fan-in, and so its law, changes)."""
    assert untouched_modules(a, b)
    shared, identical = shared_weights(a, b)
    assert shared > 0 and identical == shared, f"{shared - identical} of {shared} untouched weights differ"
    untouched = set(untouched_modules(a, b))
    pb = dict(b.named_parameters())
    for name, p in a.named_parameters():
        q = pb.get(name)
        if q is not None and q.shape == p.shape and not torch.equal(p, q):
            assert name.rpartition(".")[0] not in untouched, name


def one_stream_build(make, seed, prefix="", device=None):
    """What a run did before pairing: `torch.manual_seed(seed)`, then every module drew from that one stream in
    construction order."""
    torch.manual_seed(seed)
    return make()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_parameter_is_set_by_the_paired_initialiser(name):
    spec = tiny(name)
    model = build_model(spec, "meta").to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    covered = paired_init(model, seed=5)
    assert sorted(covered) == sorted(n for n, _ in model.named_parameters())
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), f"{n} was not set by the paired initialiser"
    built = build_model(spec, seed=5)  # the builder is exactly this
    for (n, p), q in zip(model.named_parameters(), built.parameters()):
        assert torch.equal(p, q), n


def test_a_module_with_a_parameter_and_no_reset_parameters_is_refused():
    class Gain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.Parameter(torch.ones(3))

    with pytest.raises(TypeError, match="reset_parameters"):
        paired_init(torch.nn.Sequential(torch.nn.Linear(2, 3), Gain()), seed=0)


def test_weights_are_a_function_of_seed_and_path_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model(TINY, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # building draws nothing from the caller's stream
    torch.manual_seed(456)
    b = build_model(TINY, seed=1)
    c = build_model(TINY, seed=2)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), n
        if p.unique().numel() > 1:  # a random draw (not a constant such as a norm's gain)
            assert not torch.equal(p, r), n
    assert torch.equal(a.conv_out.weight, torch.zeros_like(a.conv_out.weight))  # init_weights' zero-init kept
    # pinned: sha256 of "0:conv_in", the same in every process and Python version (Python's hash() is salted)
    assert path_seed(0, "conv_in") == 8045985216881140453
    assert len({path_seed(1, "conv_in"), path_seed(1, "conv_out"), path_seed(2, "conv_out")}) == 3


def test_the_law_of_each_module_is_kept():
    """Only the stream changes: a Linear's weight stays uniform within torch's +-1/sqrt(fan_in) bound."""
    model = build_model(TINY, seed=0)
    w = model.time_embedding.linear_2.weight.detach()
    bound = 1 / w.shape[1] ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and abs(float(w.mean())) < 0.1 * bound
    norm = model.down[0].layers[0].attn.blocks[0].attn2.norm_q  # RMSNorm: its own reset_parameters
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))


@pytest.mark.parametrize("knob", KNOBS)
def test_one_knob_pairs_share_every_untouched_weight(knob):
    other = apply_overrides(TINY, [knob])
    assert other != TINY
    assert_paired(build_model(TINY, seed=3), build_model(other, seed=3))



@pytest.mark.parametrize("knob", ["mid_attention=true", "res_blocks=[1, 2]", "channels=[16, 48]"])
def test_one_knob_decoder_pairs_share_every_untouched_weight(knob):
    base = PRESETS["tiny-debug-decoder"]
    other = apply_overrides(base, [knob])
    assert other != base
    assert_paired(build_model(base, seed=3), build_model(other, seed=3))

@pytest.mark.parametrize("knob", ["ffn_ratio=2.0", "attention=mhsa", "stages.1.channels=96"])
def test_the_pairing_check_fails_with_one_stream_initialisation(knob, monkeypatch):
    """The same check with the initialiser put back to one stream in construction order must fail."""
    monkeypatch.setattr(search_space.build, "build_paired", one_stream_build)
    a, b = build_model(TINY, seed=3), build_model(apply_overrides(TINY, [knob]), seed=3)
    with pytest.raises(AssertionError, match="untouched weights differ"):
        assert_paired(a, b)


def test_the_quick_studys_proxies_are_paired():
    """snapgen-unet one knob apart, at studies/quick.toml's proxy (the study's width 1/7 on mnist5k, 4 data channels)."""
    def proxy(*overrides):
        spec = apply_overrides(PRESETS["snapgen-unet"], list(overrides))
        return proxy_spec(spec, 4, 384, config=ProxyConfig(width_mult=128 / 896))[0]
    base = build_model(proxy(), seed=0)
    for knob in ("stages.0.channels=192", "stages.2.down_transformer_depth=2", "attention=mhsa"):
        assert_paired(base, build_model(proxy(knob), seed=0))


def test_the_training_loop_pairs_its_initial_weights_and_streams():
    """The loop builds with the run's seed (the same on every rank), and both candidates of a pair see the same
    batches, noise and timesteps (the CRN stream digest)."""
    from training.config import LoopConfig
    from training.distributed import DistContext
    from training.loop import _initial_model
    from training.quality_run import train
    from tests.toys import toy_flow

    config = LoopConfig.quality_preset(batch_size=8, warmup_steps=1, seed=4)
    other = apply_overrides(TINY, ["ffn_ratio=2.0"])
    assert_paired(_initial_model(TINY, config, DistContext(), None), _initial_model(other, config, DistContext(), None))
    rank0 = _initial_model(TINY, config, DistContext(rank=0), None)
    rank1 = _initial_model(TINY, config, DistContext(rank=1, world=1), None)
    for (n, p), q, r in zip(rank0.named_parameters(), rank1.parameters(), build_model(TINY, seed=4).parameters()):
        assert torch.equal(p, q) and torch.equal(p, r), n  # the run's seed, not the rank's
    data, prompts = toy_flow(32, text_dim=TINY.text_dim)
    runs = [train(s, data, prompts, "2steps", config, progress=False, device="cpu") for s in (TINY, other)]
    assert runs[0].stream_digest == runs[1].stream_digest


def test_built_apart_modules_draw_apart_and_keep_their_device():
    a = build_paired(lambda: torch.nn.Conv2d(4, 8, 1), 0, "kd.projections.down.0.layers.0")
    b = build_paired(lambda: torch.nn.Conv2d(4, 8, 1), 0, "kd.projections.mid")
    c = build_paired(lambda: torch.nn.Conv2d(4, 8, 1), 0, "kd.projections.mid")
    assert not torch.equal(a.weight, b.weight) and torch.equal(b.weight, c.weight)
    assert build_paired(lambda: torch.nn.Conv2d(4, 8, 1), 0, device="meta").weight.is_meta
