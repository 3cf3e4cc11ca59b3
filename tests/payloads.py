"""A pickle payload for the "no code from a file" tests: a file that runs code when a full unpickler reads it.

`Payload(marker)` unpickles as a call of Path.touch on `marker`, the stand-in for arbitrary code: a test plants
it where a weights file belongs, runs the real load path, and checks that the marker was not created."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch


class Payload:
    """Unpickling this calls Path.touch on the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, fmt: str = "torch") -> Path:
    """Write a state dict holding a Payload to `path`: in torch's zip format (what torch.save writes), torch's
    legacy format, or as a bare pickle (what a hand-made .bin could be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"weight": Payload(marker)}
    if fmt == "torch":
        torch.save(state, path)
    elif fmt == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(state))
    assert not marker.exists()
    return path
