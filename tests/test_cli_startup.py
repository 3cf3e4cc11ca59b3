"""The CLI starts without loading torch (issue 15: `pocketdiff --help` and `presets list` answer at once).

Run in a fresh interpreter: the test process itself has torch loaded already.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from pocketdiff.cli import build_parser, main
build_parser()
rc = main({argv!r})
heavy = sorted(m for m in ("torch", "coremltools", "streamlit", "optuna", "pandas") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _heavy_after(argv: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    line = next((x for x in out.stdout.splitlines() if x.startswith("HEAVY=")), None)
    assert line is not None, out.stdout + out.stderr
    return [m for m in line[len("HEAVY="):].split(",") if m]


def test_building_the_parser_and_listing_presets_loads_no_heavy_module():
    assert _heavy_after(["presets", "list"]) == []


def test_the_library_still_loads_torch_when_a_builder_is_used():
    # the lazy attribute of search_space really resolves to the builder (not a stub)
    from search_space import PRESETS, build_model

    model = build_model(PRESETS["tiny-debug"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cli_default_latent_matches_the_cost_evaluator():
    from evaluators.cost import DEFAULT_LATENT
    from pocketdiff import cmd_describe

    assert cmd_describe.DEFAULT_LATENT == DEFAULT_LATENT
