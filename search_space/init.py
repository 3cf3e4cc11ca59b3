"""Paired initialisation: every module's weights drawn from a generator seeded by (seed, its module path).

Two designs that differ in one knob then start from bit-identical weights wherever the knob does not reach, so
a comparison of the two measures the knob, not a redraw of every other weight (docs/quality.md, paired
evaluation). Drawing all weights from one stream in construction order would redraw nearly every weight after
the first module whose shape changed.

Each module keeps its own initialisation law: its `reset_parameters` runs (torch's modules all have one; ours
that own a parameter define one) with torch's global CPU generator seeded by sha256 of "seed:path"; then
every `init_weights` in the tree applies the model's zero-init choices. Only the random stream changes, never
the distributions. A module that owns a parameter or buffer but has no `reset_parameters` is refused, so no
weight escapes the pairing. The caller's global RNG state is restored afterwards: building a model draws
nothing from it.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn


def path_seed(seed: int, path: str) -> int:
    """A 63-bit seed from the run's seed and a module path (sha256: stable across processes and Python versions,
    unlike Python's `hash`)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:8], "little") & (2 ** 63 - 1)


def _owns_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def paired_init(model: nn.Module, seed: int, prefix: str = "") -> list[str]:
    """Re-initialise every parameter of `model` in place from (seed, module path); returns the names of the
    parameters it set. `prefix` names the model's place in a larger whole (e.g. "kd.projections.down.1"), so
    modules built apart draw apart. Modules on the meta device are left as they are (there is nothing to draw).
    """
    covered = []
    modules = [(path, m) for path, m in model.named_modules() if _owns_state(m)]
    missing = [path or type(m).__name__ for path, m in modules if not hasattr(m, "reset_parameters")]
    if missing:
        raise TypeError(f"paired_init: {', '.join(missing)} own parameters or buffers but define no "
                        "reset_parameters(); give each module that creates a parameter directly one")
    if any(p.is_meta for p in model.parameters()):
        return covered
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # CPU stream only; restored on exit
        for path, module in modules:
            full = ".".join(p for p in (prefix, path) if p)
            torch.default_generator.manual_seed(path_seed(seed, full))  # not torch.manual_seed: that seeds CUDA
            module.reset_parameters()
            covered += [f"{path}.{name}" if path else name for name, _ in module.named_parameters(recurse=False)]
        for module in model.modules():
            if hasattr(module, "init_weights"):
                module.init_weights()  # the model's deterministic zero-init choices, after the random draws
    return covered


def build_paired(make: Callable[[], nn.Module], seed: int, prefix: str = "",
                 device: str | torch.device | None = None) -> nn.Module:
    """`make()` built without drawing anything (on the meta device), its weights allocated on the CPU and set by
    `paired_init(seed, prefix)`, then moved to `device`: the same weights on every device and every rank.
    `device="meta"` builds it without weights."""
    with torch.device("meta"):
        module = make()
    if device is not None and torch.device(device).type == "meta":
        return module
    module = module.to_empty(device="cpu")
    paired_init(module, seed, prefix)
    return module.to(device) if device is not None else module


def untouched_modules(a: nn.Module, b: nn.Module) -> list[str]:
    """Paths of the modules that `a` and `b` both have with the same parameter names and shapes: what a knob
    that tells the two apart does not reach (a module with one reshaped parameter has another law for all of
    them: a bias's bound is 1/sqrt of its weight's fan-in)."""
    def shapes(m: nn.Module) -> dict:
        return {n: tuple(p.shape) for n, p in m.named_parameters(recurse=False)}
    mb = dict(b.named_modules())
    return [path for path, m in a.named_modules()
            if shapes(m) and path in mb and shapes(m) == shapes(mb[path])]


def shared_weights(a: nn.Module, b: nn.Module) -> tuple[int, int]:
    """(elements in the modules untouched between `a` and `b`, how many of them are bit-identical)."""
    ma, mb = dict(a.named_modules()), dict(b.named_modules())
    shared = identical = 0
    for path in untouched_modules(a, b):
        qb = dict(mb[path].named_parameters(recurse=False))
        for name, p in ma[path].named_parameters(recurse=False):
            shared += p.numel()
            identical += int((p.detach() == qb[name].detach()).sum())
    return shared, identical
