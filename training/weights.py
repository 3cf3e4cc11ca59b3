"""Weights files from outside this process, read so that no file can run code.

A pickle (`.bin`, `.pt`, `.pth`, `.ckpt`) names the functions its loader calls; a full unpickler runs them before
any check of ours could look at the result. So every such file a user passes or the cache holds is read here
with `torch.load(weights_only=True)` (tensors, numbers, strings and containers only) before anything else loads
it: our checkpoints' `state.pt`, torch-fidelity's Inception weights and cached statistics (fidelity.py), and the
weights of every local diffusers / transformers folder (a teacher, a VAE, a text encoder) before
`from_pretrained` sees the folder (`check_model_folder`). safetensors files hold no code and pass as they are.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from search_space.errors import UserError
from search_space.limits import read_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHTS_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES


class ModelFolderError(UserError):
    """A local model folder that cannot be loaded (no config, no weights, a weights file that is not plain)."""


def load_plain(path: Path, what: str, error: type[UserError], fix: str, allow: tuple = (),
               mmap: bool = False) -> object:
    """`torch.load(path, weights_only=True)`, with the globals in `allow` also permitted; a file that needs
    anything more (a pickle that imports or calls), or is no torch file at all, raises `error` naming it."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=mmap and zipfile.is_zipfile(path))
    except Exception as e:  # UnpicklingError for a payload; anything else: truncated, or not a torch file
        detail = str(e).splitlines()[0][:160] if str(e) else "unreadable"
        raise error(f"{what} {path} is not a plain tensor file ({type(e).__name__}: {detail}); refused, not "
                    f"loaded: {fix}") from None


def check_model_folder(path: str | Path, what: str, error: type[UserError] = ModelFolderError) -> dict:
    """The config of a diffusers / transformers folder saved with `save_pretrained`, once the folder is fit to
    hand to `from_pretrained`: config.json is a JSON object, at least one weights file is there, and every
    pickle-format weights file holds plain tensors only (read with `weights_only=True`, memory-mapped)."""
    path = Path(path)
    if not path.is_dir():
        raise error(f"{what} {path} {'is not a folder' if path.exists() else 'does not exist'}; give a folder "
                    f"saved with save_pretrained (config.json and the weights)")
    config = read_json(path / "config.json", f"{what} config", error, expect=dict)
    weights = sorted(f for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHTS_SUFFIXES))
    if not weights:
        raise error(f"{what} {path} has a config.json but no weights file (*.safetensors or *.bin); copy the "
                    f"weights saved with save_pretrained into the folder")
    for f in weights:
        if f.name.endswith(PICKLE_SUFFIXES):
            load_plain(f, f"{what} weights file", error, "it holds more than tensors and plain data (a pickle "
                       "that could run code); use the model's safetensors weights", mmap=True)
    return config
