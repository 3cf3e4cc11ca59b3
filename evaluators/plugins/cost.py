"""The cost evaluator: parameters and MACs of the full-size model, counted on the meta device (evaluators/cost.py:
one op trace of the candidate, shared with the latency evaluator), with the per-stage table it stores on the
trial for the explorer."""
from __future__ import annotations

from ..registry import Evaluator, Option, register


def run(spec, config: dict, seed: int, report, out_dir) -> dict:
    from evaluators.cost import stage_costs

    costs = stage_costs(spec, config["latent"])
    return {"params_m": costs["params"] / 1e6, "gmacs": costs["gmacs"],
            "gmacs_no_attention": costs["gmacs_no_attention"], "_user_attrs": {"stage_costs": costs}}


EVALUATOR = register(Evaluator(
    name="cost", version="cost-1", cheap=True, code=("evaluators.cost",), run=run,
    metrics={"params_m": "minimize", "gmacs": "minimize", "gmacs_no_attention": "minimize"},
    # 128: the paper reports FLOPs at a 128x128 latent, 1024 px (docs/paper.md section 1)
    options=(Option("latent", int, 128, "full-size latent side the model is counted at"),),
    doc="params and MACs of the full-size model on the meta device, per stage and per op kind"))
