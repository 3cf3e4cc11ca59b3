"""Preset registry: published models (exact) and the SnapGen design chain (docs/paper.md sections 1-2).

Each preset is a function returning a spec, registered by name as timm registers models; its docstring is
the preset's documentation and states every value the paper leaves open ([choose]) with the reason.
`PRESETS` maps name -> spec and is what the CLI, the studies and the app list. `load_spec` turns what a user
types (a preset name or a spec JSON file, plus `--set` overrides) into a spec; like the registry it needs no
torch, so a command that only needs a spec_id (a cached latency prediction) starts without loading it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from .errors import SpecError
from .limits import read_json
from .overrides import apply_overrides
from .spec import DecoderSpec, Spec, StageSpec, UNetSpec, spec_from_dict

PRESETS: dict[str, Spec] = {}
PRESET_DOCS: dict[str, str] = {}


def register_preset(name: str) -> Callable[[Callable[[], Spec]], Callable[[], Spec]]:
    def deco(fn: Callable[[], Spec]) -> Callable[[], Spec]:
        if name in PRESETS:
            raise ValueError(f"preset {name!r} registered twice")
        PRESETS[name] = fn()
        PRESET_DOCS[name] = (fn.__doc__ or "").strip()
        return fn
    return deco


def get_preset(name: str) -> Spec:
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"unknown preset {name!r}; `pocketdiff presets list` shows the {len(PRESETS)} presets: "
                        f"{', '.join(sorted(PRESETS))}") from None


def load_spec(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """A preset name, or a path to a spec JSON file (as written by `pocketdiff describe --json`)."""
    if name_or_path in PRESETS:
        spec = PRESETS[name_or_path]
    elif name_or_path.endswith(".json") or Path(name_or_path).is_file():
        data = read_json(name_or_path, "spec file", SpecError)
        spec = spec_from_dict(data.get("spec", data) if isinstance(data, dict) else data)
    else:
        spec = get_preset(name_or_path)  # raises with the list of presets
    return apply_overrides(spec, overrides) if overrides else spec


def preset_summary(name: str) -> str:
    return PRESET_DOCS[name].splitlines()[0] if PRESET_DOCS[name] else ""


# --- published UNets (exact) ---------------------------------------------------------------------------

@register_preset("sdxl-unet")
def sdxl_unet() -> UNetSpec:
    """SDXL-base UNet, exactly diffusers' UNet2DConditionModel with the SDXL-base config (2,567,463,684 params).

    block_out_channels [320, 640, 1280], layers_per_block 2 (3 on the way up), transformer_layers_per_block
    [0 (DownBlock2D), 2, 10] with the mid block at 10, 5/10/20 heads of 64, cross_attention_dim 2048,
    addition_embed_type "text_time" (pooled 1280 + six 256-d size/crop embeddings), GEGLU FFN x4.
    """
    return UNetSpec(
        stages=(
            StageSpec(320, 2, 3, 0, 0, self_attention=True, cross_attention=True),
            StageSpec(640, 2, 3, 2, 2, self_attention=True, cross_attention=True),
            StageSpec(1280, 2, 3, 10, 10, self_attention=True, cross_attention=True),
        ),
        latent_channels=4, mid_transformer_depth=10, text_dim=2048, pooled_dim=1280, size_conditioning=True,
    )


# --- the SnapGen Figure 3 chain (each step changes one thing of the previous one) ----------------------

SNAPGEN_TEXT_DIM = 768  # [choose] see fig3-a


@register_preset("fig3-a")
def fig3_a() -> UNetSpec:
    """SnapGen step a: the SDXL UNet made thinner and shorter (the ablation baseline).

    [paper] channels [256, 512, 896], transformer blocks [0, 2, 4] (mid block 4), SD3 16-channel latents.
    Kept from SDXL [choose, checked against diffusers' SDXL config]: 2 layers down / 3 up per stage, mid block
    res-transformer-res, GEGLU FFN x4, head dim 64 (4/8/14 heads), SA+CA in the transformer stages.
    [choose] text_dim 768: one CLIP-L-sized light text encoder carries the class prompt on ImageNet; the
    proxy runs feed MiniLM (384) through the `text_dim` knob. [choose] no pooled / size conditioning: the
    ImageNet model is class-conditional at one resolution, so SDXL's micro-conditioning carries nothing.
    """
    return UNetSpec(
        stages=(
            StageSpec(256, 2, 3, 0, 0, self_attention=True, cross_attention=True),
            StageSpec(512, 2, 3, 2, 2, self_attention=True, cross_attention=True),
            StageSpec(896, 2, 3, 4, 4, self_attention=True, cross_attention=True),
        ),
        latent_channels=16, mid_transformer_depth=4, text_dim=SNAPGEN_TEXT_DIM,
    )


def _stage_replace(stage: StageSpec, **changes) -> StageSpec:
    return dataclasses.replace(stage, **changes)


def _with_stages(spec: UNetSpec, **per_stage: tuple) -> UNetSpec:
    """Change stage fields, one value per stage: `_with_stages(s, self_attention=(False, False, True))`."""
    return spec.replace(stages=tuple(_stage_replace(s, **{k: v[i] for k, v in per_stage.items()})
                                     for i, s in enumerate(spec.stages)))


@register_preset("fig3-b")
def fig3_b() -> UNetSpec:
    """SnapGen step b: self-attention only in the lowest-resolution stage (stage 2 keeps CA + FFN)."""
    return _with_stages(fig3_a(), self_attention=(False, False, True))


@register_preset("fig3-c1")
def fig3_c1() -> UNetSpec:
    """SnapGen step c1: every res-block and resampler conv -> separable (depthwise 3x3 + pointwise), no expansion.

    [choose] conv_in / conv_out stay regular 3x3 (latent <-> width, a negligible share).
    """
    return fig3_b().replace(conv="separable", conv_expansion=1.0)


@register_preset("fig3-c2")
def fig3_c2() -> UNetSpec:
    """SnapGen step c2: separable convs with expansion 2, as MobileNetV4's UIB (reading: sep_block="per_conv").

    [paper] "PW expands C -> 2C, the second PW reduces back". Two readings, one knob (`sep_block`):
    "per_conv" (this preset): each of the res block's two separable convs is DW -> PW(C -> 2C) -> SiLU ->
    PW(2C -> C); "uib" (`--set sep_block=uib`): the block is one inverted bottleneck, DW(C) -> PW(C -> 2C),
    time embedding + norm + SiLU at 2C, DW(2C) -> PW(2C -> C), as diffusers' ResnetBlock2DDreamLite. Against
    step b: per_conv -16.4% params / -27.7% MACs (published -15% / -27%), uib -19.4% / -34.0%; per_conv is
    the default because it is the nearer reading here and at the end of the chain (see snapgen-unet).
    [choose] the expansion applies to the res-block convs (the UIB is a block); the down/upsampler convs
    stay plain separable: expanding them too gives the final model 384.9M params (+3.5%) instead of
    380.7M (+2.3%).
    """
    return fig3_b().replace(conv="separable", conv_expansion=2.0, sep_block="per_conv")


@register_preset("fig3-d")
def fig3_d() -> UNetSpec:
    """SnapGen step d: FFN hidden expansion 4 -> 3, still gated (GEGLU)."""
    return fig3_c2().replace(ffn_ratio=3.0)


@register_preset("fig3-e")
def fig3_e() -> UNetSpec:
    """SnapGen step e: multi-head -> multi-query attention (one shared K/V head).

    [choose] MQA in self-attention and in cross-attention: the paper's -16% params at this step is only
    reached when the cross-attention K/V projections shrink too.
    """
    return fig3_d().replace(attention="mqa", share_kv_in_cross_attention=True)


@register_preset("fig3-f")
def fig3_f() -> UNetSpec:
    """SnapGen step f: conditions injected in the first stage, with the published sign (smaller and cheaper).

    [paper] the first stage's res blocks are replaced by transformer blocks with cross-attention + FFN and no
    self-attention, and the model gets smaller with lower FLOPs. [choose] stage 1 keeps one layer down and
    two up (instead of 2 / 3), one CA+FFN transformer block per layer. Why: a CA+FFN block at width C costs
    about 13 C^2 MACs per token (gated FFN x3: 9 C^2, CA query/output projections 2 C^2, the transformer's
    proj_in/out 2 C^2) against 8 C^2 for the per_conv separable res block it replaces, so a one-for-one
    replacement (2 / 3 layers) grows the model: +0.1% params, +4.0% MACs at a 128 latent. With 1 / 2
    layers it shrinks: -0.4% params, -1.1% MACs, the published direction. Under sep_block="uib" a res block
    is only about 4 C^2, and even 1 / 2 layers (the fewest the skip layout allows in this stage) give -0.4%
    params but +2.5% MACs: there the published FLOP sign is not reproduced. The width change where skips
    are concatenated goes through the transformer's proj_in and a 1x1 residual conv.
    """
    spec = fig3_e()
    stage0 = _stage_replace(spec.stages[0], res_block=False, down_layers=1, up_layers=2, down_transformer_depth=1,
                            up_transformer_depth=1, self_attention=False, cross_attention=True)
    return spec.replace(stages=(stage0,) + spec.stages[1:])


@register_preset("fig3-f-1to1")
def fig3_f_1to1() -> UNetSpec:
    """SnapGen step f read one-for-one: every stage-1 res block becomes one CA+FFN block (2 down / 3 up layers).

    The other stage-1 layer count, kept so studies can sweep it (studies/paper-fig3.toml): against fig3-e it
    grows the model (+0.1% params, +4.0% MACs at a 128 latent; +0.1% / +8.2% under sep_block="uib"), the
    opposite of the published sign, which is why fig3-f keeps 1 down / 2 up layers (see its docstring).
    """
    spec = fig3_f()
    return _with_stages(spec, down_layers=(2,) + tuple(s.down_layers for s in spec.stages[1:]),
                        up_layers=(3,) + tuple(s.up_layers for s in spec.stages[1:]))


@register_preset("fig3-g")
def fig3_g() -> UNetSpec:
    """SnapGen step g: RMSNorm on Q and K after projection + 2D RoPE in self-attention (= snapgen-unet)."""
    return fig3_f().replace(qk_norm="rmsnorm", pos_embed="rope2d")


@register_preset("snapgen-unet")
def snapgen_unet() -> UNetSpec:
    """SnapGen efficient UNet, ImageNet class-conditional model (372M published; 38 GFLOPs at a 32x32 latent).

    Identical to fig3-g: channels [256, 512, 896]; SA only in stage 3; CA in all stages (stage 1 as
    transformer-only CA+FFN layers, one down and two up); separable res blocks with expansion 2; GEGLU FFN
    x3; MQA in self- and cross-attention; QK RMSNorm; 2D RoPE. The [choose] values are listed on fig3-a ...
    fig3-g. Of the two readings of the separable block (`sep_block`), this is the one closer to the
    published params and GFLOPs together: "per_conv" gives 380.7M / 36.6 GMACs (+2.3% / -3.8%, largest
    gap 3.8%), "uib" 362.0M / 33.8 GMACs (-2.7% / -11.1%, largest gap 11.1%).
    """
    return fig3_g()


@register_preset("snapgen-unet-t2i")
def snapgen_unet_t2i() -> UNetSpec:
    """SnapGen text-to-image UNet (379M published): snapgen-unet with text-to-image conditioning.

    [choose] text_dim 2048 (CLIP-L 768 + CLIP-G 1280 concatenated, the SDXL habit; the reported Gemma-2-2B
    encoder is unverified). The wider single-head cross-attention K/V add 6.1M (386.7M in all, +2.1%),
    close to the published difference of 7M. [choose] no pooled vector and no size/crop conditioning: a
    1280-d pooled vector with SDXL's micro-conditioning would add another 3.9M (+3.1% over the published
    count).
    """
    return snapgen_unet().replace(text_dim=2048)


# --- decoders ------------------------------------------------------------------------------------------

@register_preset("sd3-decoder")
def sd3_decoder() -> DecoderSpec:
    """SD3 VAE decoder, exactly diffusers' AutoencoderKL decoder with the SD3 config (49.55M).

    block_out_channels [128, 256, 512, 512], layers_per_block 2 (3 res blocks per up stage), 16 latent
    channels, mid block with attention, no post_quant_conv.
    """
    return DecoderSpec(channels=(128, 256, 512, 512), res_blocks=(3, 3, 3, 3), latent_channels=16)


@register_preset("sdxl-decoder")
def sdxl_decoder() -> DecoderSpec:
    """SDXL VAE decoder, exactly diffusers' AutoencoderKL decoder with the SDXL config (49.49M).

    As sd3-decoder with 4 latent channels and a 1x1 post_quant_conv (counted: it runs before decoding).
    """
    return DecoderSpec(channels=(128, 256, 512, 512), res_blocks=(3, 3, 3, 3), latent_channels=4,
                       post_quant_conv=True)


@register_preset("snapgen-decoder")
def snapgen_decoder() -> DecoderSpec:
    """SnapGen tiny decoder for SD3 latents (1.38M published, 224 GFLOPs at a 128x128 latent).

    [paper] no attention; minimal GroupNorm; thinner; separable convs; fewer res blocks at high resolution;
    no conv shortcut (the upsampler changes the width).
    [choose] channels [92, 128, 128, 128] (high -> low resolution), res blocks [1, 2, 2, 2], separable convs
    with expansion 2: a grid search over widths, depths and expansions for the layout nearest both published
    counts (1.346M params, -2.5%; 237 GMACs, +6%). Published FLOPs are multiply-accumulates, which is what
    our cost evaluator reports. [choose] GroupNorm kept in the mid block and the three lower-resolution
    stages (cheap there, and it fights colour shift), dropped in the 1024 px stage and before conv_out.
    """
    return DecoderSpec(channels=(92, 128, 128, 128), res_blocks=(1, 2, 2, 2), latent_channels=16,
                       mid_res_blocks=2, mid_attention=False, norm_stages=(False, True, True, True),
                       norm_mid=True, norm_out=False, conv="separable", conv_expansion=2.0, shortcut="none")


# --- tiny presets for tests (build, forward and backward on CPU in about a second) -------------------------

@register_preset("tiny-debug")
def tiny_debug() -> UNetSpec:
    """Tiny UNet for tests and CPU proxy runs: 2 stages [32, 64], every knob of snapgen-unet switched on."""
    return UNetSpec(
        stages=(
            StageSpec(32, 1, 2, 1, 1, self_attention=False, cross_attention=True, res_block=True),
            StageSpec(64, 1, 2, 1, 1, self_attention=True, cross_attention=True),
        ),
        latent_channels=4, mid_transformer_depth=1, conv="separable", conv_expansion=2.0, ffn_ratio=3.0,
        attention="mqa", share_kv_in_cross_attention=True, head_dim=16, qk_norm="rmsnorm", pos_embed="rope2d",
        text_dim=32, pooled_dim=0, norm_groups=8,
    )


@register_preset("tiny-debug-decoder")
def tiny_debug_decoder() -> DecoderSpec:
    """Tiny decoder for tests: 2 stages [16, 32], 4 latent channels, separable, no shortcut."""
    return DecoderSpec(channels=(16, 32), res_blocks=(1, 1), latent_channels=4, mid_res_blocks=1,
                       mid_attention=False, norm_stages=(False, True), norm_out=False, conv="separable",
                       shortcut="none", norm_groups=8)
