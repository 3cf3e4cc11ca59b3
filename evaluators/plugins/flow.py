"""The flow evaluator: a short flow-matching run of a UNet's proxy, sampled and scored by validation loss and the
domain FD (Inception FID when its weights are at hand), repeated over seeds with a 95% interval per metric.
evaluators/quality.py does the work; the protocol is docs/quality.md.

Its one declaration is here; the defaults are those of evaluators/quality.py's `evaluate_quality` (the contract
test in tests/evaluators/test_registry.py holds them equal), so a study and `pocketdiff eval quality` score alike.
"""
from __future__ import annotations

from training.baselines import BASELINES, LEARNED_FRACTION
from training.budget import QUALITY_RUN_BUDGET, WARMUP_STEPS, Budget
from training.config import MAX_CFG_SCALE, MAX_SAMPLE_STEPS, MAX_SAMPLES, MAX_SEEDS, LoopConfig
from training.proxy import ProxyConfig

from ..registry import Evaluator, Option, budget_callback, number_in, register

DATA_SOURCES = "mnist5k, mnist5k-p1|p2|p4|p8, imagenet:PATH, folder:PATH or latents:PATH"


def parse_data(name: str, value) -> str:
    """A data source the flow trainer loads, checked by form (a folder's existence is checked before a run)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} = {value!r} must be a string")
    kind, _, where = value.partition(":")
    if value == "mnist5k" or value in (f"mnist5k-p{p}" for p in (1, 2, 4, 8)) \
            or (kind in ("imagenet", "folder", "latents") and where):
        return value
    raise ValueError(f"{name} = {value!r} is not a flow data source; use {DATA_SOURCES}")


def parse_budget(name: str, value) -> Budget:
    """A training budget; a step budget must be longer than the trainer's learning-rate warm-up."""
    budget = Budget.parse(value)
    if budget.steps is not None:
        budget.resolve(train_count=1, batch_size=1, warmup_steps=WARMUP_STEPS)
    return budget


def parse_proxy(name: str, value) -> ProxyConfig:
    """The [quality] proxy table, e.g. { width_mult = 0.125 } (training/proxy.py)."""
    if isinstance(value, ProxyConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a table, e.g. {name} = {{ width_mult = 0.125 }}")
    try:
        return ProxyConfig(**value)
    except TypeError:
        raise ValueError(f"{name}: unknown key(s) {', '.join(sorted(value))}; known: width_mult, max_channels, "
                         f"norm_groups") from None


def run(spec, config: dict, seed: int, report, out_dir) -> dict:
    """`evaluate_quality_seeds` at the configured proxy, reporting (budget fraction, values) while it trains.
    Returns float metrics, `_user_attrs` (proxy mapping, artifact paths, each metric's per-seed values) and
    `_evaluator_seconds` (training, sampling and scoring time summed over the seeds, for the workbench's
    overhead share)."""
    from evaluators import quality

    budget = config["budget"]
    result = quality.evaluate_quality_seeds(
        spec, config["data"], budget, seed, config["seeds"], out_dir=out_dir,
        callback=budget_callback(budget, report), progress=False, sample_steps=config["sample_steps"],
        cfg_scale=config["guidance"], num_samples=config["n_samples"], proxy_config=config["proxy"])
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    runs = result.get("per_seed") or [result]  # the aggregate holds the seed MEAN of each seconds_* field
    metrics["_evaluator_seconds"] = sum(r.get("seconds_train", 0.0) + r.get("seconds_sample", 0.0)
                                        + r.get("seconds_metrics", 0.0) for r in runs)
    status = str(result.get("status", "ok"))
    if status.startswith("diverged"):
        metrics["diverged_at_step"] = float(status.split("step")[1].split()[0])
    metrics["_user_attrs"] = {k: result[k] for k in ("proxy", "status", "out_dir", "samples", "record",
                                                     "metrics_invalid", "seed_list") if k in result}
    if "per_seed" in result:  # every metric's value per seed: paired differences between trials (Figure 3)
        metrics["_user_attrs"]["per_seed"] = {m: [float(r[m]) for r in runs] for m in EVALUATOR.metrics
                                              if all(isinstance(r.get(m), (int, float)) for r in runs)}
    return metrics


# Bump the version when a change makes old records incomparable (studies key their evaluation cache on it).
# 2: study-wide proxy width, budget schedule, CRN, stratified val loss; 3: 192 samples by default, fused AdamW;
# 4: paired initial weights (search_space/init.py). The regime baselines and the learned fraction added fields,
# not changed numbers: no version of their own (the code fingerprint covers training/baselines.py, so no cached
# result without them is served).
EVALUATOR = register(Evaluator(
    name="flow", version="quality-4", spec_kinds=("unet",), code=("evaluators.quality", "training.baselines"),
    run=run, references=BASELINES,
    metrics={"val_loss": "minimize", LEARNED_FRACTION: "maximize", "fd_domain": "minimize", "kid_domain": "minimize",
             "precision_domain": "maximize", "recall_domain": "maximize", "fid": "minimize", "kid": "minimize",
             "precision": "maximize", "recall": "maximize"},
    options=(
        Option("data", str, "mnist5k", f"training data: {DATA_SOURCES}", parse_data),
        Option("budget", Budget, QUALITY_RUN_BUDGET, "training budget, e.g. 500steps or 60s", parse_budget),
        Option("seeds", int, 1, "seeds per candidate; 3 gives a 95% interval",
               number_in(1, MAX_SEEDS, note=" (3 gives a 95% interval)")),
        Option("n_samples", int, None, "generated images per seed (default: up to 192, evaluators/quality.py "
                                       "NUM_SAMPLES, at most the reference set; 0: validation loss only)",
               number_in(0, MAX_SAMPLES, note=" (0: validation loss only, no sample metrics)")),
        Option("sample_steps", int, LoopConfig.sample_steps, "Euler steps when sampling",
               number_in(1, MAX_SAMPLE_STEPS)),
        Option("guidance", float, LoopConfig.cfg_scale, "classifier-free guidance scale",
               number_in(0, MAX_CFG_SCALE, whole=False)),
        Option("proxy", ProxyConfig, ProxyConfig(), "proxy mapping, e.g. { width_mult = 0.125 }", parse_proxy)),
    doc="proxy flow-matching run, scored by validation loss (with the regime's baselines and the learned "
        "fraction) and domain FD (Inception FID when available)"))
