"""Tiny decoder training with a frozen encoder (docs/paper.md section 2: MSE + LPIPS + adversarial, no KL).

The paper keeps the SD3 encoder frozen and trains only the new decoder. Here:
- data: image patches. `sample-images` are the two real photos scikit-learn ships (china.jpg, flower.jpg;
  no download): training crops come from the left three quarters of each photo, the held-out crops from a
  fixed grid over the right quarter, so no held-out pixel is ever trained on. `folder:PATH` takes any folder
  of images (every tenth file, by sorted name, is held out).
- encoder: `vae:PATH` uses a diffusers AutoencoderKL from a local folder (e.g. the SD3 VAE); `tiny-ae` trains
  a small AutoencoderKL once on the training crops and caches it, the CPU stand-in for a pretrained encoder.
  Its own decoder is the baseline the candidates are compared with.
- losses: MSE, LPIPS when the `lpips` package and its weights are present (else skipped with a notice),
  and a hinge PatchGAN loss after a warm-up.
Metrics: PSNR and MSE on the held-out crops (and LPIPS when available).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_space import DecoderSpec, build_model
from search_space.errors import UserError
from search_space.init import build_paired

from search_space.cache import cache_dir
from search_space.outputs import atomic_write, save_torch
from .budget import Budget
from .weights import check_model_folder

PATCH = 32  # [paper] trains on 256x256 patches; 32x32 (4x4 latents) keeps a CPU step of a 1-2M-param decoder short
TRAIN_CROPS = 2048
HELD_OUT_MAX = 48  # held-out crops scored (an even spread over the held-out grid)
REPORT_FRACTION = 0.25  # validation loss every quarter of the budget (each report costs a held-out pass)
TINY_AE_STEPS = 300  # [choose] enough for the stand-in encoder to give the candidates something to invert
TINY_AE_CHANNELS = (16, 32, 32, 32)  # 4 stages: f = 8, as the SD3 / SDXL autoencoders
ADV_START_FRACTION = 0.5  # the discriminator joins halfway, once reconstructions are roughly right


class DecoderDataError(UserError):
    """Missing or unusable decoder-training data or encoder; the message names the path or option."""


@dataclass
class PatchData:
    name: str
    train: torch.Tensor  # (N, 3, P, P) in [-1, 1]
    held_out: torch.Tensor  # (M, 3, P, P)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float() / 127.5 - 1.0


def _random_crops(images: list[torch.Tensor], n: int, patch: int, gen: torch.Generator) -> torch.Tensor:
    out = []
    for i in range(n):
        img = images[i % len(images)]
        _, h, w = img.shape
        y = int(torch.randint(0, h - patch + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - patch + 1, (1,), generator=gen))
        out.append(img[:, y:y + patch, x:x + patch])
    return torch.stack(out)


def _grid_crops(images: list[torch.Tensor], patch: int) -> torch.Tensor:
    out = []
    for img in images:
        _, h, w = img.shape
        for y in range(0, h - patch + 1, patch):
            for x in range(0, w - patch + 1, patch):
                out.append(img[:, y:y + patch, x:x + patch])
    return torch.stack(out)


def split_photos(photos: list[torch.Tensor], patch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Training crops from the left three quarters of each photo, held-out crops from a grid over the rest."""
    split = [int(p.shape[2] * 0.75) for p in photos]
    train = _random_crops([p[:, :, :s] for p, s in zip(photos, split)], TRAIN_CROPS, patch, gen)
    held = _grid_crops([p[:, :, s:] for p, s in zip(photos, split)], patch)
    return train, held[torch.linspace(0, len(held) - 1, min(HELD_OUT_MAX, len(held))).long()]


def load_patches(source: str = "sample-images", patch: int = PATCH, seed: int = 0) -> PatchData:
    gen = torch.Generator().manual_seed(seed)
    if source == "sample-images":
        from sklearn.datasets import load_sample_images

        photos = [_to_tensor(im) for im in load_sample_images().images]
        train, held = split_photos(photos, patch, gen)
        return PatchData(f"sample-images-p{patch}", train, held)
    if source.startswith("folder:"):
        from PIL import Image, UnidentifiedImageError

        root = Path(source[len("folder:"):])
        if not root.is_dir():
            raise DecoderDataError(f"image folder {root} does not exist")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        train_imgs, held_imgs, skipped = [], [], 0
        for i, f in enumerate(files):
            try:
                im = Image.open(f).convert("RGB")
            except (UnidentifiedImageError, OSError):
                skipped += 1
                continue
            if min(im.size) < patch:
                skipped += 1
                continue
            (held_imgs if i % 10 == 9 else train_imgs).append(_to_tensor(np.asarray(im)))
        if not train_imgs or not held_imgs:
            raise DecoderDataError(f"image folder {root}: need at least 10 readable images of at least "
                                   f"{patch}x{patch} px ({len(files)} found, {skipped} unreadable or too small)")
        digest = hashlib.sha256("\n".join(str(f) for f in files).encode()).hexdigest()[:10]
        train = _random_crops(train_imgs, TRAIN_CROPS, patch, gen)
        held = torch.cat([_grid_crops([im], patch)[:4] for im in held_imgs])
        return PatchData(f"folder-{digest}-p{patch}", train, held)
    raise DecoderDataError(f"decoder data {source!r}: use sample-images or folder:PATH")


# --- frozen encoders ---------------------------------------------------------------------------------------

@dataclass
class FrozenEncoder:
    name: str
    vae: nn.Module  # a diffusers AutoencoderKL; only .encode is used for candidates
    latent_channels: int
    factor: int
    baseline: dict = field(default_factory=dict)  # the encoder's own decoder on the held-out crops

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean  # unscaled; our decoder applies post_quant_conv itself


def _tiny_ae_config(latent_channels: int, stages: int) -> dict:
    """A small AutoencoderKL with `stages` resolution stages (downsampling 2 ** (stages - 1), f8 for 4)."""
    n = stages
    channels = (TINY_AE_CHANNELS + (TINY_AE_CHANNELS[-1],) * n)[:n]
    return dict(in_channels=3, out_channels=3, block_out_channels=channels, layers_per_block=1,
                latent_channels=latent_channels, norm_num_groups=16,
                down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n)


def load_encoder(source: str, data: PatchData, latent_channels: int, stages: int = 4, seed: int = 0,
                 progress: bool = False, ae_steps: int = TINY_AE_STEPS) -> FrozenEncoder:
    """The frozen encoder: a diffusers AutoencoderKL folder (`vae:PATH`), or the cached `tiny-ae` stand-in built
    for `latent_channels` and `stages` (so that its downsampling matches the decoder's upsampling)."""
    from diffusers import AutoencoderKL

    if source.startswith("vae:"):
        path = Path(source[4:])
        check_model_folder(path, "encoder VAE folder", DecoderDataError)
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        enc = FrozenEncoder(f"vae-{path.name}", vae, vae.config.latent_channels, factor)
        enc.baseline = _baseline(enc, data)
        return enc
    if source != "tiny-ae":
        raise DecoderDataError(f"encoder {source!r}: use tiny-ae or vae:PATH")
    config = _tiny_ae_config(latent_channels, stages)
    key = hashlib.sha256(json.dumps([data.name, config, ae_steps, seed], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir("decoder-encoders", f"tiny-ae-{key}")
    vae = AutoencoderKL(**config)
    weights = folder / "model.pt"
    if weights.is_file():
        vae.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        baseline = json.loads((folder / "baseline.json").read_text())
    else:
        _train_tiny_ae(vae, data, seed, progress, ae_steps)
        with atomic_write(weights) as tmp:
            save_torch(vae.state_dict(), tmp)
        baseline = None
    vae.eval().requires_grad_(False)
    enc = FrozenEncoder(f"tiny-ae-{key}", vae, latent_channels, 2 ** (stages - 1))
    enc.baseline = baseline or _baseline(enc, data)
    with atomic_write(folder / "baseline.json") as tmp:
        tmp.write_text(json.dumps(enc.baseline))
    return enc


def _train_tiny_ae(vae: nn.Module, data: PatchData, seed: int, progress: bool, steps: int) -> None:
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    vae.train()
    for _ in tqdm(range(steps), desc="tiny-ae (once, cached)", disable=not progress, leave=False):
        idx = torch.randint(0, len(data.train), (16,), generator=gen)
        x = data.train[idx]
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.mean).sample
        loss = F.mse_loss(recon, x) + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@torch.no_grad()
def _baseline(enc: FrozenEncoder, data: PatchData) -> dict:
    z = enc.encode(data.held_out)
    recon = enc.vae.decode(z).sample
    return {"decoder": enc.name, "psnr": psnr(recon, data.held_out), "mse": float(F.mse_loss(recon, data.held_out)),
            "params": sum(p.numel() for p in enc.vae.decoder.parameters())}


# --- losses and metrics ---------------------------------------------------------------------------------

def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], computed on [0, 1] after clamping."""
    a = ((recon.clamp(-1, 1) + 1) / 2).double()
    b = ((target + 1) / 2).double()
    mse = float(F.mse_loss(a, b))
    return float("inf") if mse == 0 else 10 * float(np.log10(1.0 / mse))


def lpips_model() -> tuple[nn.Module | None, str]:
    """The LPIPS network when the `lpips` package and its weights are available, else (None, notice)."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return None, "LPIPS skipped: the `lpips` package is not installed (pip install lpips)"
    try:
        import lpips
        return lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False), ""
    except Exception as e:  # weights missing and no network
        return None, f"LPIPS skipped: its weights could not be loaded ({type(e).__name__}: {e})"


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: per-patch real/fake logits for the adversarial loss (pix2pix's discriminator)."""

    def __init__(self, ch: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.GroupNorm(8, ch * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 2, ch * 4, 4, 2, 1), nn.GroupNorm(8, ch * 4), nn.LeakyReLU(0.2),
            nn.Conv2d(ch * 4, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class DecoderTrainConfig:
    batch_size: int = 16
    lr: float = 2e-3
    lpips_weight: float = 0.1
    adv_weight: float = 0.05
    grad_clip: float = 1.0


@dataclass
class DecoderResult:
    model: nn.Module
    steps: int
    seconds: float
    metrics: dict
    history: list
    notices: list


def _require_memory(spec: DecoderSpec, data: PatchData, encoder: FrozenEncoder, config: DecoderTrainConfig) -> None:
    """Refuse a decoder whose training step cannot fit in the memory free here, before anything is allocated
    (search_space/memory.py; the decoder's own step, on the meta device: the encoder and discriminator are small)."""
    from search_space.memory import require_memory, training_bytes

    patch = data.train.shape[-1]
    z = torch.empty(1, spec.latent_channels, patch // encoder.factor, patch // encoder.factor, device="meta")
    need = training_bytes(build_model(spec, "meta"), (z,), config.batch_size)
    require_memory(need, f"training decoder {spec.spec_id} on {patch}x{patch} crops at batch size "
                         f"{config.batch_size}", "the decoder's widths (--set)", error=DecoderDataError)


def train_decoder(spec: DecoderSpec, data: PatchData, encoder: FrozenEncoder, budget: Budget | str, seed: int = 0,
                  config: DecoderTrainConfig = DecoderTrainConfig(),
                  callback: Callable[[dict], bool | None] | None = None) -> DecoderResult:
    """Train a decoder for `spec` on frozen-encoder latents; returns held-out PSNR/MSE(/LPIPS)."""
    if spec.latent_channels != encoder.latent_channels:
        raise DecoderDataError(f"decoder latent_channels={spec.latent_channels} but the encoder {encoder.name} "
                               f"gives {encoder.latent_channels}")
    if spec.upsample_factor != encoder.factor:
        raise DecoderDataError(f"decoder upsamples x{spec.upsample_factor} but the encoder {encoder.name} "
                               f"downsamples x{encoder.factor}; give the decoder {encoder.factor.bit_length()} stages")
    budget = Budget.parse(budget)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    _require_memory(spec, data, encoder, config)
    z_held = encoder.encode(data.held_out)  # training batches are encoded as they are drawn (short runs)
    model = build_model(spec, seed=seed).train()  # paired weights (search_space/init.py)
    disc = build_paired(PatchDiscriminator, seed, "decoder.patch_disc")
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=config.lr, betas=(0.5, 0.9))
    perceptual, notice = lpips_model() if config.lpips_weight > 0 else (None, "")
    notices = [notice] if notice else []
    history, step = [], 0
    next_report = REPORT_FRACTION
    start = time.perf_counter()
    while not budget.done(step, time.perf_counter() - start):
        idx = torch.randint(0, len(data.train), (config.batch_size,), generator=gen)
        x = data.train[idx]
        z = encoder.encode(x)
        recon = model(z)
        loss = F.mse_loss(recon, x)
        if perceptual is not None:
            loss = loss + config.lpips_weight * perceptual(recon, x).mean()
        adversarial = budget.fraction(step, time.perf_counter() - start) >= ADV_START_FRACTION and config.adv_weight > 0
        if adversarial:
            loss = loss - config.adv_weight * disc(recon).mean()  # hinge generator loss
        if not torch.isfinite(loss):
            notices.append(f"diverged at step {step}")
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        if adversarial:
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(recon.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        step += 1
        elapsed = time.perf_counter() - start
        if budget.fraction(step, elapsed) >= next_report:
            while next_report <= budget.fraction(step, elapsed):
                next_report += REPORT_FRACTION
            with torch.no_grad():
                model.eval()
                val = float(F.mse_loss(model(z_held), data.held_out))
                model.train()
            report = {"step": step, "seconds": elapsed, "val_loss": val, "fraction": budget.fraction(step, elapsed)}
            history.append(report)
            if callback is not None and callback(report):
                notices.append(f"stopped by callback at step {step}")
                break
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        recon = model(z_held)
        metrics = {"psnr": psnr(recon, data.held_out), "val_loss": float(F.mse_loss(recon, data.held_out))}
        if perceptual is not None:
            metrics["lpips"] = float(perceptual(recon, data.held_out).mean())
    return DecoderResult(model, step, seconds, metrics, history, notices)


@torch.no_grad()
def save_reconstructions(model: nn.Module, enc: FrozenEncoder, patches: PatchData, path: Path, n: int = 8) -> None:
    """Top row: held-out crops; bottom row: the decoder's reconstructions of their latents."""
    from torchvision.utils import save_image

    x = patches.held_out[:n]
    recon = model(enc.encode(x)).clamp(-1, 1)
    save_image(torch.cat([x, recon]) * 0.5 + 0.5, path, nrow=n)


def train_decoder_run(spec: DecoderSpec, data: str, encoder: str, budget: Budget | str, seed: int, out: str | Path,
                      ae_steps: int | None = None, progress: bool = True) -> dict:
    """A full decoder run (`pocketdiff train decoder`): train against the frozen encoder, then write
    decoder.safetensors (spec JSON in the metadata), reconstructions.png and record.json to `out`; returns the
    record (metrics beside the encoder's own decoder as the baseline)."""
    from safetensors.torch import save_file

    patches = load_patches(data, seed=0)
    kw = {} if ae_steps is None else {"ae_steps": ae_steps}
    enc = load_encoder(encoder, patches, spec.latent_channels, len(spec.channels), seed=0, progress=progress, **kw)
    result = train_decoder(spec, patches, enc, budget, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "decoder.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, tmp,
                  metadata={"spec": spec.to_json(), "spec_id": spec.spec_id, "encoder": enc.name})
    save_reconstructions(result.model, enc, patches, out / "reconstructions.png")
    record = {"spec_id": spec.spec_id, "spec": json.loads(spec.to_json()), "encoder": enc.name, "data": data,
              "budget": str(budget), "seed": seed, "steps": result.steps, "seconds": round(result.seconds, 2),
              "metrics": result.metrics, "baseline": enc.baseline, "notices": result.notices,
              "psnr_vs_baseline": result.metrics["psnr"] - enc.baseline["psnr"], "history": result.history,
              "out": str(out)}
    with atomic_write(out / "record.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    return record
