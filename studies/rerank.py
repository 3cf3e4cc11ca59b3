"""Re-rank a study after its latency profile changed (`pocketdiff study rerank FILE`).

A trial's predicted latency is stored when the trial runs, with the fit of the profile that predicted it
(`latency_fit`). Optuna never changes a finished trial, so a refit (`pocketdiff latency fit`, or `latency fit
--device` after a user's own measurements) reaches a study as an overlay: `rerank` predicts every complete
trial's latency with the chip's current profile and stores the new values on the study (the study attribute
`latency_refit`); `current_trials` returns the trials with the overlay applied: the latency metrics, the
objectives that are latency metrics, and the latency constraints. The front (`study status`, the explorer),
the winner (`study best`) and the exports read trials through it, so they rank by the current profile. The
values the trial ran with stay in it (`latency_ms_at_run` in the overlaid copy).
"""
from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from .overlay import LATENCY_METRICS, REFIT
from .queries import pareto_rows
from .record import TrialRecord


def rerank(study, device: str, latent: int, limits: dict[str, float], profile_dir=None) -> dict[str, Any]:
    """Predict every complete trial's latency with `device`'s current profile and store it as the study's
    overlay. `limits` are the study file's latency constraints ({"max_latency_ms": 300.0}). Returns what
    changed: the fit, each trial's latency at run time and now, and the front before and after."""
    from latency_models.api import predict
    from search_space import spec_from_dict

    before = [r["number"] for r in pareto_rows(study)]
    trials, fit, chip = {}, None, None
    changes = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rec = TrialRecord.of(t)
        if rec.spec is None or not isinstance(rec.attrs.get("latency_ms"), (int, float)):
            continue
        p = predict(spec_from_dict(rec.spec), None, device, latent=latent, profile_dir=profile_dir)
        fit, chip = p.profile_fit_id, p.chip
        trials[str(t.number)] = {"latency_ms": p.ms, "latency_low_ms": p.low_ms, "latency_high_ms": p.high_ms}
        changes.append({"trial": t.number, "at_run_ms": float(rec.attrs["latency_ms"]), "now_ms": p.ms,
                        "fit_at_run": rec.attrs.get("latency_fit")})
    if not trials:
        return {"fit_id": None, "chip": None, "changes": [], "front_before": before, "front_after": before}
    limits = {k: float(v) for k, v in limits.items() if k.removeprefix("max_") in LATENCY_METRICS}
    study.set_user_attr(REFIT, {"fit_id": fit, "chip": chip, "latent": latent, "limits": limits, "trials": trials})
    return {"fit_id": fit, "chip": chip, "changes": changes, "front_before": before,
            "front_after": [r["number"] for r in pareto_rows(study)]}
