"""Shared fixtures of the training tests."""
import copy

import pytest

from search_space import build_model, load_spec
from training.checkpoint import save_checkpoint

# run_meta's fields for tiny-debug on MNIST-5k (training/checkpoint.py), as a training run writes them.
CHECKPOINT_META = {"data": "mnist5k", "encoder": "minilm", "class_names": [str(i) for i in range(10)],
                   "resolution": 32, "data_kind": "pixel", "patch": 1, "channels": 1, "size": 32, "cfg_scale": 2.0,
                   "sample_steps": 2, "latent_scaling": None}


@pytest.fixture()
def checkpoint(tmp_path):
    """A run folder of ours holding one resumable checkpoint of tiny-debug."""
    spec = load_spec("tiny-debug")
    model = build_model(spec)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", 2, model, copy.deepcopy(model), spec, CHECKPOINT_META, {"step": 2})
    return run, run / "checkpoints" / "step_0000002"


