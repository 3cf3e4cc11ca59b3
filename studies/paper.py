"""The paper's published Figure 3 and Table 2 numbers (docs/paper.md sections 1 and 2), and whether stored trials
hold a Figure 3 step and the step before it. No pandas: `study status` asks `fig3_pair_possible` before anything
imports it (studies/results.py builds the tables from a pandas frame, and re-exports these names).
"""
from __future__ import annotations

from typing import Any, Iterable

from .record import TrialRecord

# The paper's Figure 3 (docs/paper.md section 1): change of each step relative to its parent step [paper].
FIG3_PARENT = {"b": "a", "c1": "b", "c2": "b", "d": "c2", "e": "d", "f": "e", "f-1to1": "e", "g": "f"}
FIG3_PAPER = {  # step: (change, params delta, FLOPs delta, ImageNet FID)
    "a": ("thin SDXL baseline", "-", "-", "3.76"),
    "b": ("self-attention only in the lowest-resolution stage", "~0", "-17%", "3.12"),
    "c1": ("separable convs, no expansion", "-24%", "-", "3.38"),
    "c2": ("separable convs, expansion 2", "-15% (vs b)", "-27%", "lower than b"),
    "d": ("FFN expansion 4 -> 3", "-12%", "-12%", "comparable"),
    "e": ("MHSA -> MQA", "-16%", "-6%", "minimal impact"),
    "f": ("condition injection in stage 1 (CA + FFN blocks)", "smaller", "lower", "better"),
    "f-1to1": ("step f, one CA + FFN block per replaced res block (our other reading)", "smaller", "lower",
               "better"),
    "g": ("QK RMSNorm + 2D RoPE", "negligible", "negligible", "better"),
}
# The paper's Table 2 (docs/paper.md section 2): decode a 128x128 latent to 1024x1024; PSNR on COCO 2017 val [paper].
TABLE2_PAPER = {"sdxl-decoder": (4, 24.89, 49.49, 4970), "sd3-decoder": (16, 27.92, 49.55, 4970),
                "snapgen-decoder": (16, 27.85, 1.38, 224)}  # latent ch, PSNR, params (M), GFLOPs

# The paper's Figure 3: the published ImageNet FID of each step against its parent step [paper]:
# "better" = lower FID than the parent, "worse" = higher, "comparable" = the paper claims no real change
# (d: "comparable", e: "minimal impact").
FIG3_PAPER_ORDER = {"b": "better", "c1": "worse", "c2": "better", "d": "comparable", "e": "comparable",
                    "f": "better", "f-1to1": "better", "g": "better"}
# Equivalence margins for the paper's "comparable" steps, in the proxy metric's units, fixed before any run and
# independent of the study file: our difference is "consistent with the paper's 'comparable'" only when TOST
# puts it within +-margin (studies/results.py `fig3_orderings`). A metric without one gets no such verdict.
# [choose] fd_domain 5.0: the domain FD's own sampling SD at ~200 samples (5.6 at 192; paper-fig3.toml draws
#   200) and its real-image floor (4.65), benchmarks/fd_sample_count.md: below that the metric cannot tell.
# [choose] val_loss 0.02: under half the spread of one-knob designs at the 768-step reference (0.527-0.575,
#   benchmarks/proxy_fidelity.md).
FIG3_MARGINS = {"fd_domain": 5.0, "val_loss": 0.02}


def fig3_pair_possible(trials: Iterable[Any]) -> bool:
    """Whether finished trials hold a Figure 3 step and the step before it (COMPLETE, any reading): the condition
    without which no ordering can be reported (results.fig3_orderings_of then checks the readings)."""
    done = {TrialRecord.of(t).chain_preset for t in trials if t.state.name == "COMPLETE"}
    return any(f"fig3-{step}" in done and f"fig3-{parent}" in done for step, parent in FIG3_PARENT.items())
