"""The field checklist: every field of every spec is known to every view of a spec (docs/adding-a-knob.md).

Fields are found with `dataclasses.fields`, recursively (UNetSpec.stages -> StageSpec), so a new field is
checked without being named here. For each field, a tiny spec that gives it a value other than its default
(VARIATIONS) must
- round-trip through the compact string (search_space/compact.py),
- map to a diffusers config and back, building diffusers' model with our outputs, or be refused by it and
  listed with the reason in DIFFUSERS_REFUSALS (search_space/diffusers_compat.py),
- change the op trace or the parameters of the tiny model (the one walk that cost and latency read), with the
  MAC walker still equal to fvcore's count, or be listed in NO_COST_FIELDS below with the reason,
- have a row in the field table, docs/spec-fields.md.
A new field fails here, naming itself and the view that does not know it, until every view does.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Callable

import pytest
import torch

from evaluators.cost import count_macs_fvcore, count_macs_torch
from latency_models.api import model_features
from search_space import DecoderSpec, Spec, StageSpec, UNetSpec, apply_overrides, build_model, example_inputs
from search_space.compact import decode, encode
from search_space.diffusers_compat import (
    DIFFUSERS_REFUSALS, decoder_spec_from_diffusers, decoder_state_dict_from_diffusers, diffusers_decoder_config,
    diffusers_unet_config, unet_spec_from_diffusers, unet_state_dict_from_diffusers,
)
from search_space.errors import SpecError

FIELD_TABLE = Path(__file__).resolve().parents[2] / "docs" / "spec-fields.md"

# SDXL-layout tiny specs: every field at a value diffusers maps, so a field's change alone decides the mapping.
BASE_UNET = UNetSpec(stages=(StageSpec(32, 1, 2, 1, 1), StageSpec(64, 1, 2, 1, 1)), latent_channels=4,
                     mid_transformer_depth=1, head_dim=16, text_dim=32, norm_groups=8)
BASE_DECODER = DecoderSpec(channels=(16, 32), res_blocks=(2, 2), latent_channels=4, norm_groups=8)

# "Spec.field" -> (context, change): `context` (`--set` overrides of the base) makes the field matter (kv_heads
# needs attention="gqa"); `change` then gives it a value other than the context's and its default, with the
# companion changes a valid spec needs (a down layer more needs an up layer more).
Change = tuple[str, ...] | Callable[[Spec], Spec]
VARIATIONS: dict[str, tuple[tuple[str, ...], Change]] = {
    "UNetSpec.stages": ((), lambda s: s.replace(stages=s.stages[:1])),
    "StageSpec.channels": ((), ("stages.1.channels=96",)),
    "StageSpec.down_layers": ((), ("stages.1.down_layers=2", "stages.1.up_layers=3")),
    "StageSpec.up_layers": ((), ("stages.0.down_layers=2", "stages.0.up_layers=3")),
    "StageSpec.down_transformer_depth": ((), ("stages.0.down_transformer_depth=2", "stages.0.up_transformer_depth=2")),
    "StageSpec.up_transformer_depth": ((), ("stages.0.up_transformer_depth=2",)),
    "StageSpec.self_attention": ((), ("stages.0.self_attention=false",)),
    "StageSpec.cross_attention": ((), ("stages.0.cross_attention=false",)),
    "StageSpec.res_block": ((), ("stages.0.res_block=false",)),
    "UNetSpec.latent_channels": ((), ("latent_channels=8",)),
    "UNetSpec.mid_block": ((), ("mid_block=false",)),
    "UNetSpec.mid_transformer_depth": (("stages.1.down_transformer_depth=2", "stages.1.up_transformer_depth=2"),
                                       ("mid_transformer_depth=2",)),
    "UNetSpec.conv": ((), ("conv=separable",)),
    "UNetSpec.conv_expansion": (("conv=separable",), ("conv_expansion=2",)),
    "UNetSpec.sep_block": (("conv=separable", "conv_expansion=2"), ("sep_block=uib",)),
    "UNetSpec.ffn_ratio": ((), ("ffn_ratio=3",)),
    "UNetSpec.attention": ((), ("attention=mqa",)),
    "UNetSpec.kv_heads": (("attention=gqa", "kv_heads=1"), ("kv_heads=2",)),
    "UNetSpec.share_kv_in_cross_attention": (("attention=mqa",), ("share_kv_in_cross_attention=true",)),
    "UNetSpec.head_dim": ((), ("head_dim=32",)),
    "UNetSpec.qk_norm": ((), ("qk_norm=rmsnorm",)),
    "UNetSpec.pos_embed": ((), ("pos_embed=rope2d",)),
    "UNetSpec.text_dim": ((), ("text_dim=48",)),
    "UNetSpec.pooled_dim": (("size_conditioning=true",), ("pooled_dim=24",)),
    "UNetSpec.size_conditioning": ((), ("size_conditioning=true",)),
    "UNetSpec.norm_groups": ((), ("norm_groups=16",)),
    "UNetSpec.time_embed_ratio": ((), ("time_embed_ratio=2",)),
    "DecoderSpec.channels": ((), ("channels.1=64",)),
    "DecoderSpec.res_blocks": ((), ("res_blocks.0=3", "res_blocks.1=3")),
    "DecoderSpec.latent_channels": ((), ("latent_channels=8",)),
    "DecoderSpec.out_channels": ((), ("out_channels=4",)),
    "DecoderSpec.mid_res_blocks": ((), ("mid_res_blocks=1",)),
    "DecoderSpec.mid_attention": ((), ("mid_attention=false",)),
    "DecoderSpec.norm_stages": ((), ("norm_stages.0=false",)),
    "DecoderSpec.norm_mid": ((), ("norm_mid=false",)),
    "DecoderSpec.norm_out": ((), ("norm_out=false",)),
    "DecoderSpec.conv": ((), ("conv=separable",)),
    "DecoderSpec.conv_expansion": (("conv=separable",), ("conv_expansion=2",)),
    "DecoderSpec.sep_block": (("conv=separable", "conv_expansion=2"), ("sep_block=uib",)),
    "DecoderSpec.shortcut": ((), ("shortcut=none",)),
    "DecoderSpec.post_quant_conv": ((), ("post_quant_conv=true",)),
    "DecoderSpec.norm_groups": ((), ("norm_groups=16",)),
}

# Fields whose change leaves the op trace and the parameters as they were (a name, a schema tag), and why. None
# today: even norm_groups shows in the trace (the bytes of GroupNorm's per-group statistics).
NO_COST_FIELDS: dict[str, str] = {}


def spec_fields() -> list[str]:
    """"Spec.field" for every field of UNetSpec and DecoderSpec and of the specs nested in them (StageSpec)."""
    found: list[str] = []

    def walk(cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            found.append(f"{cls.__name__}.{f.name}")
            for inner in typing.get_args(hints[f.name]):
                if dataclasses.is_dataclass(inner) and not any(x.startswith(inner.__name__ + ".") for x in found):
                    walk(inner)

    walk(UNetSpec)
    walk(DecoderSpec)
    return found


FIELDS = spec_fields()


def _values(spec: Spec, field: str) -> tuple:
    cls, name = field.split(".")
    if cls == "StageSpec":
        return tuple(getattr(s, name) for s in spec.stages)
    return (getattr(spec, name),)


def _default(field: str):
    cls, name = field.split(".")
    f = next(f for f in dataclasses.fields({"UNetSpec": UNetSpec, "StageSpec": StageSpec,
                                            "DecoderSpec": DecoderSpec}[cls]) if f.name == name)
    return f.default


def _variant(field: str) -> tuple[Spec, Spec, str]:
    """(context spec, the spec with the field changed, the change as text) of a field's VARIATIONS entry."""
    if field not in VARIATIONS:
        pytest.fail(f"{field}: no entry in VARIATIONS (tests/search_space/test_fields.py); add (context, change) "
                    f"giving it a non-default value, so that the compact, diffusers and cost views can be checked")
    context, change = VARIATIONS[field]
    base = BASE_DECODER if field.startswith("DecoderSpec.") else BASE_UNET
    ctx = apply_overrides(base, context)
    variant = change(ctx) if callable(change) else apply_overrides(ctx, change)
    text = "a callable" if callable(change) else " ".join(change)
    assert _values(variant, field) != _values(ctx, field), f"{field}: VARIATIONS' change {text} does not change it"
    default = _default(field)
    assert default is dataclasses.MISSING or any(v != default for v in _values(variant, field)), \
        f"{field}: VARIATIONS' change {text} leaves it at its default {default!r}"
    return ctx, variant, text


def test_every_field_has_a_variation_and_nothing_else_does():
    assert len(FIELDS) == len(set(FIELDS)) and "StageSpec.channels" in FIELDS and "DecoderSpec.shortcut" in FIELDS
    stale = sorted(set(VARIATIONS) - set(FIELDS))
    assert not stale, f"VARIATIONS names fields that no spec has: {stale}"
    missing = [f for f in FIELDS if f not in VARIATIONS]
    assert not missing, f"fields without an entry in VARIATIONS: {missing}"


def test_the_refusal_and_no_cost_tables_name_real_fields():
    assert not set(DIFFUSERS_REFUSALS) - set(FIELDS), "DIFFUSERS_REFUSALS names fields that no spec has"
    assert not set(NO_COST_FIELDS) - set(FIELDS), "NO_COST_FIELDS names fields that no spec has"


@pytest.mark.parametrize("field", FIELDS)
def test_compact_string_carries_the_field(field):
    ctx, variant, change = _variant(field)
    s = encode(variant)
    assert s != encode(ctx), f"{field}: the compact string does not show it ({change} gives {s!r} either way); " \
                             f"add a token to search_space/compact.py"
    assert decode(s) == variant, f"{field}: {s!r} decodes to another spec; read its token in search_space/compact.py"


def _to_diffusers(spec: Spec) -> dict:
    return diffusers_unet_config(spec) if isinstance(spec, UNetSpec) else diffusers_decoder_config(spec)


def _from_diffusers(config: dict) -> Spec:
    return unet_spec_from_diffusers(config) if "cross_attention_dim" in config else decoder_spec_from_diffusers(config)


@pytest.mark.parametrize("field", FIELDS)
def test_diffusers_maps_or_refuses_the_field(field):
    _, variant, change = _variant(field)
    try:
        config = _to_diffusers(variant)
    except SpecError as e:
        assert field in DIFFUSERS_REFUSALS, \
            f"{field}: diffusers refuses {change} ({e}), but DIFFUSERS_REFUSALS (search_space/diffusers_compat.py) " \
            f"does not list it; add it with the reason"
        return
    assert field not in DIFFUSERS_REFUSALS, f"{field} is in DIFFUSERS_REFUSALS, but {change} maps to diffusers"
    back = _from_diffusers(config)
    assert back == variant, \
        f"{field}: the diffusers config of {change} reads back as another spec (spec_id {back.spec_id}, not " \
        f"{variant.spec_id}): write it to a config key and read it back in search_space/diffusers_compat.py, " \
        f"or refuse it there and list it in DIFFUSERS_REFUSALS"


@pytest.mark.parametrize("field", [f for f in FIELDS if f not in DIFFUSERS_REFUSALS])
def test_a_mapped_field_builds_diffusers_model_with_our_outputs(field):
    diffusers = pytest.importorskip("diffusers")
    _, variant, change = _variant(field)
    config = _to_diffusers(variant)
    torch.manual_seed(0)
    if isinstance(variant, UNetSpec):
        ref = diffusers.UNet2DConditionModel(**config).eval()
        rename = unet_state_dict_from_diffusers
    else:
        ref = diffusers.AutoencoderKL(**config).eval()
        rename = decoder_state_dict_from_diffusers
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    ours = build_model(variant).eval()
    ours.load_state_dict(rename(ref.state_dict()), strict=True)
    inputs = example_inputs(variant, latent=8, text_tokens=5)
    with torch.no_grad():
        if isinstance(variant, UNetSpec):
            x, t, tokens, pooled, time_ids = inputs
            pooled = x.new_zeros(x.shape[0], 0) if pooled is None else pooled  # diffusers reads an empty one
            added = {"text_embeds": pooled, "time_ids": time_ids} if variant.size_conditioning else None
            expected = ref(x, t, tokens, added_cond_kwargs=added).sample
        else:
            expected = ref.decode(inputs[0]).sample
        got = ours(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4,
                               msg=lambda m: f"{field}: {change} builds a different model in diffusers: {m}")


def _cost_view(spec: Spec) -> tuple:
    """The one op trace of the tiny model (per-op class, FLOPs, bytes, MACs, module) and its parameters by name:
    what the cost evaluator and the latency features read."""
    feats = model_features(spec, None, latent=8, batch=1)[0]
    return feats.ops, feats.params


@pytest.mark.parametrize("field", FIELDS)
def test_changing_the_field_changes_the_op_trace_or_is_listed(field):
    ctx, variant, change = _variant(field)
    same = _cost_view(ctx) == _cost_view(variant)
    if field in NO_COST_FIELDS:
        assert same, f"{field} is in NO_COST_FIELDS, but {change} changes the op trace or the parameters"
    else:
        assert not same, f"{field}: {change} changes neither the op trace nor the parameters of a tiny model; " \
                         f"count it in the trace (the builder or evaluators/cost.py), or list it in " \
                         f"NO_COST_FIELDS (tests/search_space/test_fields.py) with the reason"
    torch.manual_seed(0)
    model = build_model(variant)
    inputs = example_inputs(variant, latent=8, text_tokens=5)
    ours, fvcore = count_macs_torch(model, inputs), count_macs_fvcore(model, inputs)
    assert ours.total == fvcore.total, \
        f"{field}: with {change} the MAC walker counts {ours.total} and fvcore {fvcore.total} (per op: " \
        f"{ours.per_op} vs {fvcore.per_op}); teach one of them the new op (evaluators/cost.py)"


def _table_rows() -> dict[str, list[str]]:
    """"Spec.field" -> the cells of its row in docs/spec-fields.md (| `field` | Spec | meaning | ... |)."""
    rows = {}
    for line in FIELD_TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if line.startswith("|") and len(cells) == 6 else None
        if m:
            rows[f"{cells[1]}.{m.group(1)}"] = cells
    return rows


@pytest.mark.parametrize("field", FIELDS)
def test_the_field_table_documents_the_field(field):
    rows = _table_rows()
    assert field in rows, f"{field}: no row in {FIELD_TABLE.relative_to(FIELD_TABLE.parents[1])}; add " \
                          f"| `{field.split('.')[1]}` | {field.split('.')[0]} | meaning | token | diffusers | cost |"
    _, _, _, _, diffusers, cost = rows[field]
    assert diffusers.startswith("refused") == (field in DIFFUSERS_REFUSALS), \
        f"{field}: the table's diffusers cell ({diffusers!r}) disagrees with DIFFUSERS_REFUSALS"
    assert cost.startswith("none") == (field in NO_COST_FIELDS), \
        f"{field}: the table's cost cell ({cost!r}) disagrees with NO_COST_FIELDS"
