"""Quality evaluator: train a spec (at proxy scale) with rectified flow for a budget, sample, score.

SNAPGEN.md section 1 (ablation protocol [paper]): class-conditional training on ImageNet-1K latents, FID of
class-conditional samples with CFG. The same protocol runs here at any scale: the spec is mapped to a proxy
that fits the data and text encoder (`training.proxy`), trained for a budget (`training.trainer`), sampled with
the Euler ODE sampler and scored with torch-fidelity (`training.fidelity`): the domain-feature FD always
(offline), Inception FID when its weights are at hand. The record says which is which.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from search_space import UNetSpec, load_spec
from training.data import DataError, FlowData, load_data, load_vae
from training.fidelity import (MetricError, domain_metrics, inception_metrics, inception_weights,
                              register_domain_extractor)
from training.proxy import ProxyConfig, proxy_spec
from training.text import DEFAULT_ENCODER, class_prompt_embeddings
from training.trainer import (Budget, MetricsCallback, TrainConfig, config_dict, sample, save_checkpoint,
                              train)

NUM_SAMPLES = 500  # the proxy protocol: 500 generated images
# [choose] 8 Euler steps: rectified-flow paths are near straight, and at 8 steps sampling 500 images with CFG
# stays under half of a 60 s training budget on 2 CPU cores.
SAMPLE_STEPS = 8
CFG_SCALE = 2.0  # [choose] moderate guidance; class-conditional ImageNet models are usually scored at 1.5-4
FID_MODES = ("auto", "on", "off")  # auto: Inception FID only if its weights are already on disk
GRID_PER_CLASS = 10


class SpecKindError(ValueError):
    """The quality evaluator trains UNets; a decoder spec is a user mistake."""


def evaluate_quality(spec: UNetSpec | str, data: FlowData | str = "mnist5k", budget: Budget | str = "60s",
                     seed: int = 0, *, out_dir: str | Path | None = None, num_samples: int = NUM_SAMPLES,
                     sample_steps: int = SAMPLE_STEPS, cfg_scale: float = CFG_SCALE, fid: str = "auto",
                     fid_weights: str | None = None, vae: str | None = None, encoder: str = DEFAULT_ENCODER,
                     train_config: TrainConfig = TrainConfig(), proxy_config: ProxyConfig = ProxyConfig(),
                     callback: MetricsCallback | None = None, device: str | None = None,
                     progress: bool = True) -> dict:
    """Train `spec`'s proxy on `data` for `budget`, sample `num_samples` images, return a flat record of floats
    and strings (metrics, throughput, timings, the proxy mapping). Budget "0steps" scores the untrained model."""
    t0 = time.perf_counter()
    spec = load_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(spec, UNetSpec):
        raise SpecKindError(f"the quality evaluator trains UNet specs; {spec.kind} spec {spec.spec_id} is not one")
    if fid not in FID_MODES:
        raise MetricError(f"fid={fid!r} is not one of {', '.join(FID_MODES)}")
    budget = Budget.parse(budget)
    weights = inception_weights(fid_weights, download=fid == "on") if fid != "off" else None
    data = load_data(data) if isinstance(data, str) else data
    prompts = class_prompt_embeddings(data.class_names, encoder)
    proxy, mapping = proxy_spec(spec, data.channels, prompts.dim, prompts.pooled_dim, proxy_config)
    if data.size % proxy.downsample_factor:
        raise DataError(f"the data's {data.size}x{data.size} model-space size is not a multiple of the proxy's "
                         f"downsample factor {proxy.downsample_factor} (2 ** (stages - 1)); use a resolution "
                         f"that is")
    # The proxy's resolution is the data's: record it with the width/depth mapping.
    mapping.update({"resolution_px": data.resolution, "model_space": [data.channels, data.size, data.size]})
    t_load = time.perf_counter()
    register_domain_extractor(data)  # trains and caches the classifier the first time a dataset is seen
    t_domain = time.perf_counter()

    result = train(proxy, data, prompts, budget, seed, train_config, device, callback, progress)
    t_train = time.perf_counter()
    record = {
        "spec_id": spec.spec_id, "proxy_spec_id": proxy.spec_id, "data": data.name, "budget": str(budget),
        "seed": seed, "status": result.status, "steps": result.steps, "train_images": result.images,
        "train_seconds": round(result.seconds, 3), "train_images_per_s": round(result.images_per_s, 2),
        "val_loss": result.val_loss, "params_proxy": sum(p.numel() for p in result.model.parameters()),
        "num_samples": num_samples, "sample_steps": sample_steps, "cfg_scale": cfg_scale,
    }
    vae_model = None
    if result.status == "ok" or result.status.startswith("stopped"):
        labels = torch.arange(num_samples) % data.num_classes  # balanced classes, as class-conditional FID
        samples = sample(result.model, proxy, data, prompts, labels, seed, sample_steps, cfg_scale,
                         progress=progress)
        t_sample = time.perf_counter()
        if not torch.isfinite(samples).all():
            record["status"] = f"diverged at step {result.steps} (non-finite samples)"
        else:
            record.update(domain_metrics(samples, data))
            if data.kind == "latent" and (weights or out_dir):
                vae_path = vae or data.info.get("vae_path")
                vae_model = load_vae(vae_path) if vae_path and Path(vae_path).is_dir() else None
            if weights and (data.kind == "pixel" or vae_model is not None):
                record.update(inception_metrics(samples, data, weights, vae_model))
            elif fid != "off":
                record["fid_note"] = ("Inception weights not on disk: pass --fid-weights PATH or --fid on"
                                      if not weights else "no VAE to decode latents for Inception: pass --vae PATH")
        t_metrics = time.perf_counter()
    else:
        samples, t_sample = None, t_train
        t_metrics = t_sample
    total = time.perf_counter() - t0
    record.update({
        "seconds_load": round(t_load - t0, 2), "seconds_domain_classifier": round(t_domain - t_load, 2),
        "seconds_train": round(t_train - t_domain, 2), "seconds_sample": round(t_sample - t_train, 2),
        "seconds_metrics": round(t_metrics - t_sample, 2), "seconds_total": round(total, 2),
        "train_share": round((t_train - t_domain) / total, 3),
    })
    record["proxy"] = mapping
    record["data_info"] = data.info
    record["history"] = result.history
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out / "checkpoint.pt", result.model, proxy,
                        {"source_spec": spec.to_json(), "proxy": mapping, "train_config": config_dict(train_config),
                         "status": result.status, "steps": result.steps})
        if samples is not None and torch.isfinite(samples).all():
            _save_grid(samples, labels, data, out / "samples.png", vae_model)
        (out / "record.json").write_text(json.dumps(record, indent=1))
        record["out_dir"] = str(out)
    return record


def _save_grid(samples: torch.Tensor, labels: torch.Tensor, data: FlowData, path: Path, vae) -> None:
    """One row per class (up to 10 classes x 10 samples), decoded through the VAE for latent data."""
    from torchvision.utils import save_image

    if data.kind == "latent" and vae is None:
        return
    classes = range(min(GRID_PER_CLASS, data.num_classes))
    per_class = min([GRID_PER_CLASS] + [int((labels == c).sum()) for c in classes])
    if per_class == 0:
        return
    rows = torch.cat([samples[labels == c][:per_class] for c in classes])
    save_image(data.to_images(rows, vae).float() / 255, path, nrow=per_class)
