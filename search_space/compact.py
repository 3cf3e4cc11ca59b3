"""Compact string form of a spec (timm's block strings): a view for logs, tables and the CLI.

UNet:    unet_lat16_c256d1u2t1.1x!r-c512d2u3t2.2x-c896d2u3t4.4sx_mid4_sep2_ffn3_mqa_xkv_hd64_qkrms_rope_txt768_pool0_g32_te4
Decoder: dec_lat16_out3_c92r1-c128r2n-c128r2n-c128r2n_mid2n_sep2_scnone_g32

Stage tokens (joined by '-'): c<channels> d<down layers> u<up layers> t<down depth>.<up depth>, then flags:
s = self-attention, x = cross-attention, !r = no res block (UNet); r<res blocks>, n = GroupNorm (decoder).
Conv token: reg (regular), sep<e> (separable, sep_block "per_conv"), uib<e> (separable, sep_block "uib").
`xkv` = share_kv_in_cross_attention. Global tokens (joined by '_'): see `_encode_unet` / `_encode_decoder`, and
the table of every field's token in docs/spec-fields.md. `decode(encode(spec)) == spec` and
`encode(decode(s)) == s`; an unknown or malformed token raises SpecError.
"""
from __future__ import annotations

import re

from .errors import SpecError
from .spec import DecoderSpec, Spec, StageSpec, UNetSpec

_STAGE_RE = re.compile(r"^c(\d+)d(\d+)u(\d+)t(\d+)\.(\d+)(s?)(x?)(!r)?$")
_DEC_STAGE_RE = re.compile(r"^c(\d+)r(\d+)(n?)$")


def _num(x: float) -> str:
    return f"{x:g}"


def _conv_token(spec: Spec) -> str:
    if spec.conv == "regular":
        return "reg"
    return f"{'uib' if spec.sep_block == 'uib' else 'sep'}{_num(spec.conv_expansion)}"


def _read_conv_token(tok: str, d: dict, s: str) -> bool:
    """Fill conv / conv_expansion / sep_block from a conv token; False if `tok` is not one."""
    if tok == "reg":
        d["conv"] = "regular"
    elif tok.startswith("sep") or tok.startswith("uib"):
        d["conv"], d["conv_expansion"] = "separable", _float(tok[3:], tok, s)
        d["sep_block"] = "uib" if tok.startswith("uib") else "per_conv"
    else:
        return False
    return True


def encode(spec: Spec) -> str:
    if isinstance(spec, UNetSpec):
        return _encode_unet(spec)
    return _encode_decoder(spec)


def decode(s: str) -> Spec:
    head = s.split("_", 1)[0]
    if head == "unet":
        return _decode_unet(s)
    if head == "dec":
        return _decode_decoder(s)
    raise SpecError(f"compact string {s!r} must start with 'unet_' or 'dec_'")


def _encode_unet(spec: UNetSpec) -> str:
    stages = "-".join(
        f"c{st.channels}d{st.down_layers}u{st.up_layers}t{st.down_transformer_depth}.{st.up_transformer_depth}"
        f"{'s' if st.self_attention else ''}{'x' if st.cross_attention else ''}{'' if st.res_block else '!r'}"
        for st in spec.stages
    )
    conv = _conv_token(spec)
    att = spec.attention if spec.attention != "gqa" else f"gqa{spec.kv_heads}"
    tokens = [
        "unet", f"lat{spec.latent_channels}", stages,
        f"mid{spec.mid_transformer_depth}" if spec.mid_block else "nomid",
        conv, f"ffn{_num(spec.ffn_ratio)}", att,
    ]
    if spec.share_kv_in_cross_attention:
        tokens.append("xkv")
    tokens += [
        f"hd{spec.head_dim}", {"none": "qknone", "rmsnorm": "qkrms", "layernorm": "qkln"}[spec.qk_norm],
        "rope" if spec.pos_embed == "rope2d" else "nope", f"txt{spec.text_dim}", f"pool{spec.pooled_dim}",
    ]
    if spec.size_conditioning:
        tokens.append("sizecond")
    tokens += [f"g{spec.norm_groups}", f"te{spec.time_embed_ratio}"]
    return "_".join(tokens)


def _decode_unet(s: str) -> UNetSpec:
    parts = s.split("_")
    if len(parts) < 3 or not parts[1].startswith("lat"):
        raise SpecError(f"compact string {s!r}: expected unet_lat<N>_<stages>_...")
    d: dict = {"latent_channels": _int(parts[1][3:], "lat", s)}
    stages = []
    for tok in parts[2].split("-"):
        m = _STAGE_RE.match(tok)
        if not m:
            raise SpecError(f"compact string {s!r}: stage token {tok!r} is not like c256d2u3t0.0sx")
        c, dl, ul, td, tu, sa, ca, nores = m.groups()
        stages.append(StageSpec(int(c), int(dl), int(ul), int(td), int(tu), bool(sa), bool(ca), nores is None))
    d["stages"] = tuple(stages)
    for tok in parts[3:]:
        if tok == "nomid":
            d["mid_block"] = False
        elif tok.startswith("mid"):
            d["mid_transformer_depth"] = _int(tok[3:], tok, s)
        elif _read_conv_token(tok, d, s):
            pass
        elif tok.startswith("ffn"):
            d["ffn_ratio"] = _float(tok[3:], tok, s)
        elif tok in ("mhsa", "mqa"):
            d["attention"] = tok
        elif tok.startswith("gqa"):
            d["attention"], d["kv_heads"] = "gqa", _int(tok[3:], tok, s)
        elif tok == "xkv":
            d["share_kv_in_cross_attention"] = True
        elif tok.startswith("hd"):
            d["head_dim"] = _int(tok[2:], tok, s)
        elif tok in ("qknone", "qkrms", "qkln"):
            d["qk_norm"] = {"qknone": "none", "qkrms": "rmsnorm", "qkln": "layernorm"}[tok]
        elif tok in ("rope", "nope"):
            d["pos_embed"] = "rope2d" if tok == "rope" else "none"
        elif tok.startswith("txt"):
            d["text_dim"] = _int(tok[3:], tok, s)
        elif tok.startswith("pool"):
            d["pooled_dim"] = _int(tok[4:], tok, s)
        elif tok == "sizecond":
            d["size_conditioning"] = True
        elif tok.startswith("te"):
            d["time_embed_ratio"] = _int(tok[2:], tok, s)
        elif tok.startswith("g"):
            d["norm_groups"] = _int(tok[1:], tok, s)
        else:
            raise SpecError(f"compact string {s!r}: unknown token {tok!r}")
    return UNetSpec(**d)


def _encode_decoder(spec: DecoderSpec) -> str:
    stages = "-".join(f"c{c}r{r}{'n' if n else ''}"
                      for c, r, n in zip(spec.channels, spec.res_blocks, spec.norm_stages))
    mid = f"mid{spec.mid_res_blocks}{'a' if spec.mid_attention else ''}{'n' if spec.norm_mid else ''}"
    conv = _conv_token(spec)
    tokens = ["dec", f"lat{spec.latent_channels}", f"out{spec.out_channels}{'n' if spec.norm_out else ''}",
              stages, mid, conv, f"sc{spec.shortcut.replace('conv', '')}"]
    if spec.post_quant_conv:
        tokens.append("pq")
    tokens.append(f"g{spec.norm_groups}")
    return "_".join(tokens)


def _decode_decoder(s: str) -> DecoderSpec:
    parts = s.split("_")
    if len(parts) < 4 or not parts[1].startswith("lat") or not parts[2].startswith("out"):
        raise SpecError(f"compact string {s!r}: expected dec_lat<N>_out<N>[n]_<stages>_...")
    d: dict = {"latent_channels": _int(parts[1][3:], "lat", s)}
    out = parts[2][3:]
    d["norm_out"] = out.endswith("n")
    d["out_channels"] = _int(out.rstrip("n"), parts[2], s)
    chans, blocks, norms = [], [], []
    for tok in parts[3].split("-"):
        m = _DEC_STAGE_RE.match(tok)
        if not m:
            raise SpecError(f"compact string {s!r}: stage token {tok!r} is not like c128r3n")
        chans.append(int(m.group(1)))
        blocks.append(int(m.group(2)))
        norms.append(bool(m.group(3)))
    d.update(channels=tuple(chans), res_blocks=tuple(blocks), norm_stages=tuple(norms))
    for tok in parts[4:]:
        m = re.match(r"^mid(\d+)(a?)(n?)$", tok)
        if m:
            d["mid_res_blocks"], d["mid_attention"], d["norm_mid"] = int(m.group(1)), bool(m.group(2)), bool(m.group(3))
        elif _read_conv_token(tok, d, s):
            pass
        elif tok in ("sc1x1", "scnone"):
            d["shortcut"] = "conv1x1" if tok == "sc1x1" else "none"
        elif tok == "pq":
            d["post_quant_conv"] = True
        elif tok.startswith("g"):
            d["norm_groups"] = _int(tok[1:], tok, s)
        else:
            raise SpecError(f"compact string {s!r}: unknown token {tok!r}")
    return DecoderSpec(**d)


def _int(x: str, tok: str, s: str) -> int:
    if not x.isdigit():
        raise SpecError(f"compact string {s!r}: token {tok!r} needs a whole number")
    return int(x)


def _float(x: str, tok: str, s: str) -> float:
    try:
        return float(x)
    except ValueError:
        raise SpecError(f"compact string {s!r}: token {tok!r} needs a number") from None
