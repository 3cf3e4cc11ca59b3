"""The decoder evaluator: a short decoder training with a frozen encoder, scored by held-out reconstruction PSNR
beside the encoder's own decoder (evaluators/decoder_quality.py; the paper's Table 2, docs/paper.md section 2).

Its one declaration is here; the defaults are those of `evaluate_decoder_quality` (held equal by the contract test
in tests/evaluators/test_registry.py).
"""
from __future__ import annotations

from training.budget import DECODER_RUN_BUDGET, Budget

from ..registry import Evaluator, Option, budget_callback, register


def parse_data(name: str, value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} = {value!r} must be a string")
    if value == "sample-images" or (value.partition(":")[0] == "folder" and value.partition(":")[2]):
        return value
    raise ValueError(f"{name} = {value!r} is not a decoder data source; use sample-images or folder:PATH")


def parse_budget(name: str, value) -> Budget:
    return Budget.parse(value)


def run(spec, config: dict, seed: int, report, out_dir) -> dict:
    from evaluators.decoder_quality import evaluate_decoder_quality

    budget = config["budget"]
    result = evaluate_decoder_quality(spec, config["data"], budget, seed, out_dir=out_dir,
                                      callback=budget_callback(budget, report), encoder=config["encoder"])
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["_evaluator_seconds"] = result["train_seconds"]
    metrics["_user_attrs"] = {k: result[k] for k in ("status", "samples", "record", "encoder") if k in result}
    return metrics


# Bump the version when a change makes old records incomparable. 2: paired initial weights (search_space/init.py)
EVALUATOR = register(Evaluator(
    name="decoder", version="decoder-quality-2", spec_kinds=("decoder",), code=("evaluators.decoder_quality",),
    run=run, metrics={"psnr": "maximize", "val_loss": "minimize", "lpips": "minimize", "baseline_psnr": "maximize"},
    options=(Option("data", str, "sample-images", "images the decoder reconstructs: sample-images or folder:PATH",
                    parse_data),
             Option("budget", Budget, DECODER_RUN_BUDGET, "training budget, e.g. 30s or 400steps", parse_budget),
             Option("encoder", str, "tiny-ae", "frozen encoder: tiny-ae or vae:/path/to/vae")),
    doc="short decoder training with a frozen encoder, scored by held-out reconstruction PSNR"))
