"""Typed architecture specs for the UNet and the VAE decoder (docs/paper.md sections 1 and 2).

A spec is a frozen dataclass holding JSON-native values only (ints, floats, bools, strings, tuples of
those, nested stage specs), so specs hash, compare, serialise and name caches through `spec_id`.
Everything a builder needs is here; everything derived (heads, time-embedding width) is a property. The
fields and their views (compact token, diffusers key, cost) are tabled in docs/specs-and-presets.md.

Versioning: every serialised spec carries `schema` (SCHEMA_VERSION). `from_dict` reads older JSON through
`migrate_spec_dict` (schema 1 = no `schema` key: `mqa_in_cross_attention` was renamed, `sep_block` did not
exist). `spec_id` hashes the oldest spelling a spec has, so the ids of every stored cache, trial and
checkpoint written before a migration stay valid: see `_SpecBase.spec_id`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import SpecError
from .limits import (MAX_CHANNELS, MAX_DEPTH, MAX_LATENT_CHANNELS, MAX_RATIO, MAX_STAGES, check_number,
                     show)

CONV_TYPES = ("regular", "separable")
ATTENTION_TYPES = ("mhsa", "mqa", "gqa")
QK_NORMS = ("none", "rmsnorm", "layernorm")
POS_EMBEDS = ("none", "rope2d")
SHORTCUTS = ("conv1x1", "none")
SEP_BLOCKS = ("per_conv", "uib")

SCHEMA_VERSION = 2
# Schema history. Each entry: what changed, as data, so that migration and spec_id derive from one table.
# 1 -> 2: `mqa_in_cross_attention` renamed (it also governs GQA: it says whether the K/V sharing of
#         `attention` applies to cross-attention); `sep_block` added, "per_conv" is what schema 1 built.
RENAMED_FIELDS = {"mqa_in_cross_attention": "share_kv_in_cross_attention"}  # old name -> new name
ADDED_FIELDS = {"sep_block": "per_conv"}  # new field -> the value that builds what the older schema built

_log = logging.getLogger("pocketdiff.spec")
_noticed: set[str] = set()


def _notice_once(msg: str) -> None:
    """One line on stderr (logging's last-resort handler), once per process: old studies hold many specs."""
    if msg not in _noticed:
        _noticed.add(msg)
        _log.warning(msg)


def renamed_field(old: str, where: str) -> str:
    """The current name of the schema-1 field `old`, with a one-line notice naming `where` it was read."""
    new = RENAMED_FIELDS[old]
    msg = f"notice: {where} uses the old spec field name {old!r}; read as {new!r} (rename it to silence this)"
    _notice_once(msg)
    return new


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SpecError(msg)


# The stated range of every numeric field, by field name (UNetSpec, StageSpec and DecoderSpec alike; a list field's
# range is each entry's): low, high, whole number or not, a note. Checked on construction, so a spec from a JSON
# file, `--set` or a study trial gets them; a study file's knob values are checked against them at load
# (sampling.py). docs/spec-fields.md lists them.
FIELD_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "channels": (1, MAX_CHANNELS, True, ""),
    "down_layers": (1, MAX_DEPTH, True, ""),
    "up_layers": (1, MAX_DEPTH, True, ""),
    "down_transformer_depth": (0, MAX_DEPTH, True, ""),
    "up_transformer_depth": (0, MAX_DEPTH, True, ""),
    "latent_channels": (1, MAX_LATENT_CHANNELS, True, ""),
    "mid_transformer_depth": (0, MAX_DEPTH, True, ""),
    "conv_expansion": (1, MAX_RATIO, False, "(1 = no expansion)"),
    "ffn_ratio": (1, MAX_RATIO, False, ""),
    "kv_heads": (1, MAX_CHANNELS, True, ""),
    "head_dim": (1, MAX_CHANNELS, True, ""),
    "text_dim": (1, MAX_CHANNELS, True, ""),
    "pooled_dim": (0, MAX_CHANNELS, True, "(0 = no pooled conditioning)"),
    "norm_groups": (1, MAX_CHANNELS, True, ""),
    "time_embed_ratio": (1, MAX_RATIO, True, ""),
    "res_blocks": (1, MAX_DEPTH, True, ""),
    "out_channels": (1, MAX_LATENT_CHANNELS, True, ""),
    "mid_res_blocks": (0, MAX_DEPTH, True, ""),
}


def check_field(field: str, value, where: str | None = None) -> None:
    """`value` within the stated range of `field` (FIELD_RANGES), else SpecError naming `where` (the field)."""
    low, high, whole, note = FIELD_RANGES[field]
    check_number(value, where or field, low, high, whole=whole, unit=note, error=SpecError)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, f"{name}={value!r} is not one of {', '.join(options)}; pick one of those")


@dataclass(frozen=True)
class StageSpec:
    """One resolution stage of the UNet, used on the way down and (mirrored) on the way up.

    A stage is a list of layers; each layer is an optional residual block followed by an optional
    Transformer2D (a stack of `*_transformer_depth` transformer blocks), as in diffusers'
    CrossAttnDownBlock2D. `res_block=False` turns the stage's layers into transformer-only layers
    (SnapGen step f: condition injection in the first stage).
    """

    channels: int
    down_layers: int = 2
    up_layers: int = 3
    down_transformer_depth: int = 0
    up_transformer_depth: int = 0
    self_attention: bool = True
    cross_attention: bool = True
    res_block: bool = True

    def validate(self, where: str, norm_groups: int, head_dim: int) -> None:
        check_field("channels", self.channels, f"{where}.channels")
        _check(self.channels % norm_groups == 0,
               f"{where}.channels={self.channels} is not divisible by the {norm_groups} norm groups; "
               f"use a multiple of {norm_groups}")
        check_field("down_layers", self.down_layers, f"{where}.down_layers")
        check_field("up_layers", self.up_layers, f"{where}.up_layers")
        for side in ("down", "up"):
            depth = getattr(self, f"{side}_transformer_depth")
            check_field(f"{side}_transformer_depth", depth, f"{where}.{side}_transformer_depth")
            _check(self.res_block or depth > 0,
                   f"{where}: res_block=false needs {side}_transformer_depth >= 1, or the layer is empty")
        if self.has_transformer:
            _check(self.channels % head_dim == 0,
                   f"{where}.channels={self.channels} is not divisible by head_dim={head_dim}; "
                   f"heads = channels / head_dim must be whole")

    @property
    def has_transformer(self) -> bool:
        return self.down_transformer_depth > 0 or self.up_transformer_depth > 0


@dataclass(frozen=True)
class _SpecBase:
    kind: ClassVar[str] = ""

    def _normalize(self) -> None:
        """Lists -> tuples and ints -> floats where the field says so, so equal specs hash equal."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if str(f.type) == "float" and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, _float(v, f.name))
            elif isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, **_to_jsonable(dataclasses.asdict(self))}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps({"kind": self.kind, **self.to_dict()}, sort_keys=True, indent=indent)

    @property
    def spec_id(self) -> str:
        """Short hash of the canonical JSON: names caches, artifacts, checkpoints and trials.

        The hashed JSON is the spec in the oldest schema that can express it: `schema` is left out, a field
        added later (ADDED_FIELDS) is left out while it holds the value the older schema built, and a renamed
        field (RENAMED_FIELDS) hashes under its first name. So a spec stored before a schema change keeps its
        id, and a spec only a newer schema can express (sep_block="uib") hashes the new field as well and can
        never collide with an older one.
        """
        d = _to_jsonable(dataclasses.asdict(self))
        for name, legacy in ADDED_FIELDS.items():
            if name in d and d[name] == legacy:
                del d[name]
        for old, new in RENAMED_FIELDS.items():
            if new in d:
                d[old] = d.pop(new)
        canonical = json.dumps({"kind": self.kind, **d}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def replace(self, **changes: Any):
        for old in [k for k in changes if k in RENAMED_FIELDS]:
            changes[renamed_field(old, "replace()")] = changes.pop(old)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class UNetSpec(_SpecBase):
    """A latent-diffusion UNet: UNet(latents, timestep, text tokens[, pooled, time_ids]) -> velocity."""

    kind: ClassVar[str] = "unet"

    stages: tuple[StageSpec, ...]
    latent_channels: int = 4
    mid_block: bool = True
    mid_transformer_depth: int = 1
    conv: str = "regular"
    conv_expansion: float = 1.0
    sep_block: str = "per_conv"
    """How a separable residual block realises `conv_expansion` e (SnapGen step c2 reads both ways).

    "per_conv": each of the block's two convs is DW(C) -> PW(C -> eC) -> SiLU -> PW(eC -> C), four pointwise
    layers per block (the schema-1 build). "uib": the block is one inverted bottleneck, MobileNetV4's UIB
    "ExtraDW" as diffusers' `ResnetBlock2DDreamLite` does it: DW(C_in) -> PW(C_in -> eC), time embedding +
    GroupNorm + SiLU at eC, DW(eC) -> PW(eC -> C); its separable convs have no bias, like DreamLite's.
    Where the expansion applies: UNet res blocks (down, mid, up) in both readings; UNet down/upsamplers
    never (plain DW + PW); decoder res blocks in both readings; decoder upsamplers only under "per_conv"
    (a single conv has no pair for an inverted bottleneck to span, so under "uib" they are plain DW + PW).
    With conv="regular" there is no separable block and the field is set to "per_conv", so one model
    has one spec_id.
    """
    ffn_ratio: float = 4.0
    attention: str = "mhsa"
    kv_heads: int | None = None
    share_kv_in_cross_attention: bool = False
    """Whether the K/V sharing of `attention` (MQA: one K/V head, GQA: `kv_heads`) also applies to
    cross-attention; false keeps one K/V head per query head there. Named `mqa_in_cross_attention` in
    schema 1 (still read, with a notice)."""
    head_dim: int = 64
    qk_norm: str = "none"
    pos_embed: str = "none"
    text_dim: int = 2048
    pooled_dim: int = 0
    size_conditioning: bool = False
    norm_groups: int = 32
    time_embed_ratio: int = 4

    def __post_init__(self) -> None:
        self._normalize()
        if self.conv == "regular":  # the reading of a separable block means nothing without one
            object.__setattr__(self, "sep_block", "per_conv")
        self.validate()

    @property
    def mqa_in_cross_attention(self) -> bool:
        """Schema-1 name of `share_kv_in_cross_attention`, kept so older callers keep working."""
        renamed_field("mqa_in_cross_attention", "code")
        return self.share_kv_in_cross_attention

    def validate(self) -> None:
        _check(isinstance(self.stages, tuple) and len(self.stages) >= 1,
               "stages must be a non-empty list of stage specs")
        _check(len(self.stages) <= MAX_STAGES, f"stages has {len(self.stages)} entries; at most {MAX_STAGES}")
        check_field("latent_channels", self.latent_channels)
        check_field("norm_groups", self.norm_groups)
        check_field("head_dim", self.head_dim)
        check_field("conv_expansion", self.conv_expansion)
        check_field("ffn_ratio", self.ffn_ratio)
        if self.kv_heads is not None:
            check_field("kv_heads", self.kv_heads)
        check_field("text_dim", self.text_dim)
        check_field("pooled_dim", self.pooled_dim)
        check_field("mid_transformer_depth", self.mid_transformer_depth)
        check_field("time_embed_ratio", self.time_embed_ratio)
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]", self.norm_groups, self.head_dim)
        _choice("conv", self.conv, CONV_TYPES)
        _check(self.conv == "separable" or self.conv_expansion == 1,
               f"conv_expansion={self.conv_expansion} only applies to conv='separable'; set it to 1")
        _choice("sep_block", self.sep_block, SEP_BLOCKS)
        if self.sep_block == "uib":
            widths = [(f"stages[{i}]", s.channels) for i, s in enumerate(self.stages) if s.res_block]
            if self.mid_block:
                widths.append(("the mid block", self.stages[-1].channels))
            _check_uib_groups(widths, self.conv_expansion, self.norm_groups)
        _choice("attention", self.attention, ATTENTION_TYPES)
        if self.attention == "gqa":
            _check(self.kv_heads is not None,
                   "attention='gqa' needs kv_heads >= 1 (the number of shared key/value heads)")
            for i, stage in enumerate(self.stages):
                if stage.has_transformer:
                    heads = stage.channels // self.head_dim
                    _check(heads % self.kv_heads == 0,
                           f"kv_heads={self.kv_heads} does not divide the {heads} heads of stages[{i}]; "
                           f"pick a divisor of {heads}")
        else:
            _check(self.kv_heads is None, f"kv_heads only applies to attention='gqa'; remove it "
                                          f"(attention={self.attention!r})")
        _choice("qk_norm", self.qk_norm, QK_NORMS)
        _choice("pos_embed", self.pos_embed, POS_EMBEDS)
        if self.pos_embed == "rope2d":
            _check(self.head_dim % 4 == 0, f"pos_embed='rope2d' needs head_dim divisible by 4, got {self.head_dim}")
        if self.mid_block and self.mid_transformer_depth > 0:
            _check(self.stages[-1].channels % self.head_dim == 0,
                   f"the mid block's width {self.stages[-1].channels} is not divisible by head_dim={self.head_dim}")
        skips = sum(s.down_layers for s in self.stages) + len(self.stages)
        ups = sum(s.up_layers for s in self.stages)
        _check(ups == skips,
               f"the up path has {ups} layers but the down path saves {skips} skip connections "
               f"(conv_in + one per down layer + one per downsample); make sum(up_layers) = {skips}, "
               f"e.g. up_layers = down_layers + 1 in every stage")

    # Derived values
    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(s.channels for s in self.stages)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embed_ratio * self.stages[0].channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.stages) - 1)

    def heads(self, channels: int) -> int:
        return channels // self.head_dim

    def kv_heads_for(self, channels: int, cross: bool = False) -> int:
        heads = self.heads(channels)
        if cross and not self.share_kv_in_cross_attention:
            return heads
        return {"mhsa": heads, "mqa": 1, "gqa": self.kv_heads or heads}[self.attention]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UNetSpec":
        d = migrate_spec_dict(_strip_kind(d, cls.kind))
        _reject_unknown(cls, d, "UNetSpec")
        _check("stages" in d, "UNetSpec needs 'stages'")
        _check(isinstance(d["stages"], (list, tuple)) and len(d["stages"]) > 0,
               f"stages = {d['stages']!r} must be a non-empty list of stage objects (set one stage's field "
               f"with stages.1.channels=..., not stages=...)")
        stages = []
        for i, s in enumerate(d["stages"]):
            _check(isinstance(s, dict), f"stages[{i}] must be an object with keys like 'channels'")
            _reject_unknown(StageSpec, s, f"stages[{i}]")
            stages.append(StageSpec(**_typed(StageSpec, s, f"stages[{i}]")))
        rest = _typed(cls, {k: v for k, v in d.items() if k != "stages"}, "UNetSpec")
        return cls(stages=tuple(stages), **rest)


@dataclass(frozen=True)
class DecoderSpec(_SpecBase):
    """A VAE decoder: Decoder(latents) -> image, laid out like diffusers' `Decoder`.

    `channels` and `res_blocks` are listed from the highest resolution (output side) to the lowest, the
    order of diffusers' `block_out_channels`. Decoding walks them backwards with an upsampler between
    stages. GroupNorm can be kept per stage, in the mid block and before the output conv.
    """

    kind: ClassVar[str] = "decoder"

    channels: tuple[int, ...]
    res_blocks: tuple[int, ...]
    latent_channels: int = 16
    out_channels: int = 3
    mid_res_blocks: int = 2
    mid_attention: bool = True
    norm_stages: tuple[bool, ...] = ()
    norm_mid: bool = True
    norm_out: bool = True
    conv: str = "regular"
    conv_expansion: float = 1.0
    sep_block: str = "per_conv"
    """Reading of a separable res block, as `UNetSpec.sep_block` (which states where the expansion applies:
    here res blocks in both readings, the upsamplers' conv only under "per_conv")."""
    shortcut: str = "conv1x1"
    post_quant_conv: bool = False
    norm_groups: int = 32

    def __post_init__(self) -> None:
        self._normalize()
        if not self.norm_stages:  # default: GroupNorm everywhere, like diffusers
            object.__setattr__(self, "norm_stages", tuple(True for _ in self.channels))
        if self.conv == "regular":  # as UNetSpec: no separable block, nothing to read two ways
            object.__setattr__(self, "sep_block", "per_conv")
        self.validate()

    def validate(self) -> None:
        n = len(self.channels)
        _check(1 <= n <= MAX_STAGES, f"channels lists {n} stage widths; give 1 to {MAX_STAGES}")
        _check(len(self.res_blocks) == n,
               f"res_blocks has {len(self.res_blocks)} entries but channels has {n}; give one per stage")
        _check(len(self.norm_stages) == n,
               f"norm_stages has {len(self.norm_stages)} entries but channels has {n}; give one per stage")
        for i, (c, r) in enumerate(zip(self.channels, self.res_blocks)):
            check_field("channels", c, f"channels[{i}]")
            check_field("res_blocks", r, f"res_blocks[{i}]")
            if self.norm_stages[i]:
                _check(c % self.norm_groups == 0,
                       f"channels[{i}]={c} is not divisible by the {self.norm_groups} norm groups; "
                       f"use a multiple of {self.norm_groups} or set norm_stages[{i}]=false")
        check_field("mid_res_blocks", self.mid_res_blocks)
        check_field("norm_groups", self.norm_groups)
        check_field("latent_channels", self.latent_channels)
        check_field("out_channels", self.out_channels)
        check_field("conv_expansion", self.conv_expansion)
        _check(not self.mid_attention or self.mid_res_blocks >= 1,
               "mid_attention=true needs mid_res_blocks >= 1")
        if self.mid_res_blocks and self.norm_mid:
            _check(self.channels[-1] % self.norm_groups == 0,
                   f"mid width channels[-1]={self.channels[-1]} is not divisible by {self.norm_groups} norm groups")
        if self.norm_out:
            _check(self.channels[0] % self.norm_groups == 0,
                   f"output width channels[0]={self.channels[0]} is not divisible by {self.norm_groups} norm groups")
        _choice("conv", self.conv, CONV_TYPES)
        _check(self.conv == "separable" or self.conv_expansion == 1,
               f"conv_expansion={self.conv_expansion} only applies to conv='separable'; set it to 1")
        _choice("sep_block", self.sep_block, SEP_BLOCKS)
        if self.sep_block == "uib":
            widths = [(f"channels[{i}]", c) for i, c in enumerate(self.channels) if self.norm_stages[i]]
            if self.mid_res_blocks and self.norm_mid:
                widths.append(("the mid block", self.channels[-1]))
            _check_uib_groups(widths, self.conv_expansion, self.norm_groups)
        _choice("shortcut", self.shortcut, SHORTCUTS)

    @property
    def upsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecoderSpec":
        d = migrate_spec_dict(_strip_kind(d, cls.kind))
        _reject_unknown(cls, d, "DecoderSpec")
        return cls(**_typed(cls, d, "DecoderSpec"))


Spec = UNetSpec | DecoderSpec


def spec_from_dict(d: dict[str, Any]) -> Spec:
    """Build a UNetSpec or DecoderSpec from its dict; 'kind' picks which (default: by its keys)."""
    _check(isinstance(d, dict), f"a spec must be a JSON object (keys like 'stages', 'kind'), not a "
                                f"{type(d).__name__}")
    kind = d.get("kind") or ("unet" if "stages" in d else "decoder")
    _check(kind in ("unet", "decoder"), f"kind={kind!r} is not 'unet' or 'decoder'")
    return UNetSpec.from_dict(d) if kind == "unet" else DecoderSpec.from_dict(d)


def migrate_spec_dict(d: dict[str, Any], where: str = "spec JSON") -> dict[str, Any]:
    """A spec dict of any schema (no `schema` key = 1) -> the current schema's dict, without `schema`.

    Renamed fields are read under their new name with a one-line notice; fields added since then are
    absent and take their defaults, which are the values that build what the older schema built
    (ADDED_FIELDS). `spec_id` is unchanged by the migration (see `_SpecBase.spec_id`).
    """
    d = dict(d)
    schema = d.pop("schema", 1)
    _check(isinstance(schema, int) and not isinstance(schema, bool) and schema >= 1,
           f"{where}: schema={schema!r} must be a whole number >= 1")
    _check(schema <= SCHEMA_VERSION,
           f"{where}: schema {schema} is newer than this pocketdiff reads ({SCHEMA_VERSION}); update pocketdiff")
    for old in [k for k in d if k in RENAMED_FIELDS]:
        new = RENAMED_FIELDS[old]
        _check(new not in d, f"{where}: both {old!r} (schema 1) and {new!r} are given; keep only {new!r}")
        d[renamed_field(old, where)] = d.pop(old)
    return d


# --- helpers -------------------------------------------------------------------------------------------

def _check_uib_groups(widths: list[tuple[str, int]], expansion: float, groups: int) -> None:
    """sep_block="uib" normalises the expanded width round(e * C): it must split into the norm groups."""
    for where, c in widths:
        hidden = int(round(expansion * c))
        _check(hidden % groups == 0,
               f"sep_block='uib': {where} expands {c} -> {hidden} channels (conv_expansion={expansion:g}), "
               f"not divisible by the {groups} norm groups; pick an expansion with e * {c} a multiple of {groups}")


def _float(v: int | float, where: str) -> float:
    """An int as a float field's value; one past float's range is refused here, not as an OverflowError."""
    try:
        return float(v)
    except OverflowError:
        raise SpecError(f"{where}={show(v)} must be a finite number") from None


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    return x


def _strip_kind(d: dict[str, Any], kind: str) -> dict[str, Any]:
    _check(isinstance(d, dict), f"a {kind} spec must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    k = d.pop("kind", kind)
    _check(k == kind, f"kind={k!r} but a {kind} spec was expected")
    return d


def _reject_unknown(cls: type, d: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    _check(not unknown, f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")


def _typed(cls: type, d: dict[str, Any], where: str) -> dict[str, Any]:
    """Coerce JSON values to the dataclass field types (lists -> tuples) and type-check them."""
    out = {}
    fields = dataclasses.fields(cls)
    hints = {f.name: f.type for f in fields}
    missing = [f.name for f in fields if f.name not in d and f.name != "stages"
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _check(not missing, f"{where} is missing {', '.join(missing)} (every field without a default must be given)")
    for k, v in d.items():
        t = str(hints[k])
        out[k] = _coerce(v, t, f"{where}.{k}")
    return out


def _coerce(v: Any, t: str, where: str) -> Any:
    if t.startswith("tuple[bool"):
        _check(isinstance(v, (list, tuple)) and all(isinstance(x, bool) for x in v),
               f"{where} must be a list of true/false, got {v!r}")
        return tuple(v)
    if t.startswith("tuple[int"):
        _check(isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
               f"{where} must be a list of integers, got {v!r}")
        return tuple(v)
    if t == "bool":
        _check(isinstance(v, bool), f"{where} must be true or false, got {v!r}")
        return v
    if t == "int":
        _check(isinstance(v, int) and not isinstance(v, bool), f"{where} must be an integer, got {v!r}")
        return v
    if t == "int | None":
        _check(v is None or (isinstance(v, int) and not isinstance(v, bool)),
               f"{where} must be an integer or null, got {v!r}")
        return v
    if t == "float":
        _check(isinstance(v, (int, float)) and not isinstance(v, bool), f"{where} must be a number, got {v!r}")
        return _float(v, where)
    if t == "str":
        _check(isinstance(v, str), f"{where} must be a string, got {v!r}")
        return v
    return v
