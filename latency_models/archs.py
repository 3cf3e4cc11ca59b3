"""Architectures of the published latency rows, rebuilt on the meta device from configs written out here.

Nothing is downloaded: every diffusers / transformers config below is copied by hand from the named
checkpoint's config file (architecture fields only; no weights are ever loaded), and the microbenchmarks are
built from the exact description their authors publish (data/large_models.md). `arch_source(arch, shape)`
maps an `arch` string of measurements.py to a `ModelSource`:

    torchvision:NAME  timm:NAME  preset:NAME  spec:PATH        (export.model_for)
    diffusers:sd21-unet                                         SD 2.1-base UNet (also SD 2-base: same config)
    transformers:distilbert | depth-anything-small | detr-r50-panoptic | sam2-hiera-b+ | edgetam
    microbench:convKxK-cC-lL | microbench:dwpw-cC-lL | microbench:attn-cC-hH-lL   (parametric: parse_microbench)
"""
from __future__ import annotations

import re

import torch
from torch import nn

from search_space import SpecError
from search_space.attention import Attention

# stabilityai/stable-diffusion-2-1-base, unet/config.json (diffusers); SD 2-base has the same UNet config.
SD21_UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "use_linear_projection": True,
    "norm_num_groups": 32, "act_fn": "silu", "upcast_attention": False,
}
SD_TOKENS, SD21_TEXT_DIM = 77, 1024

# distilbert-base-uncased(-finetuned-sst-2-english) config.json: the DistilBertConfig defaults, 2 labels.
DISTILBERT_CONFIG = {"vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
                     "max_position_embeddings": 512, "num_labels": 2}

# LiheYoung/depth-anything-small-hf config.json: DINOv2-S backbone (patch 14), DPT neck and relative-depth head.
DEPTH_ANYTHING_SMALL_CONFIG = {
    "backbone": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4,
                 "patch_size": 14, "image_size": 518, "out_indices": [9, 10, 11, 12],
                 "reshape_hidden_states": False, "apply_layernorm": True},
    "reassemble_hidden_size": 384, "reassemble_factors": [4, 2, 1, 0.5], "neck_hidden_sizes": [48, 96, 192, 384],
    "fusion_hidden_size": 64, "head_hidden_size": 32, "patch_size": 14, "depth_estimation_type": "relative",
}

# facebook/detr-resnet-50-panoptic config.json: ResNet-50 backbone, 6+6 layers of width 256, 100 queries.
DETR_R50_PANOPTIC_CONFIG = {"d_model": 256, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
                            "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
                            "num_queries": 100, "num_labels": 250}

# facebookresearch/sam2 sam2_hiera_b+.yaml: Hiera-B+ trunk (embed 112, 2 heads, stages 2-3-16-3, global
# attention in blocks 12, 16, 20, windows 8-4-14-7) and an FPN neck over [896, 448, 224, 112] channels.
SAM2_HIERA_B_PLUS = {"hidden_size": 112, "num_attention_heads": 2, "blocks_per_stage": [2, 3, 16, 3],
                     "embed_dim_per_stage": [112, 224, 448, 896], "num_attention_heads_per_stage": [2, 4, 8, 16],
                     "window_size_per_stage": [8, 4, 14, 7], "global_attention_blocks": [12, 16, 20],
                     "window_positional_embedding_background_size": [14, 14]}
SAM2_B_PLUS_CHANNELS = [896, 448, 224, 112]

# Published microbenchmarks (data/large_models.md): chains of identical convs, exactly as published. Their
# names are members of the parametric family below, so they rebuild through the same parser.
MICROBENCHES = {
    "conv3x3-c128-l20": (3, 128, 20),  # freedomtan/measure_ane_capacity: 20 x Conv2d(128, 128, 3), no bias
    "conv1x1-c512-l64": (1, 512, 64),  # maderix/ANE: 64 x Conv2d(512, 512, 1)
    "conv1x1-c512-l128": (1, 512, 128),  # maderix/ANE: 128 x Conv2d(512, 512, 1)
}


class ConvChain(nn.Module):
    """`layers` identical stride-1 convs (kernel k, `channels` in and out, same padding, no bias)."""

    def __init__(self, kernel: int, channels: int, layers: int):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
                                     for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class DwPwChain(nn.Module):
    """`layers` separable blocks: a depthwise 3x3 conv then a pointwise 1x1 conv, `channels` wide, no bias."""

    def __init__(self, channels: int, layers: int):
        super().__init__()
        blocks = []
        for _ in range(layers):
            blocks += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                       nn.Conv2d(channels, channels, 1, bias=False)]
        self.convs = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual on (batch, tokens, channels): the workbench's own
    attention block (search_space.attention.Attention), so a measured row calibrates the form the UNets use."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, None, heads, heads, channels // heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))


class _FirstOutput(nn.Module):
    """Calls a library model with keyword inputs and returns one tensor (what a Core ML export returns)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], pick):
        super().__init__()
        self.m, self.names, self.pick = model, names, pick

    def forward(self, *xs):
        return self.pick(self.m(**dict(zip(self.names, xs))))


def sd21_unet_source(batch: int, latent: int, device: str = "meta"):
    """The SD 2.1-base UNet from its diffusers config, with explicit attention math (ml-stable-diffusion
    converts it with SPLIT_EINSUM(_V2) attention: matmul + softmax, not a fused kernel)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from .export import ModelSource

    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG).eval()
    unet.set_attn_processor(AttnProcessor())
    x = torch.randn(batch, 4, latent, latent, device=device)
    t = torch.full((batch,), 500.0, device=device)
    ctx = torch.randn(batch, SD_TOKENS, SD21_TEXT_DIM, device=device)
    wrapped = _FirstOutput(unet, ("sample", "timestep", "encoder_hidden_states"), lambda o: o.sample)
    return ModelSource(wrapped.eval(), (x, t, ctx), "diffusers:sd21-unet", "SD 2.1-base UNet",
                       arch="diffusers:sd21-unet")


def _transformers_source(name: str, shape: tuple[int, ...], device: str):
    import transformers as tf

    from .export import ModelSource

    with torch.device(device):
        if name == "distilbert":
            model = tf.DistilBertForSequenceClassification(tf.DistilBertConfig(**DISTILBERT_CONFIG))
            inputs = (torch.zeros(shape, dtype=torch.long, device=device),)
            wrapped = _FirstOutput(model, ("input_ids",), lambda o: o.logits)
        elif name == "depth-anything-small":
            cfg = dict(DEPTH_ANYTHING_SMALL_CONFIG)
            backbone = tf.Dinov2Config(**cfg.pop("backbone"))
            model = tf.DepthAnythingForDepthEstimation(tf.DepthAnythingConfig(backbone_config=backbone, **cfg))
            inputs = (torch.randn(shape, device=device),)
            wrapped = _FirstOutput(model, ("pixel_values",), lambda o: o.predicted_depth)
        elif name == "detr-r50-panoptic":
            cfg = tf.DetrConfig(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
                                **DETR_R50_PANOPTIC_CONFIG)
            model = tf.DetrForSegmentation(cfg)
            inputs = (torch.randn(shape, device=device),)
            wrapped = _FirstOutput(model, ("pixel_values",), lambda o: o.pred_masks)
        elif name in ("sam2-hiera-b+", "edgetam"):
            model, inputs = _sam_family(name, shape, device)
            wrapped = _FirstOutput(model, ("pixel_values", "input_points", "input_labels"), lambda o: o.pred_masks)
        else:
            raise SpecError(f"no transformers architecture {name!r}; known: {', '.join(TRANSFORMERS_ARCHS)}")
    return ModelSource(wrapped.eval(), inputs, f"transformers:{name}", name, arch=f"transformers:{name}")


def _sam_family(name: str, shape: tuple[int, ...], device: str):
    """Promptable image segmentation: image encoder + one point prompt + mask decoder (the 'image' rows)."""
    import transformers as tf

    if name == "sam2-hiera-b+":
        vision = tf.Sam2VisionConfig(backbone_config=tf.Sam2HieraDetConfig(**SAM2_HIERA_B_PLUS),
                                     backbone_channel_list=SAM2_B_PLUS_CHANNELS)
        model = tf.Sam2Model(tf.Sam2Config(vision_config=vision))
    else:
        # EdgeTAM (facebookresearch/EdgeTAM edgetam.yaml): RepViT-M1 trunk (timm repvit_m1), SAM 2 neck / decoder.
        backbone = tf.TimmWrapperConfig(architecture="repvit_m1", model_args={"features_only": True,
                                                                                "out_indices": [0, 1, 2, 3]})
        vision = tf.EdgeTamVisionConfig(backbone_config=backbone)
        model = tf.EdgeTamModel(tf.EdgeTamConfig(vision_config=vision))
    pixels = torch.randn(shape, device=device)
    points = torch.full((shape[0], 1, 1, 2), 512.0, device=device)
    labels = torch.ones((shape[0], 1, 1), dtype=torch.long, device=device)
    return model.eval(), (pixels, points, labels)


_MICROBENCH_FORMS = (
    (re.compile(r"^conv(\d+)x(\d+)-c(\d+)-l(\d+)$"), "conv"),
    (re.compile(r"^dwpw-c(\d+)-l(\d+)$"), "dwpw"),
    (re.compile(r"^attn-c(\d+)-h(\d+)-l(\d+)$"), "attn"),
)
MICROBENCH_HELP = ("convKxK-cC-lL (L dense KxK convs, C channels; input 1xCxHxW), dwpw-cC-lL (L depthwise 3x3 + "
                   "pointwise 1x1 blocks; input 1xCxHxW), attn-cC-hH-lL (L self-attention blocks, H heads; input "
                   "1xTxC for T tokens), e.g. conv3x3-c256-l8")
MAX_MICROBENCH_LAYERS = 512  # a typo such as l8000 should fail at once, not build for minutes


def parse_microbench(name: str, shape: tuple[int, ...] | None = None) -> tuple[str, dict]:
    """"conv3x3-c256-l8" -> ("conv", {"kernel": 3, "channels": 256, "layers": 8}); checks `shape` against it.

    Any member of the family rebuilds from its name and input shape alone, so a planned measurement
    (latency_models/plan.py) can be exported, measured on a Mac and imported without a spec file.
    """
    for pattern, form in _MICROBENCH_FORMS:
        m = pattern.match(name)
        if m:
            break
    else:
        raise SpecError(f"no microbenchmark {name!r}; write one of {MICROBENCH_HELP}")
    nums = [int(g) for g in m.groups()]
    if form == "conv":
        if nums[0] != nums[1] or nums[0] % 2 == 0:
            raise SpecError(f"microbenchmark {name!r}: the kernel must be square and odd (same padding), e.g. "
                            f"conv3x3-c{nums[2]}-l{nums[3]}")
        kw = {"kernel": nums[0], "channels": nums[2], "layers": nums[3]}
    elif form == "dwpw":
        kw = {"channels": nums[0], "layers": nums[1]}
    else:
        kw = {"channels": nums[0], "heads": nums[1], "layers": nums[2]}
        if kw["heads"] < 1 or kw["channels"] % kw["heads"]:
            raise SpecError(f"microbenchmark {name!r}: {kw['channels']} channels do not split into {kw['heads']} "
                            f"heads; choose heads that divide the channels")
    if min(kw.values()) < 1 or kw["layers"] > MAX_MICROBENCH_LAYERS:
        raise SpecError(f"microbenchmark {name!r}: sizes must be positive and layers at most "
                        f"{MAX_MICROBENCH_LAYERS}")
    if shape is not None:
        want = (f"1x{kw['channels']}xHxW" if form != "attn" else f"1xTx{kw['channels']}")
        rank, ch = (4, shape[1] if len(shape) > 1 else None) if form != "attn" else (3, shape[-1])
        if len(shape) != rank or ch != kw["channels"]:
            raise SpecError(f"microbenchmark {name!r} takes an input shape like {want}, not "
                            f"{'x'.join(map(str, shape))}")
    return form, kw


def microbench_source(name: str, shape: tuple[int, ...], device: str):
    from .export import ModelSource

    form, kw = parse_microbench(name, shape)
    with torch.device(device):
        if form == "conv":
            module = ConvChain(kw["kernel"], kw["channels"], kw["layers"])
        elif form == "dwpw":
            module = DwPwChain(kw["channels"], kw["layers"])
        else:
            module = nn.Sequential(*[SelfAttention(kw["channels"], kw["heads"]) for _ in range(kw["layers"])])
    return ModelSource(module.eval(), (torch.randn(shape, device=device),), f"microbench:{name}", name,
                       arch=f"microbench:{name}")


def arch_source(arch: str, input_shape: tuple[int, ...], device: str = "meta"):
    """Rebuild a measured architecture (measurements.Measurement.arch) on `device`."""
    from .export import model_for

    kind, _, name = arch.partition(":")
    if kind == "torchvision":
        return model_for(torchvision=name, input_shape=input_shape, device=device)
    if kind == "timm":
        return model_for(timm=name, input_shape=input_shape, device=device)
    if kind in ("preset", "spec"):
        return model_for(name, latent=input_shape[-1], batch=input_shape[0], device=device)
    if arch == "diffusers:sd21-unet":
        return sd21_unet_source(input_shape[0], input_shape[-1], device)
    if kind == "transformers":
        return _transformers_source(name, input_shape, device)
    if kind == "microbench":
        return microbench_source(name, input_shape, device)
    raise SpecError(f"cannot rebuild architecture {arch!r}; use {ARCH_FORMS}")


TRANSFORMERS_ARCHS = ("distilbert", "depth-anything-small", "detr-r50-panoptic", "sam2-hiera-b+", "edgetam")
ARCH_FORMS = ("torchvision:NAME, timm:NAME, preset:NAME, spec:PATH, diffusers:sd21-unet, transformers:NAME "
              f"({', '.join(TRANSFORMERS_ARCHS)}) or microbench:NAME")


def check_arch(arch: str, input_shape: tuple[int, ...]) -> None:
    """Refuse an `arch` that `arch_source` could not rebuild at `input_shape`, without building it (a name
    lookup per kind), so that a measurement file is checked in seconds when it is imported."""
    from .export import parse_arch

    kind, _, name = arch.partition(":")
    if kind in ("torchvision", "timm"):
        import timm
        import torchvision

        known = (name and parse_arch(name)[0] in torchvision.models.list_models() if kind == "torchvision"
                 else name and timm.is_model(parse_arch(name)[0]))
        if not known:
            raise SpecError(f"{kind} has no model {name!r} (see {kind}'s model list)")
        if len(input_shape) != 4 or input_shape[1] != 3:
            raise SpecError(f"{arch} takes an RGB batch BATCHx3xHxW, not {'x'.join(map(str, input_shape))}")
    elif kind in ("preset", "spec"):
        from search_space import PRESETS, load_spec

        if kind == "preset" and name not in PRESETS:
            raise SpecError(f"unknown preset {name!r}; `pocketdiff presets list` shows them")
        if kind == "spec":
            load_spec(name)  # a missing or invalid spec file raises SpecError naming it
    elif kind == "transformers":
        if name not in TRANSFORMERS_ARCHS:
            raise SpecError(f"no transformers architecture {name!r}; known: {', '.join(TRANSFORMERS_ARCHS)}")
    elif kind == "microbench":
        parse_microbench(name, input_shape)
    elif arch != "diffusers:sd21-unet":
        raise SpecError(f"cannot rebuild architecture {arch!r}; use {ARCH_FORMS}")


def is_rebuildable(arch: str) -> bool:
    return bool(re.match(r"^(torchvision|timm|preset|spec|diffusers|transformers|microbench):", arch))
