"""Quality evaluator: train a spec (at proxy scale) with rectified flow for a budget, sample, score.

docs/paper.md section 1 (ablation protocol [paper]): class-conditional training on ImageNet-1K latents, FID of
class-conditional samples with CFG. The same protocol runs here at any scale: the spec is mapped to a proxy
that fits the data and text encoder (`training.proxy`), trained for a budget (`training.quality_run`), sampled with
the Euler ODE sampler and scored with torch-fidelity (`training.fidelity`): the domain-feature FD always
(offline), Inception FID when its weights are at hand. The record says which is which. Beside the val loss it
carries the data regime's three baselines (constant, class-mean and linear-Gaussian predictors on the same held-out
inputs) and the learned fraction, (constant - val) / (constant - linear-Gaussian): training/baselines.py.

Paired evaluation with confidence (docs/quality.md): `evaluate_quality_seeds` repeats the run over seeds and reports
each metric's mean with a 95% t-interval; `compare_quality` trains two specs on the same seeds (common random
numbers: identical batches, noise and timesteps per seed) and reports the paired difference of each metric, with
verdicts decided over the whole table (evaluators/stats.py: Holm's correction, TOST with margins set in advance).
Metrics that would mean nothing are withheld with the reason (`metrics_invalid`): a domain feature extractor
not clearly above chance on held-out data, or fewer reference images (or samples) than the FD needs.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from search_space import UNetSpec, load_spec
from search_space.errors import UserError
from search_space.outputs import atomic_write
from training.baselines import BASELINES, LEARNED_FRACTION, learned_fraction, regime_baselines
from training.budget import QUALITY_RUN_BUDGET, WALL_CLOCK_NOTICE, Budget
from training.config import LoopConfig
from training.data import DataError, FlowData, decoding_vae, load_data, load_vae
from training.fidelity import (MetricError, domain_floor, domain_metrics, extractor_validity, inception_metrics,
                              inception_weights, register_domain_extractor)
from training.proxy import ProxyConfig, proxy_spec, width_mult_for
from training.loop import MetricsCallback
from training.quality_run import resolve_budget, save_run_checkpoint, train
from training.sample import sample_classes
from training.text import DEFAULT_ENCODER, class_prompt_embeddings

from .stats import LEVEL, paired_verdicts, t_interval

# Bump when a change makes old records incomparable (studies key their evaluation cache on it).
# 2: study-wide proxy width, budget schedule, CRN, stratified val loss; 3: 192 samples by default, fused AdamW
# [measured] the default sample count from the FD's noise (benchmarks/fd_sample_count.md: the old quick regime's snapgen
# proxy after 48 steps, 3 sampling seeds): FD ~458 at every n; SD over sampling seeds 5.6 / 5.1 / 3.6 / 3.5 at
# n = 192 / 256 / 384 / 512, real-image floor 4.65 / 3.01 / 1.14 at 192 / 256 / 384. Rule: the smallest n above
# the FD's 128 feature dimensions whose small-sample bias (the real-image floor at n) is within the sampling
# noise at n (SD over sampling seeds); more samples shrink the SD slowly (x2.7 the sampling time for /1.6).
# A run near the floor (FD of a few units) should ask for more with --samples.
NUM_SAMPLES = 192
# Sampling for the metrics uses the loop's sampler settings (training/config.py: 8 Euler steps, guidance 2).
SAMPLE_STEPS = LoopConfig.sample_steps
CFG_SCALE = LoopConfig.cfg_scale
FID_MODES = ("auto", "on", "off")  # auto: Inception FID only if its weights are already on disk
GRID_PER_CLASS = 10
CONFIDENCE = LEVEL
# Metrics a comparison reports, with the better direction (-1: lower is better).
COMPARED_METRICS = {"val_loss": -1, LEARNED_FRACTION: 1, "fd_domain": -1, "kid_domain": -1, "precision_domain": 1,
                    "recall_domain": 1, "fid": -1, "kid": -1, "precision": 1, "recall": 1}
# Equivalence margins of `compare_quality` (`eval compare --margin METRIC=VALUE` overrides): "comparable" means
# TOST puts |A - B| below the margin, fixed before any run. A metric without one is never called comparable.
# [choose] val_loss 0.02: under half the spread of one-knob designs at the 768-step reference (0.527-0.575,
#   benchmarks/proxy_fidelity.md), so a design within it of another differs by less than a typical knob does.
# [choose] fd_domain 5.0: the FD's own sampling SD at the default 192 samples (5.6) and its real-image floor
#   (4.65), benchmarks/fd_sample_count.md: a difference below the metric's own noise is not a design difference.
# [choose] learned_fraction 0.02: the same share of the regime's learnable loss as val_loss's 0.02 is of
#   MNIST-5k's (constant 1.204 - linear-Gaussian 0.269 = 0.935), so the two verdicts agree on one data set.
COMPARE_MARGINS = {"val_loss": 0.02, LEARNED_FRACTION: 0.02, "fd_domain": 5.0}


class SpecKindError(UserError):
    """The quality evaluator trains UNets; a decoder spec is a user mistake."""


class SameProxyError(UserError):
    """Two specs compared at proxy scale map to the same proxy: the data cannot tell them apart."""


def sample_count(requested: int | None, data: FlowData) -> int:
    """The number of generated images: as asked, else NUM_SAMPLES capped by the reference set (the metric
    compares like-sized sets only up to the reference's size)."""
    if requested is not None and requested < 0:
        raise MetricError(f"{requested} samples: give 0 (validation loss only, no sample metrics) or more")
    return requested if requested is not None else max(1, min(NUM_SAMPLES, len(data.ref_y)))

def evaluate_quality(spec: UNetSpec | str, data: FlowData | str = "mnist5k",
                     budget: Budget | str = QUALITY_RUN_BUDGET,
                     seed: int = 0, *, out_dir: str | Path | None = None, num_samples: int | None = None,
                     sample_steps: int = SAMPLE_STEPS, cfg_scale: float = CFG_SCALE, fid: str = "auto",
                     fid_weights: str | None = None, vae: str | None = None, encoder: str = DEFAULT_ENCODER,
                     train_config: LoopConfig | None = None, proxy_config: ProxyConfig = ProxyConfig(),
                     callback: MetricsCallback | None = None, device: str | None = None,
                     progress: bool = True) -> dict:
    """Train `spec`'s proxy on `data` for `budget`, sample `num_samples` images, return a flat record of floats
    and strings (metrics, throughput, timings, the proxy mapping). Budget "0steps" scores the untrained model.
    `train_config` defaults to `LoopConfig.quality_preset()`; its seed is replaced by `seed`."""
    t0 = time.perf_counter()
    spec = load_spec(spec) if isinstance(spec, str) else spec
    if not isinstance(spec, UNetSpec):
        raise SpecKindError(f"the quality evaluator trains UNet specs; {spec.kind} spec {spec.spec_id} is not one")
    if fid not in FID_MODES:
        raise MetricError(f"fid={fid!r} is not one of {', '.join(FID_MODES)}")
    budget = Budget.parse(budget)
    config = replace(train_config or LoopConfig.quality_preset(), seed=seed)
    weights = inception_weights(fid_weights, download=fid == "on") if fid != "off" else None
    data = load_data(data) if isinstance(data, str) else data
    num_samples = sample_count(num_samples, data)
    vae = decoding_vae(vae, data.kind, data.info.get("vae_path"))  # a folder that cannot decode fails here
    prompts = class_prompt_embeddings(data.class_names, encoder)
    proxy, mapping = proxy_spec(spec, data.channels, prompts.dim, prompts.pooled_dim, proxy_config)
    steps_budget = resolve_budget(budget, proxy, data, prompts, config)  # a bad budget fails before any work
    if data.size % proxy.downsample_factor:
        raise DataError(f"the data's {data.size}x{data.size} model-space size is not a multiple of the proxy's "
                         f"downsample factor {proxy.downsample_factor} (2 ** (stages - 1)); use a resolution "
                         f"that is")
    # The proxy's resolution is the data's: record it with the width/depth mapping.
    mapping.update({"resolution_px": data.resolution, "model_space": [data.channels, data.size, data.size]})
    t_load = time.perf_counter()
    baselines = regime_baselines(data)  # the val loss of three untrained predictors, once per data regime
    invalid = extractor = None
    if num_samples:  # the FD's classifier: trained and cached the first time, not needed without samples
        _, extractor = register_domain_extractor(data)
        invalid = extractor_validity(extractor, data, num_samples)
    t_domain = time.perf_counter()

    result = train(proxy, data, prompts, steps_budget, config, device=device, callback=callback, progress=progress)
    t_train = time.perf_counter()
    record = {
        "spec_id": spec.spec_id, "proxy_spec_id": proxy.spec_id, "data": data.name, "budget": str(budget),
        "budget_steps": result.budget_steps, "stream_digest": result.stream_digest,
        "seed": seed, "status": result.status, "steps": result.step, "train_images": result.images,
        "train_seconds": round(result.seconds, 3), "train_images_per_s": round(result.images_per_s, 2),
        "val_loss": result.val_loss, **baselines, "params_proxy": sum(p.numel() for p in result.ema.parameters()),
        "num_samples": num_samples, "sample_steps": sample_steps, "cfg_scale": cfg_scale,
        **result.throughput,  # train_flops_per_s and its ratio to the host's matmul peak (training/throughput.py)
    }
    if result.val_loss is not None:  # the share of the learnable loss this run learned (training/baselines.py)
        record[LEARNED_FRACTION] = learned_fraction(result.val_loss, baselines)
    vae_model = None
    if num_samples == 0:
        record["metrics_note"] = "0 samples asked: validation loss only, no sample metrics"
    if num_samples and (result.status == "ok" or result.status.startswith("stopped")):
        labels = torch.arange(num_samples) % data.num_classes  # balanced classes, as class-conditional FID
        samples = sample_classes(result.ema, proxy, data, prompts, labels, seed, sample_steps, cfg_scale,
                                 progress=progress)
        t_sample = time.perf_counter()
        if not torch.isfinite(samples).all():
            record["status"] = f"diverged at step {result.step} (non-finite samples)"
        else:
            if invalid is None:
                record.update(domain_metrics(samples, data))
                record.update(domain_floor(data, num_samples))
            else:  # no score rather than a number that looks meaningful
                record["metrics_invalid"] = invalid
                record["domain_classifier_val_accuracy"] = extractor["val_accuracy"]
            if data.kind == "latent" and (weights or out_dir):
                vae_model = load_vae(vae) if vae else None
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
    if budget.wall_clock:
        record["budget_note"] = WALL_CLOCK_NOTICE
    record["proxy"] = mapping
    record["data_info"] = data.info
    record["history"] = result.history
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_run_checkpoint(out, result, proxy, data, prompts, cfg_scale, sample_steps,
                            {"source_spec": json.loads(spec.to_json()), "source_spec_id": spec.spec_id,
                             "proxy": mapping, "train_config": asdict(config), "status": result.status,
                             "seed": seed, "budget": str(budget)})
        if samples is not None and torch.isfinite(samples).all():
            _save_grid(samples, labels, data, out / "samples.png", vae_model)
        with atomic_write(out / "record.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
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


# --- repeated seeds and paired comparisons -----------------------------------------------------------------

def _seed_list(seeds: int, seed: int) -> list[int]:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"seeds={seeds!r} must be a whole number >= 1 (3 gives a 95% interval)")
    return [seed + i for i in range(seeds)]


def evaluate_quality_seeds(spec: UNetSpec | str, data: FlowData | str = "mnist5k",
                           budget: Budget | str = QUALITY_RUN_BUDGET,
                           seed: int = 0, seeds: int = 1, *, out_dir: str | Path | None = None, **kwargs) -> dict:
    """`evaluate_quality` over seeds seed .. seed+seeds-1. Each numeric metric m becomes the seed mean, with
    m_ci_low / m_ci_high (95% t-interval over seeds) when seeds > 1; `per_seed` keeps every run's record."""
    data = load_data(data) if isinstance(data, str) else data
    records = []
    for s in _seed_list(seeds, seed):
        sub = None if out_dir is None else (Path(out_dir) if seeds == 1 else Path(out_dir) / f"seed-{s}")
        records.append(evaluate_quality(spec, data, budget, s, out_dir=sub, **kwargs))
    return aggregate_seeds(records)


def aggregate_seeds(records: list[dict]) -> dict:
    """One record from per-seed records: numeric metrics as mean (+ _ci_low/_ci_high), the rest (the regime's
    baselines among them: the same for every seed) from the first."""
    if len(records) == 1:
        return {**records[0], "seeds": 1}
    out = dict(records[0])
    for key, value in records[0].items():
        if key in ("seed", "steps", "budget_steps", "num_samples", *BASELINES) or isinstance(value, bool):
            continue
        values = [r.get(key) for r in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            values = [float(v) for v in values]
            if all(math.isfinite(v) for v in values):
                mean, low, high, _ = t_interval(values, CONFIDENCE)
            else:  # a diverged seed: the mean says so, and there is no interval to give
                mean, low, high = sum(values) / len(values), math.nan, math.nan
            out[key] = mean
            if low is not None:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = low, high
    statuses = sorted({r["status"] for r in records})
    out["status"] = "ok" if statuses == ["ok"] else "; ".join(statuses)
    out["seeds"] = len(records)
    out["seed_list"] = [r["seed"] for r in records]
    out["per_seed"] = [{k: v for k, v in r.items() if k not in ("history", "data_info", "proxy")} for r in records]
    return out


def compare_quality(spec_a: UNetSpec | str, spec_b: UNetSpec | str, data: FlowData | str = "mnist5k",
                    budget: Budget | str = "2000steps", seed: int = 0, seeds: int = 3, *,
                    proxy_config: ProxyConfig | None = None, margins: dict[str, float] | None = None,
                    **kwargs) -> dict:
    """Paired comparison of two specs at proxy scale: both train on the same seeds (common random numbers) under
    one width multiplier (from the wider of the two); per metric the mean difference A - B over seeds with its
    95% t-interval and verdict (evaluators/stats.py `paired_verdicts`: Holm over every test of the table; "A
    better" / "B better" when the difference is resolved, "comparable" when TOST puts it within the metric's
    margin, `COMPARE_MARGINS` updated by `margins`, else "not resolved"). Raises SameProxyError when the proxies
    coincide."""
    margins = {**COMPARE_MARGINS, **(margins or {})}
    unknown = sorted(set(margins) - set(COMPARED_METRICS))
    if unknown:
        raise UserError(f"no metric {', '.join(unknown)} to set a margin for: a comparison reports "
                        f"{', '.join(COMPARED_METRICS)}")
    for name, value in margins.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"the margin of {name} must be a positive number in the metric's units, got {value!r}")
    seed_values = _seed_list(seeds, seed)
    a = load_spec(spec_a) if isinstance(spec_a, str) else spec_a
    b = load_spec(spec_b) if isinstance(spec_b, str) else spec_b
    for s in (a, b):
        if not isinstance(s, UNetSpec):
            raise SpecKindError(f"the quality evaluator trains UNet specs; {s.kind} spec {s.spec_id} is not one")
    data = load_data(data) if isinstance(data, str) else data
    if proxy_config is None or proxy_config.width_mult is None:
        base = proxy_config or ProxyConfig()
        widest = max(max(a.channels), max(b.channels))
        proxy_config = ProxyConfig(width_mult=width_mult_for(widest, base.max_channels),
                                   max_channels=base.max_channels, norm_groups=base.norm_groups)
    prompts = class_prompt_embeddings(data.class_names, kwargs.get("encoder", DEFAULT_ENCODER))
    pa, _ = proxy_spec(a, data.channels, prompts.dim, prompts.pooled_dim, proxy_config)
    pb, _ = proxy_spec(b, data.channels, prompts.dim, prompts.pooled_dim, proxy_config)
    if pa.spec_id == pb.spec_id:
        raise SameProxyError(f"{a.spec_id} and {b.spec_id} map to the same proxy {pa.spec_id}: they differ only in "
                             f"knobs not represented at proxy scale (see `pocketdiff describe --proxy`), so a "
                             f"proxy run cannot tell them apart")
    runs = []
    for s in seed_values:
        ra = evaluate_quality(a, data, budget, s, proxy_config=proxy_config, **kwargs)
        rb = evaluate_quality(b, data, budget, s, proxy_config=proxy_config, **kwargs)
        if ra["stream_digest"] != rb["stream_digest"]:  # guards the pairing itself, not the user's input
            raise RuntimeError(f"seed {s}: A and B saw different training batches; the comparison is not paired")
        runs.append((ra, rb))
    rows = {}
    for name in COMPARED_METRICS:
        pairs = [(ra.get(name), rb.get(name)) for ra, rb in runs]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for pair in pairs for v in pair):
            rows[name] = ([float(x) for x, _ in pairs], [float(y) for _, y in pairs], margins.get(name))
    verdicts = paired_verdicts(rows, CONFIDENCE)
    metrics = {name: _compare_row(rows[name][0], rows[name][1], v, COMPARED_METRICS[name])
               for name, v in verdicts.items()}
    return {"a": a.spec_id, "b": b.spec_id, "proxy_a": pa.spec_id, "proxy_b": pb.spec_id,
            "width_mult": proxy_config.width_mult, "data": data.name, "budget": str(Budget.parse(budget)),
            "seeds": seed_values, "confidence": CONFIDENCE, "alpha": 1 - CONFIDENCE, "margins": margins,
            "tests": next(iter(verdicts.values())).tests if verdicts else 0, "metrics": metrics,
            "baselines": {k: runs[0][0][k] for k in BASELINES if k in runs[0][0]},
            "status": [[ra["status"], rb["status"]] for ra, rb in runs],
            "invalid": sorted({r["metrics_invalid"] for pair in runs for r in pair if "metrics_invalid" in r})}


def _compare_row(a: list[float], b: list[float], v, direction: int) -> dict:
    """One metric of a comparison: the two seed means, the paired difference A - B with its interval and tests,
    and the verdict ("A better", "B better", "comparable", "not resolved"; "no interval" with one seed)."""
    d, eq = v.difference, v.equivalence
    better = None if v.sign == 0 else ("A" if (v.sign < 0) == (direction < 0) else "B")
    verdict = ("no interval" if d.p is None else f"{better} better" if better else
               "comparable" if v.equivalent else "not resolved")
    return {"a": sum(a) / len(a), "b": sum(b) / len(b), "diff": d.mean, "ci_low": d.low, "ci_high": d.high,
            "p": d.p, "p_holm": v.p_holm, "margin": eq.margin if eq else None, "tost_p": eq.p if eq else None,
            "tost_p_holm": v.tost_p_holm, "apart": better is not None, "better": better,
            "equivalent": v.equivalent, "verdict": verdict, "direction": "lower" if direction < 0 else "higher"}


def compare_verdict(name: str, m: dict, n_seeds: int) -> str:
    """One plain sentence: do the data tell A and B apart on this metric, or show them comparable?"""
    if m["ci_low"] is None:
        return f"{name}: one seed gives no interval; use --seeds 3 or more to tell A and B apart"
    text = (f"{name}: A - B = {m['diff']:+.4g} [{m['ci_low']:+.4g}, {m['ci_high']:+.4g}] "
            f"(p {m['p']:.2g}, Holm {m['p_holm']:.2g})")
    within = (f"within +-{m['margin']:g}: TOST p {m['tost_p']:.2g}, Holm {m['tost_p_holm']:.2g}"
              if m["margin"] is not None else f"no margin declared: never 'comparable' without --margin {name}=VALUE")
    seeds = f"{n_seeds} paired seeds"
    if m["better"]:
        return f"{text}: {m['better']} is better ({m['direction']} is better; {seeds})"
    if m["equivalent"]:
        return f"{text}: comparable ({within}; {seeds})"
    return f"{text}: not resolved ({within}; {seeds})"
