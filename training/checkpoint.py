"""The one checkpoint format of every UNet training run (quality runs, full runs, KD, step distillation).

A checkpoint is a folder `checkpoints/step_XXXXXXX/` under a run folder (`checkpoints/latest` names the newest):
- `model.safetensors`: the raw weights (`model.*`) and the EMA weights (`ema.*`), the spec JSON and the run's
  metadata in the safetensors header. This file alone is enough to sample, export, teach or initialise.
- `state.pt` (runs that can resume): optimiser, scheduler, every rank's RNG states and the objective's state
  (KD projections, running loss magnitudes, discriminator). Plain tensors and containers only: it is read with
  `torch.load(weights_only=True)`, so a crafted file cannot run code.
- `checkpoint.json`: format, step, spec, metadata and the sha256 of every file above.
A quality run (evaluators/quality.py) writes the same folder without `state.pt`: it feeds `--teacher`, `--init`,
`export --checkpoint` and `sample` like any other run, but cannot be resumed.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from search_space import UNetSpec, build_model
from search_space.cache import remove_abandoned_siblings
from search_space.errors import SpecError
from search_space.limits import read_json
from search_space.outputs import atomic_write, disk_errors, save_torch
from search_space.spec import spec_from_dict

from .config import TrainError
from .data import FlowData, file_sha256
from .text import PromptEmbeddings
from .weights import load_plain

CHECKPOINT_FORMAT = "pocketdiff-train-1"
STATE_FILE = "state.pt"
WEIGHTS_FILE = "model.safetensors"
# checkpoint.json's fields (besides format and files) that every consumer reads, with their types.
MANIFEST_FIELDS = {"step": int, "spec_id": str, "spec": dict, "meta": dict}
META_KEYS = ("data", "encoder", "data_kind", "resolution", "channels", "size")  # run_meta's, read by sample
STATE_KEYS = ("step", "optimizer", "rng", "objective", "extra", "config", "world_size")  # what a resume reads
LATEST_NAME = re.compile(r"step_\d{7}")




class CheckpointError(TrainError):
    """A checkpoint that is corrupt or belongs to another run; the message names the mismatch."""


class NoCheckpoint(CheckpointError):
    """A path that holds no checkpoint of ours at all (as opposed to a damaged one)."""


def run_meta(data: FlowData, prompts: PromptEmbeddings, cfg_scale: float, sample_steps: int) -> dict:
    """What every consumer needs to use a checkpoint without the training data: the data's model space, class
    names, text encoder and the sampler settings it was trained for."""
    return {"data": data.name, "encoder": prompts.encoder, "class_names": list(data.class_names),
            "resolution": data.resolution, "data_kind": data.kind, "patch": data.patch, "channels": data.channels,
            "size": data.size, "cfg_scale": cfg_scale, "sample_steps": sample_steps,
            "latent_scaling": ([data.info.get("scaling_factor"), data.info.get("shift_factor")]
                               if data.kind == "latent" else None)}


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(ckpt_dir: Path, step: int, model: nn.Module, ema: nn.Module, spec: UNetSpec, meta: dict,
                    state: dict | None, keep: int = 0) -> Path:
    """Write `ckpt_dir/step_XXXXXXX` atomically (temp folder, then rename), update `latest`, keep the newest
    `keep` (0: all). `state=None` writes a weights-only checkpoint (no resume). A full disk ends in OutputError
    naming the checkpoint; the temp folder is removed and the checkpoints already there are untouched."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:07d}"
    with disk_errors(final):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_abandoned_siblings(ckpt_dir)  # a half-written checkpoint of a run killed while saving
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    metadata = {"format": CHECKPOINT_FORMAT, "spec": spec.to_json(), "spec_id": spec.spec_id, "step": str(step),
                "meta": json.dumps(meta)}
    with atomic_write(final) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS_FILE, metadata=metadata)
        names = [WEIGHTS_FILE]
        if state is not None:
            save_torch(state, tmp / STATE_FILE)
            names.append(STATE_FILE)
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "spec_id": spec.spec_id,
                    "spec": json.loads(spec.to_json()), "meta": meta, "resumable": state is not None,
                    "files": {name: file_sha256(tmp / name) for name in names}}
        (tmp / "checkpoint.json").write_text(json.dumps(manifest, indent=1))
    with atomic_write(ckpt_dir / "latest") as tmp:
        tmp.write_text(final.name)
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A run folder (-> its latest checkpoint), a checkpoints folder, or one step folder."""
    path = Path(path)
    for candidate in (path / "checkpoints" / "latest", path / "latest"):
        if candidate.is_file():
            name = candidate.read_text(errors="replace").strip()
            if not LATEST_NAME.fullmatch(name):
                raise CheckpointError(f"{candidate} names {name[:40]!r}, not a checkpoint folder step_XXXXXXX; "
                                      f"write the newest step folder's name into it")
            return candidate.parent / name
    if (path / "checkpoint.json").is_file() or (path / WEIGHTS_FILE).is_file():
        return path
    if path.is_file() and path.name == WEIGHTS_FILE:
        return path.parent
    raise NoCheckpoint(f"no checkpoint at {path}: expected a run folder with checkpoints/latest (written by "
                          f"`pocketdiff train` or `pocketdiff eval quality --out`), or a checkpoints/step_XXXXXXX "
                          f"folder")


def read_checkpoint(path: str | Path, verify: bool = True) -> tuple[dict, dict]:
    """(manifest, tensors) of a checkpoint folder; a missing, truncated or altered file raises CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    path, files = Path(manifest["path"]), manifest["files"]
    if verify:
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                raise CheckpointError(f"checkpoint {path} is missing {name}")
            if file_sha256(f) != digest:
                raise CheckpointError(f"checkpoint file {f} is corrupt: its sha256 does not match checkpoint.json "
                                      f"(truncated or altered); resume from an older checkpoint")
    try:
        tensors = load_file(path / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {path / WEIGHTS_FILE} is corrupt: {e}") from None
    return manifest, tensors


def read_manifest(path: str | Path) -> dict:
    """The checked checkpoint.json of a checkpoint (a run folder, a checkpoints folder or a step folder), with
    `path` set to the step folder; reads no weights (cheap enough to check an --init before a run starts)."""
    path = find_checkpoint(path)
    manifest_path = path / "checkpoint.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} has no checkpoint.json (incomplete write?)")
    manifest = read_json(manifest_path, "checkpoint metadata", CheckpointError, expect=dict)
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint metadata {manifest_path} has format {manifest.get('format')!r}, expected "
                              f"{CHECKPOINT_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise CheckpointError(f"checkpoint {manifest_path} has no valid 'files' table (name -> sha256); it was not "
                              f"written by `pocketdiff train`, or was edited")
    bad = [f"{key} ({kind.__name__})" for key, kind in MANIFEST_FIELDS.items() if type(manifest.get(key)) is not kind]
    bad += [f"meta.{key}" for key in META_KEYS if not bad and key not in manifest["meta"]]
    if bad:
        raise CheckpointError(f"checkpoint metadata {manifest_path} lacks or mistypes {', '.join(bad)}; it was not "
                              f"written by `pocketdiff train`, or was edited")
    if WEIGHTS_FILE not in files or any(Path(name).name != name for name in files):
        raise CheckpointError(f"checkpoint metadata {manifest_path}: its 'files' table must list {WEIGHTS_FILE} "
                              f"and only files inside the checkpoint folder")
    try:
        spec_from_dict(manifest["spec"])
    except SpecError as e:
        raise CheckpointError(f"checkpoint metadata {manifest_path} holds an invalid spec: {e}") from None
    manifest["path"] = str(path)
    return manifest


def read_state(path: Path) -> dict:
    """The resume state of a checkpoint folder, refused when it holds anything but tensors and plain data."""
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"checkpoint {path} holds weights only (a quality run's): it can start (--init) or "
                              f"teach (--teacher) a run, not resume one")
    # weights_only: tensors, numbers, strings and containers only. A state file from elsewhere cannot run code on
    # load (a full unpickler would execute whatever the file names before any check of ours).
    state = load_plain(path / STATE_FILE, "checkpoint file", CheckpointError, "it is corrupt, or holds more than "
                       "tensors and plain data; resume from an older checkpoint")
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint file {path / STATE_FILE} lacks {', '.join(missing)}: it was not written "
                              f"by `pocketdiff train`; resume from another checkpoint")
    return state


def split_weights(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_trained(path: str | Path, use_ema: bool = True) -> tuple[nn.Module, UNetSpec, dict]:
    """(model in eval mode, spec, manifest) from any checkpoint of ours; the EMA weights by default."""
    manifest, tensors = read_checkpoint(path)
    spec = spec_from_dict(manifest["spec"])  # checked by read_manifest
    model = build_model(spec)
    try:
        model.load_state_dict(split_weights(tensors, "ema." if use_ema else "model."))
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {manifest['path']} does not fit its own spec {spec.spec_id} (built by "
                              f"another version of the model code?): {str(e).splitlines()[0]}") from None
    return model.eval(), spec, manifest
