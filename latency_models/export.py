"""Core ML export: any spec or nn.Module -> fp16 `mlprogram` with fixed shapes, for iOS17 / iOS18 targets.

Also where models come from for latency work: `model_for(...)` builds a preset / spec JSON, a torchvision or
a timm architecture (never pretrained weights: latency does not depend on weight values), reparameterized
into its deploy form first where it has one (FastViT, MobileOne: the calibration sources measured that form).

Export-friendly forms: attention runs on the "math" backend (explicit matmul + softmax, which the converter
maps op by op; SDPA with grouped KV heads may not convert) or, with `attention="split_einsum"`, per head and
per chunk of queries, the form Apple recommends for the Neural Engine and the RoPE cos/sin tables are computed outside
the trace so they enter the program as constants (the converter cannot lower `arange` + `outer` there).
Converted packages are cached under `$POCKETDIFF_CACHE/coreml` (default ~/.cache/pocketdiff/coreml), keyed
by model id (spec_id for specs) + input shape + target + coremltools version + the fingerprint of the builder
code (fingerprint.py), so a package converted from older block code is never served.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import gc
import hashlib
import re
import shutil
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from search_space import PRESETS, SpecError, build_model, example_inputs, load_spec
from search_space.attention import attention_backend
from search_space.spec import Spec
from search_space.errors import UserError
from search_space.memory import inference_bytes, require_memory
from search_space.cache import CACHE_ENV  # noqa: F401 (the one cache root's variable; tests set it)
from search_space.outputs import atomic_write, disk_errors

from .targets import DEFAULT_TARGET, TARGETS  # noqa: E402 (re-exported)


class ExportError(UserError, RuntimeError):
    """Core ML could not convert the model; the message names the op that failed where known."""


def cache_root() -> Path:
    """The one cache root (search_space/cache.py)."""
    from search_space.cache import cache_root as root
    return root()


@dataclasses.dataclass
class ModelSource:
    """A model ready for export or feature extraction: module, positional inputs, a stable id and a label."""
    module: nn.Module
    inputs: tuple
    model_id: str  # spec_id for specs, "timm:fastvit_t8" etc. for library models
    label: str
    spec: Spec | None = None
    arch: str = ""  # how measurements.py rebuilds it: "timm:NAME", "preset:NAME", "spec:PATH"; "" for modules


# --- where models come from --------------------------------------------------------------------------------

_CALL = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(?:\((.*)\))?\s*$")


def parse_arch(text: str) -> tuple[str, dict]:
    """"mobilenet_v2(width_mult=1.4)" -> ("mobilenet_v2", {"width_mult": 1.4}); a trailing note in
    parentheses that is not keyword arguments ("mobileone_s0 (reparameterized)") is dropped."""
    m = _CALL.match(text)
    if not m:
        raise SpecError(f"cannot read architecture {text!r}; write e.g. resnet50 or mobilenet_v2(width_mult=1.4)")
    name, arg_text = m.group(1), (m.group(2) or "").strip()
    kwargs: dict = {}
    if arg_text and "=" in arg_text:
        call = ast.parse(f"f({arg_text})", mode="eval").body
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    return name, kwargs


def torchvision_model(arch: str, device: str | None = None) -> nn.Module:
    import torchvision

    name, kwargs = parse_arch(arch)
    if name not in torchvision.models.list_models():
        raise SpecError(f"torchvision has no model {name!r}")
    with torch.device(device or "cpu"):
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def timm_model(arch: str, device: str | None = None) -> nn.Module:
    """A timm architecture in its deploy form (timm's reparameterize_model fuses re-param branches)."""
    import timm
    from timm.utils import reparameterize_model

    name, kwargs = parse_arch(arch)
    if not timm.is_model(name):
        raise SpecError(f"timm has no model {name!r}")
    with torch.device(device or "cpu"):
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        return reparameterize_model(model)


def model_for(name: str | None = None, *, torchvision: str | None = None, timm: str | None = None,
              module: nn.Module | None = None, input_shape: tuple[int, ...] | None = None, latent: int = 128,
              batch: int = 1, device: str | None = None, model_id: str | None = None) -> ModelSource:
    """Exactly one of: a preset name / spec JSON path / Spec (`name`), a torchvision or timm architecture,
    or an nn.Module with `input_shape`. `device="meta"` builds without weights (feature extraction)."""
    dev = device or "cpu"
    if module is not None or torchvision or timm:
        if input_shape is None:
            raise SpecError("library models need an input shape, e.g. --input 1x3x224x224")
        if module is None and (len(input_shape) != 4 or input_shape[1] != 3):
            shape = "x".join(map(str, input_shape))
            raise SpecError(f"input shape {shape}: torchvision and timm models take an RGB batch BATCHx3xHxW, "
                            f"e.g. --input 1x3x224x224")
        if module is None:
            module = torchvision_model(torchvision, dev) if torchvision else timm_model(timm, dev)
            label = arch = f"torchvision:{torchvision}" if torchvision else f"timm:{timm}"
        else:
            label, arch = type(module).__name__, ""
        x = torch.randn(*input_shape, device=dev)
        return ModelSource(module.eval(), (x,), model_id or _module_id(label, module, input_shape), label,
                           arch=arch)
    if name is None:
        raise SpecError("name a preset or spec JSON, or pass --torchvision NAME / --timm NAME")
    spec = name if isinstance(name, Spec) else load_spec(name)
    if dev != "meta":  # refuse a size that cannot fit before the weights and inputs are allocated
        need = inference_bytes(build_model(spec, "meta").eval(), example_inputs(spec, latent, device="meta"), batch)
        require_memory(need, f"spec {spec.spec_id} at a {latent}x{latent} latent, batch {batch}",
                       "--latent or --batch", dev, SpecError)
    model = build_model(spec, device=dev).eval()
    inputs = example_inputs(spec, latent=latent, batch=batch, device=dev)
    preset = isinstance(name, str) and name in PRESETS
    label = name if preset else spec.spec_id
    arch = f"preset:{name}" if preset else (f"spec:{name}" if isinstance(name, str) else "")
    return ModelSource(model, inputs, spec.spec_id, label, spec, arch)


def _module_id(label: str, module: nn.Module, shape) -> str:
    """Architecture fingerprint of an arbitrary module: class, parameter names and shapes (not values)."""
    h = hashlib.sha1(type(module).__name__.encode())
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}".encode())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)
    return f"{safe}-{h.hexdigest()[:8]}"


# --- conversion ---------------------------------------------------------------------------------------------

class _PositionalInputs(nn.Module):
    """Feeds only the non-None inputs through the trace; the Nones are put back in their slots."""

    def __init__(self, module: nn.Module, template: tuple):
        super().__init__()
        self.module = module
        self.present = tuple(x is not None for x in template)

    def forward(self, *xs):
        it = iter(xs)
        return self.module(*[next(it) if p else None for p in self.present])


@contextlib.contextmanager
def constant_rope_tables():
    """RoPE tables computed outside the trace, so Core ML receives them as constants."""
    import search_space.attention as attention

    original = attention.rope_2d_tables

    def untraced(*args, **kwargs):
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return original(*args, **kwargs)
        finally:
            torch._C._set_tracing_state(state)

    attention.rope_2d_tables = untraced
    try:
        yield
    finally:
        attention.rope_2d_tables = original


def input_names(src: ModelSource) -> list[str]:
    if src.spec is not None and src.spec.kind == "unet":
        names = ["latents", "timestep", "tokens", "pooled", "time_ids"]
    elif src.spec is not None:
        names = ["latents"]
    else:
        names = [f"input_{i}" for i in range(len(src.inputs))]
    return [n for n, x in zip(names, src.inputs) if x is not None]


# Attention forms a program can be exported in (search_space.attention backends): the project's math form,
# and the per-head split-einsum form Apple recommends for the Neural Engine.
ATTENTION_FORMS = ("math", "split_einsum")


def convert(src: ModelSource, target: str = DEFAULT_TARGET, attention: str = "math"):
    """Trace and convert to an fp16 mlprogram; returns the coremltools MLModel (not loaded on Linux)."""
    import coremltools as ct

    if target not in TARGETS:
        raise SpecError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    if attention not in ATTENTION_FORMS:
        raise SpecError(f"unknown attention form {attention!r}; use one of {', '.join(ATTENTION_FORMS)}")
    wrapped = _PositionalInputs(src.module, src.inputs).eval()
    args = tuple(x for x in src.inputs if x is not None)
    with attention_backend(attention), constant_rope_tables(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # check_trace would run the whole forward a second time only to compare outputs
        traced = torch.jit.trace(wrapped, args, check_trace=False)
    ct_inputs = [ct.TensorType(name=n, shape=tuple(a.shape)) for n, a in zip(input_names(src), args)]
    try:
        mlmodel = ct.convert(
            traced, inputs=ct_inputs, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
            minimum_deployment_target=getattr(ct.target, target),
            # Loading needs the Core ML framework (macOS); on Linux only the package is written.
            skip_model_load=not _on_macos())
    except Exception as e:  # the converter raises bare ValueError / RuntimeError / NotImplementedError
        raise ExportError(f"Core ML conversion of {src.label} failed: {type(e).__name__}: {e}") from e
    finally:
        del traced, wrapped
        gc.collect()
    return mlmodel


def _on_macos() -> bool:
    import platform
    return platform.system() == "Darwin"


def shape_key(src: ModelSource) -> str:
    return "_".join("x".join(str(s) for s in x.shape) for x in src.inputs if x is not None)


def cache_path(model_id: str, shape: str, target: str, attention: str = "math") -> Path:
    import coremltools as ct

    from .fingerprint import current_fingerprint
    # keyed by the builder code too: an edited block converts again instead of serving the old package
    form = "" if attention == "math" else f"-{attention}"
    return (cache_root() / "coreml" /
            f"{model_id}-{shape}-{target}{form}-ct{ct.__version__}-{current_fingerprint()}.mlpackage")


@dataclasses.dataclass
class ExportResult:
    path: Path
    model_id: str
    shape: str
    target: str
    cached: bool
    seconds: float
    attention: str = "math"


def export_coreml(src: ModelSource, target: str = DEFAULT_TARGET, out: str | Path | None = None,
                  use_cache: bool = True, attention: str = "math") -> ExportResult:
    """Convert (or reuse the cached conversion) and optionally copy the package to `out`.

    The module's weights are released by the caller dropping `src`; the conversion itself only keeps the
    fp16 copy inside the MLModel until it is saved.
    """
    t0 = time.perf_counter()
    shape = shape_key(src)
    cached = cache_path(src.model_id, shape, target, attention)
    hit = use_cache and cached.exists()
    if not hit:
        mlmodel = convert(src, target, attention)
        mlmodel.short_description = f"pocketdiff export of {src.label} ({src.model_id}), input {shape}"
        mlmodel.user_defined_metadata["pocketdiff.arch"] = src.arch
        mlmodel.user_defined_metadata["pocketdiff.model_id"] = src.model_id
        mlmodel.user_defined_metadata["pocketdiff.attention"] = attention  # `latency measure` records it
        if src.spec is not None:
            mlmodel.user_defined_metadata["pocketdiff.spec"] = src.spec.to_json()
        with disk_errors(cached):
            cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cached) as tmp:  # a half-written package is never a cache hit
            package = tmp.with_name(tmp.name + ".mlpackage")  # save() insists on the suffix
            try:
                mlmodel.save(str(package))
                package.rename(tmp)
            finally:
                shutil.rmtree(package, ignore_errors=True)
        del mlmodel
        gc.collect()
    path = cached
    if out is not None:
        out = Path(out)
        if out.suffix != ".mlpackage":
            raise SpecError(f"output {out} must end in .mlpackage")
        with disk_errors(out):
            out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out) as tmp:  # an earlier package at `out` stays whole until the copy is
            shutil.copytree(cached, tmp)
        path = out
    return ExportResult(path, src.model_id, shape, target, hit, time.perf_counter() - t0, attention)


def load_program(path: str | Path):
    """The MIL program of a saved .mlpackage (readable on Linux: only the spec is parsed, nothing runs)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    model = ct.models.MLModel(str(path), skip_model_load=True)
    return load_mil(model.get_spec(), specification_version=model.get_spec().specificationVersion,
                    file_weights_dir=model.weights_dir)
