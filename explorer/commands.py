"""The `pocketdiff` commands the explorer suggests, in one place, so a test can run each one's `--help`
(tests/explorer/test_app.py): the app never suggests a command that does not exist."""
from __future__ import annotations

import json

from training.budget import QUALITY_RUN_BUDGET

STUDY_RUN = "pocketdiff study run studies/{name}.toml"


def study_run(name: str) -> str:
    return STUDY_RUN.format(name=name)


def design_commands(spec_id: str, kind: str, latent: int, device: str, eval_key: str | None = None) -> list[str]:
    """What to do with a trial's design once its spec JSON is saved as `<spec_id>.json`."""
    lines = [f"pocketdiff describe {spec_id}.json --latent {latent}",
             f"pocketdiff export coreml {spec_id}.json --latent {latent} -o {spec_id}.mlpackage",
             f"pocketdiff latency predict {spec_id}.json --latent {latent} --device {device}"]
    if kind == "unet":  # the flow quality evaluator and full training take UNets; the study's data and budget
        try:
            key = json.loads(eval_key) if eval_key else {}
        except json.JSONDecodeError:
            key = {}
        lines += [f"pocketdiff train unet {spec_id}.json --data {key.get('data', 'mnist5k')} --out runs/train/{spec_id}",
                  f"pocketdiff eval quality {spec_id}.json --data {key.get('data', 'mnist5k')} "
                  f"--budget {key.get('budget', str(QUALITY_RUN_BUDGET))} --out runs/{spec_id}"]
    else:
        lines.append(f"pocketdiff train decoder {spec_id}.json --out runs/train/{spec_id}")
    return lines
