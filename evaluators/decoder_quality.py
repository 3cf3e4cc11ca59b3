"""Decoder quality evaluator: a short decoder training with a frozen encoder, scored by held-out PSNR.

The decoder-search counterpart of the UNet quality evaluator (docs/paper.md section 2, Table 2): candidates are
small enough (1-2M params) to train at full size on CPU; only the patch size and budget are reduced.
`evaluate_decoder_quality(spec, data, budget, seed) -> dict of floats` plus the baseline (the frozen
encoder's own decoder) for comparison.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from search_space import DecoderSpec
from search_space.outputs import atomic_write
from training.budget import DECODER_RUN_BUDGET, Budget
from training.decoder import DecoderTrainConfig, load_encoder, load_patches, save_reconstructions, train_decoder


def evaluate_decoder_quality(spec: DecoderSpec, data: str = "sample-images", budget: "Budget | str" = DECODER_RUN_BUDGET, seed: int = 0,
                             out_dir: str | Path | None = None, callback: Callable[[dict], bool | None] | None = None,
                             encoder: str = "tiny-ae", progress: bool = False, ae_steps: int | None = None,
                             **options) -> dict:
    if not isinstance(spec, DecoderSpec):
        raise TypeError(f"the decoder quality evaluator needs a DecoderSpec, got {type(spec).__name__}")
    t0 = time.perf_counter()
    patches = load_patches(data, seed=0)
    enc = load_encoder(encoder, patches, spec.latent_channels, len(spec.channels), seed=0, progress=progress,
                       **({"ae_steps": ae_steps} if ae_steps else {}))
    config = DecoderTrainConfig(**{k: v for k, v in options.items() if k in DecoderTrainConfig.__dataclass_fields__})
    result = train_decoder(spec, patches, enc, budget, seed, config, callback)
    out = {
        **result.metrics,
        "baseline_psnr": enc.baseline["psnr"],
        "train_seconds": result.seconds,
        "train_steps": float(result.steps),
        "evaluator_seconds": time.perf_counter() - t0,
        "status": "; ".join(result.notices) or "ok",
        "encoder": enc.name,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_reconstructions(result.model, enc, patches, out_dir / "reconstructions.png")
        record = {"spec": json.loads(spec.to_json()), "spec_id": spec.spec_id, "metrics": out,
                  "history": result.history, "baseline": enc.baseline, "data": data, "budget": str(budget),
                  "seed": seed}
        with atomic_write(out_dir / "record.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2, default=str))
        out["samples"] = str(out_dir / "reconstructions.png")
        out["record"] = str(out_dir / "record.json")
    return out
