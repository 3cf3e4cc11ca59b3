"""diffusers interop: configs <-> specs, and the documented state-dict key mapping (docs/paper.md section 4).

`unet_spec_from_diffusers(config)` reads a UNet2DConditionModel config (SDXL layout: linear projections,
"text_time" addition embedding, sinusoidal time embedding) and `decoder_spec_from_diffusers(config)` an
AutoencoderKL config; `diffusers_unet_config(spec)` / `diffusers_decoder_config(spec)` go the other way and
refuse what diffusers' classes cannot build. Each spec field either maps to a config key or is listed in
`DIFFUSERS_REFUSALS` with the reason (docs/spec-fields.md has the table; tests/search_space/test_fields.py
fails on a field that does neither). `unet_state_dict_from_diffusers` / `decoder_state_dict_from_diffusers`
rename diffusers' keys to ours; loaded with `strict=True` the model then gives diffusers' outputs.

Key mapping (diffusers -> pocketdiff), applied to each key in order:
    down_blocks.i.resnets.j.*           -> down.i.layers.j.res.*
    down_blocks.i.attentions.j.*        -> down.i.layers.j.attn.*
    down_blocks.i.downsamplers.0.conv   -> down.i.downsample.conv
    up_blocks.i.resnets.j.*             -> up.i.layers.j.res.*
    up_blocks.i.attentions.j.*          -> up.i.layers.j.attn.*
    up_blocks.i.upsamplers.0.conv       -> up.i.upsample.conv
    mid_block.resnets.0 / .1            -> mid.res_in / mid.res_out
    mid_block.attentions.0              -> mid.attn
    *.conv_shortcut                     -> *.shortcut
    *.transformer_blocks.k              -> *.blocks.k
    *.attnX.to_out.0                    -> *.attnX.to_out
    *.ff.net.0.proj / *.ff.net.2        -> *.ff.proj_in / *.ff.proj_out
    conv_norm_out                       -> norm_out
Decoder (keys of AutoencoderKL, only `decoder.*` and `post_quant_conv.*` are used):
    decoder.mid_block.resnets.j         -> mid.res.j
    decoder.mid_block.attentions.0.group_norm / to_out.0 -> mid.attn.norm / mid.attn.to_out
    decoder.up_blocks.i.resnets.j       -> up.i.res.j
    decoder.up_blocks.i.upsamplers.0    -> up.i.upsample
    decoder.conv_norm_out               -> norm_out
DreamLite (diffusers' DreamLiteUNetModel, `use_sep_conv=True`), on top of the UNet rules:
    *.conv1.depthwise / .pointwise      -> *.conv1.dw / .pw    (same for conv2)
Its res blocks (`ResnetBlock2DDreamLite`) are our `ResBlock` with conv="separable", conv_expansion=2,
sep_block="uib", and load exactly (`resblock_state_dict_from_dreamlite`, parity-tested). A whole
DreamLiteUNetModel does not map to a UNetSpec: its down/upsamplers are regular 3x3 convs where ours are
separable, it has no 2D RoPE and its FFN multiplier is an int; `dreamlite_res_blocks_from_unet` picks the
res-block weights out of its state dict under our module paths, for the layers where the layouts match.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .errors import SpecError
from .spec import DecoderSpec, StageSpec, UNetSpec
from .unet import SIZE_COND_DIM

# The spec fields whose non-default values diffusers' UNet2DConditionModel / AutoencoderKL cannot hold, and why.
# Every other field maps to a config key (diffusers_unet_config / diffusers_decoder_config).
DIFFUSERS_REFUSALS: dict[str, str] = {
    "StageSpec.up_transformer_depth": "diffusers' up blocks have the down blocks' transformer depth",
    "StageSpec.self_attention": "diffusers' transformer blocks always have self-attention",
    "StageSpec.cross_attention": "diffusers' transformer blocks always have cross-attention",
    "StageSpec.res_block": "diffusers' layers always start with a res block",
    "UNetSpec.conv": "UNet2DConditionModel's res blocks and resamplers are regular 3x3 convs",
    "UNetSpec.conv_expansion": "applies to separable convs only (conv)",
    "UNetSpec.sep_block": "applies to separable convs only (conv)",
    "UNetSpec.ffn_ratio": "diffusers' GEGLU feed-forward widens x4",
    "UNetSpec.attention": "diffusers' attention has one K/V head per query head (mhsa)",
    "UNetSpec.kv_heads": "applies to attention='gqa' only (attention)",
    "UNetSpec.share_kv_in_cross_attention": "K/V sharing needs attention='mqa' or 'gqa' (attention); under "
                                            "'mhsa' it changes nothing and is not written",
    "UNetSpec.qk_norm": "diffusers' SDXL attention has no QK normalisation",
    "UNetSpec.pos_embed": "UNet2DConditionModel has no 2D rotary position embedding",
    "DecoderSpec.mid_res_blocks": "diffusers' decoder mid block has 2 res blocks",
    "DecoderSpec.norm_stages": "diffusers' decoder has GroupNorm in every res block",
    "DecoderSpec.norm_mid": "diffusers' decoder has GroupNorm in the mid block",
    "DecoderSpec.norm_out": "diffusers' decoder has GroupNorm before conv_out",
    "DecoderSpec.conv": "diffusers' decoder has regular 3x3 convs",
    "DecoderSpec.conv_expansion": "applies to separable convs only (conv)",
    "DecoderSpec.sep_block": "applies to separable convs only (conv)",
    "DecoderSpec.shortcut": "diffusers' res blocks change width through a 1x1 conv shortcut",
}

_UNET_RULES = [
    (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.layers.\2.res."),
    (r"^down_blocks\.(\d+)\.attentions\.(\d+)\.", r"down.\1.layers.\2.attn."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample."),
    (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", r"up.\1.layers.\2.res."),
    (r"^up_blocks\.(\d+)\.attentions\.(\d+)\.", r"up.\1.layers.\2.attn."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.", r"up.\1.upsample."),
    (r"^mid_block\.resnets\.0\.", "mid.res_in."),
    (r"^mid_block\.resnets\.1\.", "mid.res_out."),
    (r"^mid_block\.attentions\.0\.", "mid.attn."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.transformer_blocks\.(\d+)\.", r".blocks.\1."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.ff\.net\.0\.proj\.", ".ff.proj_in."),
    (r"\.ff\.net\.2\.", ".ff.proj_out."),
    (r"^conv_norm_out\.", "norm_out."),
]

_DECODER_RULES = [
    (r"^decoder\.mid_block\.resnets\.(\d+)\.", r"mid.res.\1."),
    (r"^decoder\.mid_block\.attentions\.0\.group_norm\.", "mid.attn.norm."),
    (r"^decoder\.mid_block\.attentions\.0\.to_out\.0\.", "mid.attn.to_out."),
    (r"^decoder\.mid_block\.attentions\.0\.", "mid.attn."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"up.\1.res.\2."),
    (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"up.\1.upsample."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"^decoder\.conv_norm_out\.", "norm_out."),
    (r"^decoder\.", ""),
]


# Applied to a single ResnetBlock2DDreamLite's keys (no prefix) or, after _UNET_RULES, to a whole UNet's.
_DREAMLITE_RES_RULES = [
    (r"(^|\.)conv([12])\.depthwise\.", r"\1conv\2.dw."),
    (r"(^|\.)conv([12])\.pointwise\.", r"\1conv\2.pw."),
    (r"^conv_shortcut\.", "shortcut."),
]


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def unet_key_from_diffusers(key: str) -> str:
    """One UNet2DConditionModel (or DreamLiteUNetModel) parameter or module path -> ours."""
    return _rename(_rename(key + ".", _UNET_RULES), _DREAMLITE_RES_RULES).rstrip(".")


def unet_state_dict_from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, _UNET_RULES): v for k, v in sd.items()}


def resblock_state_dict_from_dreamlite(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `ResnetBlock2DDreamLite` state dict -> our `ResBlock(conv="separable", sep_block="uib")` keys."""
    return {_rename(k, _DREAMLITE_RES_RULES): v for k, v in sd.items()}


def dreamlite_res_blocks_from_unet(sd: Mapping[str, torch.Tensor], model: torch.nn.Module
                                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The res-block weights of a DreamLiteUNetModel state dict, renamed to `model`'s module paths.

    Returns (weights to `model.load_state_dict(weights, strict=False)`, our res-block keys left unfilled
    because DreamLite has no tensor of that name and shape there). Only `.res`, `.res_in`, `.res_out` keys are
    taken: the rest of the two models differ (see the module docstring).
    """
    ours = model.state_dict()
    picked = {}
    for k, v in sd.items():
        name = unet_key_from_diffusers(k)
        if re.search(r"\.(res|res_in|res_out)\.", name) and name in ours and ours[name].shape == v.shape:
            picked[name] = v
    missing = [k for k in ours if re.search(r"\.(res|res_in|res_out)\.", k) and k not in picked]
    return picked, missing


def decoder_state_dict_from_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Takes an AutoencoderKL state dict (or just its decoder part) and keeps the decoding path."""
    return {_rename(k, _DECODER_RULES): v for k, v in sd.items()
            if k.startswith("decoder.") or k.startswith("post_quant_conv.")}


def _per_stage(value: Any, n: int, name: str) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def unet_spec_from_diffusers(config: Mapping[str, Any]) -> UNetSpec:
    """A UNet2DConditionModel config (dict or FrozenDict) with the SDXL-style layout -> UNetSpec."""
    c = dict(config)
    channels = list(c["block_out_channels"])
    n = len(channels)
    if not c.get("use_linear_projection", False):
        raise SpecError("only use_linear_projection=True UNets (SDXL layout) map to a UNetSpec")
    if c.get("addition_embed_type") not in (None, "text_time"):
        raise SpecError(f"addition_embed_type={c.get('addition_embed_type')!r} is not supported (None or 'text_time')")
    if not c.get("flip_sin_to_cos", True) or c.get("freq_shift", 0) != 0:
        raise SpecError("only flip_sin_to_cos=True, freq_shift=0 timestep embeddings map to a UNetSpec")
    layers = _per_stage(c.get("layers_per_block", 2), n, "layers_per_block")
    depth = _per_stage(c.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
    heads = _per_stage(c.get("num_attention_heads") or c.get("attention_head_dim", 8), n, "heads")
    head_dims = {ch // h for ch, h in zip(channels, heads)}
    if len(head_dims) != 1:
        raise SpecError(f"heads {heads} give different head dims per stage; UNetSpec has one head_dim")
    stages = []
    for i, (ch, block) in enumerate(zip(channels, c["down_block_types"])):
        has_attn = "CrossAttn" in block
        d = depth[i] if has_attn else 0
        stages.append(StageSpec(ch, layers[i], layers[i] + 1, d, d, self_attention=True, cross_attention=True))
    pooled = 0
    size_cond = False
    if c.get("addition_embed_type") == "text_time":
        if c["addition_time_embed_dim"] != SIZE_COND_DIM:
            raise SpecError(f"addition_time_embed_dim={c['addition_time_embed_dim']} but SDXL's (and ours) is "
                            f"{SIZE_COND_DIM}")
        size_cond = True
        pooled = c["projection_class_embeddings_input_dim"] - 6 * c["addition_time_embed_dim"]
    time_embed_dim = c.get("time_embedding_dim") or 4 * channels[0]  # diffusers' default: 4 x the first width
    if time_embed_dim % channels[0]:
        raise SpecError(f"time_embedding_dim={time_embed_dim} is not a multiple of block_out_channels[0]="
                        f"{channels[0]}; UNetSpec has time_embed_ratio = time_embedding_dim / block_out_channels[0]")
    return UNetSpec(
        stages=tuple(stages), latent_channels=c.get("in_channels", 4),
        mid_block=c.get("mid_block_type", "UNetMidBlock2DCrossAttn") is not None, mid_transformer_depth=depth[-1],
        text_dim=c["cross_attention_dim"], pooled_dim=pooled, size_conditioning=size_cond,
        head_dim=head_dims.pop(), norm_groups=c.get("norm_num_groups", 32),
        time_embed_ratio=time_embed_dim // channels[0],
    )


def decoder_spec_from_diffusers(config: Mapping[str, Any]) -> DecoderSpec:
    c = dict(config)
    channels = tuple(c["block_out_channels"])
    return DecoderSpec(
        channels=channels, res_blocks=tuple(c.get("layers_per_block", 2) + 1 for _ in channels),
        latent_channels=c["latent_channels"], out_channels=c.get("out_channels", 3),
        mid_attention=c.get("mid_block_add_attention", True),
        post_quant_conv=c.get("use_post_quant_conv", True), norm_groups=c.get("norm_num_groups", 32),
    )


def diffusers_decoder_config(spec: DecoderSpec) -> dict[str, Any]:
    """The AutoencoderKL config whose decoder (and post_quant_conv) is `spec`: diffusers' layout only."""
    for field, ok in (("mid_res_blocks", spec.mid_res_blocks == 2), ("norm_stages", all(spec.norm_stages)),
                      ("norm_mid", spec.norm_mid), ("norm_out", spec.norm_out), ("conv", spec.conv == "regular"),
                      ("shortcut", spec.shortcut == "conv1x1")):
        if not ok:
            raise SpecError(f"{field}={getattr(spec, field)!r} has no diffusers AutoencoderKL equivalent")
    if len(set(spec.res_blocks)) != 1:
        raise SpecError(f"res_blocks={list(spec.res_blocks)}: diffusers' decoder has layers_per_block + 1 res "
                        f"blocks in every stage; give every stage the same count")
    n = len(spec.channels)
    return {
        "in_channels": spec.out_channels, "out_channels": spec.out_channels, "block_out_channels": list(spec.channels),
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "layers_per_block": spec.res_blocks[0] - 1, "latent_channels": spec.latent_channels,
        "norm_num_groups": spec.norm_groups, "mid_block_add_attention": spec.mid_attention,
        "use_quant_conv": spec.post_quant_conv, "use_post_quant_conv": spec.post_quant_conv,
    }


def diffusers_unet_config(spec: UNetSpec) -> dict[str, Any]:
    """The UNet2DConditionModel config of an SDXL-layout spec (regular convs, MHSA, no RoPE / QK norm)."""
    for field, ok in (("conv", spec.conv == "regular"), ("attention", spec.attention == "mhsa"),
                      ("qk_norm", spec.qk_norm == "none"), ("pos_embed", spec.pos_embed == "none"),
                      ("ffn_ratio", spec.ffn_ratio == 4)):
        if not ok:
            raise SpecError(f"{field}={getattr(spec, field)!r} has no diffusers UNet2DConditionModel equivalent")
    if not all(s.res_block and s.self_attention and s.cross_attention for s in spec.stages):
        raise SpecError("diffusers' blocks always have res blocks and both attentions")
    if any(s.up_layers != s.down_layers + 1 or s.down_transformer_depth != s.up_transformer_depth
           for s in spec.stages):
        raise SpecError("diffusers' UNet needs up_layers = down_layers + 1 and equal down/up depth")
    n = len(spec.stages)
    cfg = {
        "sample_size": 128, "in_channels": spec.latent_channels, "out_channels": spec.latent_channels,
        "block_out_channels": list(spec.channels),
        "layers_per_block": [s.down_layers for s in spec.stages],
        "down_block_types": ["CrossAttnDownBlock2D" if s.down_transformer_depth else "DownBlock2D"
                             for s in spec.stages],
        "up_block_types": ["CrossAttnUpBlock2D" if s.up_transformer_depth else "UpBlock2D"
                           for s in reversed(spec.stages)],
        "transformer_layers_per_block": [max(1, s.down_transformer_depth) for s in spec.stages],
        "attention_head_dim": [s.channels // spec.head_dim for s in spec.stages],
        "cross_attention_dim": spec.text_dim, "use_linear_projection": True,
        "norm_num_groups": spec.norm_groups,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if spec.mid_block else None,
    }
    if spec.time_embed_ratio != 4:  # diffusers' default is 4 x block_out_channels[0]
        cfg["time_embedding_dim"] = spec.time_embed_dim
    if spec.mid_transformer_depth != cfg["transformer_layers_per_block"][-1]:
        raise SpecError("diffusers ties the mid block depth to the last stage's transformer depth")
    if spec.size_conditioning:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=spec.pooled_dim + 6 * 256)
    elif spec.pooled_dim:
        raise SpecError("pooled conditioning without size conditioning has no diffusers equivalent")
    assert n == len(cfg["block_out_channels"])
    return cfg
