"""Hostile input: every bad value in a study file or on the command line is one clean line naming
the key (exit 2), never a traceback and never a study that loads and then fails every trial."""
import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketdiff.cli import main
from search_space import PRESETS
from studies.config import StudyFileError, parse_study
from training.budget import Budget
from studies.runner import run_study
from studies.storage import StudyError
from tests import studyfiles

REPO = Path(__file__).resolve().parents[1]

def _study(**changes) -> dict:
    """The base study (a tiny-debug space, a 12-step flow run) with `section.key = value` changes (value None
    removes the key)."""
    data = studyfiles.study("hostile", target={"latent": 32, "device": "a17pro"},
                            space={"base": "tiny-debug", "ffn_ratio": {"choices": [2.0, 3.0]}},
                            quality={"evaluator": "flow", "data": "mnist5k", "budget": "12steps"},
                            objectives={"val_loss": "minimize", "latency_ms": "minimize"})
    for dotted, value in changes.items():
        section, key = dotted.split(".", 1)
        if value is None:
            data.get(section, {}).pop(key, None)
        else:
            data.setdefault(section, {})[key] = value
    return data


def test_the_base_study_loads():
    cfg = parse_study(_study())
    assert cfg.name == "hostile" and cfg.quality.budget == Budget(steps=12) and cfg.quality.data == "mnist5k"


@pytest.mark.parametrize("change, key, says", [
    ({"quality.budget": "abc"}, "[quality] budget", "not understood"),
    ({"quality.budget": "-5s"}, "[quality] budget", "negative"),
    ({"quality.budget": "6steps"}, "[quality] budget", "10-step warm-up"),
    ({"quality.rungs": ["4steps", "40steps"]}, "[quality] rungs", "10-step warm-up"),
    ({"quality.data": "imagenet"}, "[quality] data", "not a flow data source"),
    ({"quality.n_samples": -3}, "[quality] n_samples", "from 0 to 100000"),
    ({"quality.early_stop": {"quantile": 1.5}}, "[quality.early_stop] quantile", "between 0 and 1"),
    ({"quality.early_stop": {"warmup_fraction": 0}}, "[quality.early_stop] warmup_fraction", "between 0 and 1"),
    ({"target.device": "pixel99"}, "[target] device", "unknown device"),
    ({"space.ffn_ratio": {"low": 0.0, "high": 4.0, "log": True}}, "[space] ffn_ratio", "needs low > 0"),
    ({"space.ffn_ratio": {"low": 1.0, "high": 4.0, "step": 0}}, "[space] ffn_ratio", "step = 0"),
    ({"space.ffn_ratio": {"choices": [-2.0, 3.0]}}, "[space] ffn_ratio", "negative"),
    ({"space.ffn_ratio": {"choices": [2.0], "when": ["x"]}}, "[space] ffn_ratio", "when"),
    ({"study.timeout": "10m"}, "[study] timeout", "seconds"),
    ({"study.name": "../../escape"}, "[study] name", "simple name"),
    ({"study.n_trials": -3}, "[study] n_trials", "non-negative"),
    ({"study.heartbeat_interval": 0}, "[study] heartbeat_interval", "at least 1"),
    ({"study.storage": "sqlite:///runs/a#b.db"}, "[study] storage", "'#'"),
    ({"study.storage": "sqlite:///runs/a.db?mode=ro"}, "[study] storage", "?query"),
    ({"study.storage": "mongodb://x/y"}, "[study] storage", "unknown scheme"),
    ({"enqueue.presets": ["tiny-debug-decoder"]}, "[enqueue] presets", "is a decoder preset"),
    ({"enqueue.presets": "tiny-debug"}, "[enqueue] presets", "must be a list"),
])
def test_each_class_of_mistake_is_refused_at_load_naming_the_key(change, key, says):
    with pytest.raises(StudyFileError) as e:
        parse_study(_study(**change))
    assert key in str(e.value) and says in str(e.value)


def test_a_data_folder_missing_on_this_machine_stops_the_run_before_anything_is_stored(tmp_path):
    cfg = parse_study(_study(**{"quality.data": f"latents:{tmp_path}/none"}),
                      storage=f"sqlite:///{tmp_path}/s.db")  # loads: the file may be meant for a GPU worker
    with pytest.raises(StudyFileError, match="does not exist on this machine"):
        run_study(cfg, progress=False, echo=lambda s: None)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("n_trials, timeout", [(-3, None), (0, None), (None, -1.0), (None, float("nan"))])
def test_run_counts_and_timeouts_are_checked(tmp_path, n_trials, timeout):
    cfg = parse_study(_study(), storage=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(StudyError, match="--n-trials|--timeout"):
        run_study(cfg, n_trials=n_trials, timeout=timeout, progress=False, echo=lambda s: None)
    assert not (tmp_path / "s.db").exists()


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in this process: (exit code, stderr). An exception escaping `main` is a traceback."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


@pytest.mark.parametrize("argv, says", [
    (["describe", "tiny-debug", "--set", "stages=3", "--no-memory"], "--set stages is a list of 2 entries, not a single value"),
    (["describe", "{tmp}/list.json", "--no-memory"], "must be a JSON object"),
    (["describe", "tiny-debug", "--set", "schema=1", "--no-memory"], "schema is the version of the spec format"),
    (["describe", "tiny-debug", "--set", 'stages.0={{"channels": 48}}', "--no-memory"],  # {{ }}: format()
     "an object without cross_attention, down_layers"),
    (["latency", "predict", "--timm", "fastvit_t8", "--input", "1x3x224", "--device", "a17pro"], "BATCHx3xHxW"),
    (["latency", "predict", "tiny-debug", "--weight-bits", "0", "--device", "a17pro"], "weight bits 0"),
    (["study", "run", "{tmp}/s.toml", "--n-trials", "-3", "--no-progress"], "--n-trials -3"),
    (["study", "run", "{tmp}/big-seed.toml", "--no-progress"], "seed = 4294967296 must be at most 4294967295"),
    (["train", "unet", "tiny-debug", "--lr", "inf", "--out", "{tmp}/r"], "lr=inf must be a finite number > 0"),
    (["train", "unet", "tiny-debug", "--ema-decay", "nan", "--out", "{tmp}/r"], "ema_decay=nan must be a finite"),
    (["train", "unet", "tiny-debug", "--cfg-scale", "nan", "--out", "{tmp}/r"], "cfg_scale=nan must be a finite"),
    (["train", "unet", "tiny-debug", "--seed", str(2 ** 70), "--out", "{tmp}/r"], "seed=1180591620717411303424 "),
    (["eval", "quality", "tiny-debug", "--budget", "1e400steps"], "budget '1e400steps' is too large"),
    (["eval", "quality", "tiny-debug", "--budget", "\u0663\u0660steps"], "is not understood"),
])
def test_cli_mistakes_are_one_line_exit_2(tmp_path, argv, says):
    (tmp_path / "list.json").write_text("[1, 2]")
    studyfiles.write(tmp_path / "s.toml", _study(**{"study.storage": f"sqlite:///{tmp_path}/s.db"}))
    studyfiles.write(tmp_path / "big-seed.toml", _study(**{"study.storage": f"sqlite:///{tmp_path}/b.db",
                                                           "study.seed": 2 ** 32}))
    code, err = _cli([a.format(tmp=tmp_path) for a in argv])
    assert not (tmp_path / "r").exists() and not (tmp_path / "b.db").exists()  # refused before any work
    assert code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["eval", "quality", "tiny-debug", "--seed", str(2 ** 70)],
                                  ["eval", "compare", "fig3-a", "fig3-b", "--seed", "-1"],
                                  ["sample", "{tmp}", "--prompt", "a digit", "--seed", str(2 ** 32)]])
def test_a_seed_outside_the_samplers_range_is_an_argparse_error(tmp_path, argv):
    """Flags checked by their argparse type: one error line (exit 2), pointing at --help, no usage block."""
    code, err = _cli([a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "is outside 0..4294967295 (2**32 - 1)" in err, err


def test_study_run_exits_1_when_every_trial_failed(tmp_path):
    """A space whose every point is invalid (heads do not divide the widths) fails each trial."""
    bad = _study(**{"space.ffn_ratio": None, "space.head_dim": {"choices": [7]}, "objectives.val_loss": None})
    bad["quality"] = {"evaluator": "none"}
    path = studyfiles.write(tmp_path / "bad.toml", bad)
    r = subprocess.run([sys.executable, "-m", "pocketdiff.cli", "study", "run", str(path), "--storage",
                        f"sqlite:///{tmp_path}/s.db", "--no-progress"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "every trial of this run failed (2)" in r.stderr and "Traceback" not in r.stderr


# --- property tests: whatever the input, exit 0 or a clean exit 2 ------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 600) | st.floats(-10, 10, allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)
TINY = PRESETS["tiny-debug"].to_dict()
PATHS = sorted({f"stages.{i}.{k}" for i, s in enumerate(TINY["stages"]) for k in s} | {k for k in TINY if k != "stages"})


def _clean(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:  # our one line, or argparse's usage and its one error line
        assert err.strip().splitlines()[-1].startswith("pocketdiff") and "error:" in err, err


@st.composite
def mutated_spec(draw):
    d = copy.deepcopy(TINY)
    path = draw(st.sampled_from(PATHS + ["kind", "stages", "schema", "nonsense"]))
    node, keys = d, path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    node[keys[-1]] = draw(JSON)
    return d if draw(st.booleans()) else draw(JSON)  # mostly a mutated spec, sometimes any JSON at all


FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])


@FAST
@given(spec=mutated_spec())
def test_any_spec_json_gives_exit_0_or_a_clean_exit_2(tmp_path, spec):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    _clean(*_cli(["describe", str(path), "--no-memory", "--latent", "16"]))


@FAST
@given(key=st.sampled_from(PATHS) | st.text(max_size=12), value=st.text(max_size=10)
       | st.integers(-3, 600).map(str) | JSON.map(json.dumps))
def test_any_set_override_gives_exit_0_or_a_clean_exit_2(key, value):
    _clean(*_cli(["describe", "tiny-debug", f"--set={key}={value}", "--no-memory", "--latent", "16"]))


STUDY_KEYS = ["study.name", "study.sampler", "study.seed", "study.n_trials", "study.timeout", "study.storage",
              "study.max_retry", "target.latent", "target.device", "space.ffn_ratio", "space.attention",
              "quality.budget", "quality.data", "quality.n_samples", "quality.seeds", "quality.proxy",
              "quality.early_stop", "quality.rungs", "quality.evaluator", "objectives.val_loss",
              "constraints.max_latency_ms", "enqueue.presets"]
RANGE = st.fixed_dictionaries({}, optional={"low": JSON, "high": JSON, "step": JSON, "log": JSON,
                                            "choices": JSON, "when": JSON})


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(STUDY_KEYS), value=JSON | RANGE)
def test_any_study_file_value_gives_exit_0_or_a_clean_exit_2(tmp_path, key, value):
    """Through the CLI's load path: `study status FILE` loads the file, then finds no storage (exit 2)."""
    path = tmp_path / "s.toml"
    studyfiles.write(path, _study(**{key: value}))
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default storage runs/NAME/study.db is looked for (never created) here
    try:
        _clean(*_cli(["study", "status", str(path)]))
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "runs").exists()




# --- numbers and sizes: finite, within the stated ranges, checked at load (search_space/limits.py) ------------

@pytest.mark.parametrize("setting, says", [
    ("ffn_ratio=Infinity", "ffn_ratio=inf must be a finite number from 1 to 64"),
    ("ffn_ratio=NaN", "ffn_ratio=nan must be a finite number"),
    ("ffn_ratio=1e400", "ffn_ratio=inf must be a finite number"),
    ("ffn_ratio=" + "9" * 400, "--set ffn_ratio: the value holds an integer longer than 100 digits"),
    ("stages.0.channels=" + "1" + "0" * 30, "stages[0].channels=10000000...(31 digits) must be a whole number from 1 to 16384"),
    ("stages.0.down_transformer_depth=100000", "stages[0].down_transformer_depth=100000 must be a whole number from 0 to 64"),
    ("text_dim=1000000", "text_dim=1000000 must be a whole number from 1 to 16384"),
    ("stages.0=" + "[" * 5000 + "]" * 5000, "--set stages.0: the value nests lists or tables deeper than 64 levels"),
])
def test_spec_numbers_are_finite_and_within_their_stated_ranges(setting, says):
    code, err = _cli(["describe", "tiny-debug", "--set", setting, "--no-memory"])
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text, says", [
    ("[" * 100_000 + "]" * 100_000, "nests lists or tables deeper than 64 levels"),
    ('{"ffn_ratio": ' + "9" * 5000 + "}", "holds an integer longer than 100 digits"),
    ('{"ffn_ratio": ' + "9" * 200 + "}", "holds an integer longer than 100 digits"),
    ('{"spec": ' + json.dumps({**TINY, "ffn_ratio": "NaN"}).replace('"NaN"', "NaN") + "}",
     "ffn_ratio=nan must be a finite number"),
    ("\udcff".encode("utf-8", "surrogateescape").decode("latin-1"), "is malformed JSON"),
])
def test_a_spec_file_is_read_by_the_one_reader(tmp_path, text, says):
    path = tmp_path / "spec.json"
    path.write_text(text)
    code, err = _cli(["describe", str(path), "--no-memory"])
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert str(path) in err or "ffn_ratio" in err


@pytest.mark.parametrize("text, says", [
    ("a = " + "[" * 50_000 + "]" * 50_000 + "\n", "nests lists or tables deeper than 64 levels"),
    ("a = " + "9" * 5000 + "\n", "holds an integer longer than 100 digits"),
    ("a = " + "[" * 70 + "]" * 70 + "\n", "nests lists or tables deeper than 64 levels"),
])
def test_a_study_file_is_read_by_the_one_reader(tmp_path, text, says):
    path = tmp_path / "deep.toml"
    path.write_text(text)
    code, err = _cli(["study", "run", str(path), "--no-progress"])
    assert code == 2 and f"study file {path} {says}" in err and len(err.strip().splitlines()) == 1, err


def test_the_reader_refuses_deep_checkpoint_and_manifest_metadata(tmp_path):
    from training.checkpoint import CheckpointError, read_checkpoint
    from training.data import DataError, LatentShards

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match=r"checkpoint metadata .*checkpoint.json nests lists"):
        read_checkpoint(tmp_path / "ck")
    (tmp_path / "lat").mkdir()
    (tmp_path / "lat" / "manifest.json").write_text('{"count": ' + "9" * 5000 + "}")
    with pytest.raises(DataError, match=r"latent manifest .*manifest.json holds an integer longer"):
        LatentShards(tmp_path / "lat")


@pytest.mark.parametrize("change, says", [
    ({"quality.sample_steps": 0}, "[quality] sample_steps = 0 must be a whole number from 1 to 10000"),
    ({"quality.sample_steps": -4}, "[quality] sample_steps = -4 must be a whole number from 1"),
    ({"quality.guidance": float("nan")}, "[quality] guidance = nan must be a finite number from 0 to 100"),
    ({"quality.guidance": float("inf")}, "[quality] guidance = inf must be a finite number"),
    ({"quality.n_samples": 10 ** 9}, "[quality] n_samples = 1000000000 must be a whole number from 0 to 100000"),
    ({"quality.seeds": 10 ** 6}, "[quality] seeds = 1000000 must be a whole number from 1 to 64"),
    ({"target.latent": 100_000}, "[target] latent = 100000 must be a whole number from 1 to 1024"),
    ({"constraints.max_latency_ms": float("nan")}, "[constraints] max_latency_ms = nan must be a positive number (a finite number > 0"),
    ({"constraints.max_latency_ms": float("inf")}, "[constraints] max_latency_ms = inf must be a positive number (a finite number > 0"),
    ({"study.timeout": float("nan")}, "[study] timeout = nan must be a number of seconds > 0"),
    ({"study.heartbeat_interval": 10 ** 30}, "[study] heartbeat_interval = 10000000...(31 digits) must be at most"),
    ({"space.ffn_ratio": {"low": 1.0, "high": float("inf")}}, "[space] ffn_ratio=inf must be a finite number"),
    ({"space.ffn_ratio": {"choices": [2.0, float("nan")]}}, "[space] ffn_ratio=nan must be a finite number"),
    ({"space.stages.0.channels": {"choices": [32, 10 ** 30]}}, "[space] stages.0.channels=10000000...(31 digits)"),
])
def test_every_study_value_that_would_fail_a_trial_is_refused_at_load(tmp_path, change, says):
    """Through the file (TOML's nan / inf literals included) and the CLI: one line, exit 2, nothing stored."""
    path = studyfiles.write(tmp_path / "s.toml", _study(**{"study.storage": f"sqlite:///{tmp_path}/s.db", **change}))
    code, err = _cli(["study", "run", str(path), "--no-progress"])
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("argv, says", [
    (["describe", "tiny-debug", "--latent", "100000"], "--latent 100000 must be a whole number from 1 to 1024"),
    (["export", "coreml", "tiny-debug", "--latent", "100000"], "--latent 100000 must be a whole number from 1 to 1024"),
    (["export", "coreml", "tiny-debug", "--batch", str(10 ** 9)], "--batch 1000000000 must be a whole number"),
    (["latency", "plan", "--device", "a17pro", "--latent", "0"], "--latent 0 must be a whole number from 1"),
    (["eval", "quality", "tiny-debug", "--cfg-scale", "nan"], "--cfg-scale nan must be a finite number from 0 to 100"),
    (["eval", "quality", "tiny-debug", "--sample-steps", str(10 ** 6)], "--sample-steps 1000000 must be a whole"),
    (["eval", "quality", "tiny-debug", "--seeds", "1000"], "--seeds 1000 must be a whole number from 1 to 64"),
    (["data", "encode", "folder:{tmp}", "--vae", "{tmp}", "--out", "{tmp}/enc", "--resolution", "1000000"],
     "--resolution 1000000 must be a whole number from 1 to 8192"),
])
def test_size_flags_are_within_their_stated_ranges(tmp_path, argv, says):
    code, err = _cli([a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "enc").exists()


# --- memory: work that cannot fit is refused before anything is allocated (search_space/memory.py) -----------

def test_require_memory_states_the_estimate_the_free_memory_and_the_flag(monkeypatch):
    from search_space import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2 ** 30)
    memory.require_memory(2 ** 29, "a thing", "--size")  # fits: nothing happens
    with pytest.raises(memory.UserError, match=r"a thing needs at least 2.0 GiB .* but cpu has 1.0 GiB free; "
                                               r"lower --size"):
        memory.require_memory(2 ** 31, "a thing", "--size")
    monkeypatch.undo()  # the real one reads /proc/meminfo (sysconf elsewhere)
    assert memory.available_bytes("cpu") is None or memory.available_bytes("cpu") > 0


def test_the_training_estimate_grows_with_the_batch_and_counts_optimizer_state():
    from search_space import build_model, example_inputs
    from search_space.memory import TRAINING_WEIGHT_COPIES, inference_bytes, training_bytes, weight_bytes

    spec = PRESETS["tiny-debug"]
    model, inputs = build_model(spec, "meta"), example_inputs(spec, 16, device="meta")
    one, eight = training_bytes(model, inputs, 1), training_bytes(model, inputs, 8)
    weights = TRAINING_WEIGHT_COPIES * weight_bytes(model)
    assert eight - weights == pytest.approx(8 * (one - weights))
    assert one - weights > inference_bytes(model, inputs) - weight_bytes(model) > 0  # backward keeps more alive


@pytest.mark.parametrize("argv, says", [
    (["train", "unet", "tiny-debug", "--batch-size", "65536", "--steps", "2", "--out", "{tmp}/r"],
     "at batch size 65536 needs at least"),
    (["export", "coreml", "tiny-debug", "--latent", "1024", "--batch", "64"],
     "spec 6c51f27c2cf2 at a 1024x1024 latent, batch 64 needs at least"),
])
def test_work_that_cannot_fit_in_memory_is_refused_before_allocating(tmp_path, argv, says):
    code, err = _cli([a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and says in err and "free; lower --" in err, err
    assert len(err.strip().splitlines()) == 1 or "global batch" in err
    assert not (tmp_path / "r").exists()


def test_an_encode_that_cannot_fit_is_refused_before_the_vae_loads(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a" / "x.png")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")  # empty: it is never loaded
    code, err = _cli(["data", "encode", f"folder:{tmp_path / 'imgs'}", "--vae", str(tmp_path / "vae"), "--out",
                      str(tmp_path / "enc"), "--resolution", "8192"])
    assert code == 2 and "encoding 8192x8192 images in batches of 32 needs at least" in err, err
    assert "lower --resolution or --batch-size" in err and len(err.strip().splitlines()) == 1
