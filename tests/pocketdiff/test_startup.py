"""The CLI starts without loading torch (`pocketdiff --help`, `presets list`, `study status` and a cached
`latency predict` answer at once; docs/architecture.md). Checked by what a fresh interpreter has imported after the command, not by timing it.

Run in a fresh interpreter: the test process itself has torch loaded already.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "coremltools", "streamlit", "optuna", "pandas", "scipy", "alembic", "sklearn", "matplotlib")
PROBE = """
import sys
from pocketdiff.cli import build_parser, main
build_parser()
try:
    rc = main({argv!r})
except SystemExit as e:  # --help exits
    rc = e.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("RC=" + str(rc))
print("HEAVY=" + ",".join(heavy))
"""


def _heavy_after(argv: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv, heavy=HEAVY)], cwd=cwd, capture_output=True,
                         text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"} | (env or {}))
    line = next((x for x in out.stdout.splitlines() if x.startswith("HEAVY=")), None)
    assert line is not None and "RC=0" in out.stdout, out.stdout + out.stderr
    return [m for m in line[len("HEAVY="):].split(",") if m]


def test_building_the_parser_and_listing_presets_loads_no_heavy_module():
    assert _heavy_after(["presets", "list"]) == []
    assert _heavy_after(["--help"]) == []


def test_study_status_of_a_stored_study_loads_no_torch_and_no_pandas(tmp_path, study_file):
    """Loading the study file (evaluators registered from plain-Python modules, budgets and devices checked) and
    reading the storage need only Optuna's storage: no torch, pandas, scipy, streamlit or coremltools. Optuna
    itself is imported (it reads the storage), and so is sqlalchemy; alembic is imported by Optuna's
    RDBStorage and is listed so that this test says when that changes."""
    from studies.config import load_study_file
    from studies.runner import run_study

    path = study_file("startup", target={"latent": 16}, space={"base": "tiny-debug", "ffn_ratio": {"choices": [2.0, 4.0]}},
                      objectives={"params_m": "minimize", "latency_ms": "minimize"})
    storage = f"sqlite:///{tmp_path}/startup.db"
    study, _ = run_study(load_study_file(path, storage=storage), progress=False, echo=lambda s: None)
    assert len(study.get_trials()) == 2
    heavy = _heavy_after(["study", "status", str(path), "--storage", storage], cwd=tmp_path)
    assert [m for m in heavy if m not in ("optuna", "alembic")] == [], heavy


def test_a_cached_latency_prediction_loads_no_torch_and_no_scipy(tmp_path):
    """The first prediction walks the model (torch); the second reads its features from the cache and predicts
    from the profile with numpy alone. The first run's torch shows that the probe sees an import, and that the
    second run, which has none, did not walk the model again."""
    predict = ["latency", "predict", "tiny-debug", "--latent", "32", "--device", "a17pro"]
    env = {"POCKETDIFF_CACHE": str(tmp_path / "cache")}
    assert "torch" in _heavy_after(predict, env=env)
    assert _heavy_after(predict, env=env) == []
    library = ["latency", "predict", "--torchvision", "resnet18", "--input", "1x3x32x32", "--device", "a17pro"]
    assert "torch" in _heavy_after(library, env=env)
    assert _heavy_after(library, env=env) == []


def test_the_library_still_loads_torch_when_a_builder_is_used():
    # the lazy attribute of search_space really resolves to the builder (not a stub)
    from search_space import PRESETS, build_model

    model = build_model(PRESETS["tiny-debug"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cli_default_latent_matches_the_cost_evaluator():
    from evaluators.cost import DEFAULT_LATENT
    from pocketdiff import cmd_describe

    assert cmd_describe.DEFAULT_LATENT == DEFAULT_LATENT
