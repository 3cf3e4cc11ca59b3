"""Study workers with a cheap stand-in for the quality evaluator, for tests of many processes on one storage.

`FAKE_QUALITY` scores a spec from its fields alone, made *better* at lower rungs so that a front mixing rungs
would pick rung-0 trials (tests/studies/test_halving.py relies on it); `FAKE_QUALITY_SLEEP` seconds of sleep stand
for training. `start(path, storage, ...)` runs the CLI (`study worker` by default) in a subprocess with the
stand-in and constant cheap metrics patched in; `FAKE_SAME_SEED=1` gives every worker the study's sampler seed,
so the workers keep proposing the same designs. `single_budget_study` writes a study the stand-in scores, and
`designs` counts what n_trials counts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

from tests import studyfiles

REPO = Path(__file__).resolve().parents[2]

FAKE_QUALITY = '''
def fake_quality(spec, cfg, out_dir, on_report):
    import time, os
    steps = cfg.quality.budget.steps
    time.sleep(float(os.environ.get("FAKE_QUALITY_SLEEP", "0")))
    st = spec.stages
    base = st[1].channels / 64 + st[2].channels / 128 + 3 * spec.ffn_ratio + (spec.attention == "mqa")
    return {"fd_domain": base * (1 + steps / 30), "fd_domain_ci_low": base * (1 + steps / 30) - 1,
            "fd_domain_ci_high": base * (1 + steps / 30) + 1, "_evaluator_seconds": 0.0, "_user_attrs": {}}
'''
_ns: dict = {}
exec(FAKE_QUALITY, _ns)
fake_quality = _ns["fake_quality"]


def fake_cheap(spec, latent, device) -> dict[str, float]:
    return {"params_m": 1.0, "latency_ms": 1.0}


# A worker subprocess: the CLI with the stand-ins patched in.
DRIVER = FAKE_QUALITY + '''
import os, sys
from studies import evaluate, opening
evaluate.quality_metrics = fake_quality
evaluate.cheap_metrics = lambda spec, latent, device: {"params_m": 1.0, "latency_ms": 1.0}
if os.environ.get("FAKE_SAME_SEED") == "1":
    opening.worker_seed = lambda study_seed, worker: study_seed
from pocketdiff.cli import main
sys.exit(main(sys.argv[1:]))
'''


def start(path, storage: str, *extra: str, command: str = "worker", env: dict | None = None) -> subprocess.Popen:
    """`pocketdiff study COMMAND PATH --storage STORAGE --no-progress EXTRA...` with the stand-ins, its output
    piped."""
    return subprocess.Popen([sys.executable, "-c", DRIVER, "study", command, str(path), "--storage", storage,
                             "--no-progress", *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[str, str]]:
    """Wait for every worker; each must exit 0 (its stderr tail is the failure message)."""
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    return outs


def single_budget_study(tmp_path, name, n_trials, space=studyfiles.SNAPGEN_SPACE):
    """A single-budget study of full-size candidates scored by the stand-in quality evaluator
    (`FAKE_QUALITY`)."""
    return studyfiles.write(tmp_path / f"{name}.toml", studyfiles.study(
        name, n_trials=n_trials, study={"seed": 0}, target={"latent": 64}, space=space,
        objectives={"fd_domain": "minimize"},
        quality={"evaluator": "flow", "budget": "11steps", "early_stop": {"enabled": False}}))


def designs(trials):
    """(distinct finished designs, finished trials that evaluated their design: neither reused nor duplicate)."""
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                and "duplicate_of" not in t.user_attrs]
    evaluated = [t for t in finished if "reused_from" not in t.user_attrs]
    return len({t.user_attrs["spec_id"] for t in finished}), len(evaluated)
