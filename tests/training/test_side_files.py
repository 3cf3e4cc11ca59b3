"""Side files refused at load with one line naming the file (search_space/limits.py, training/weights.py):
an SD3 pipeline's model_index.json that is malformed or a list, a model folder without weights, a folder with
only a config.json given as a VAE, and our checkpoints' checkpoint.json (malformed, a list, missing fields) and
`latest` pointer."""
import json

import pytest

from pocketdiff.cli import main
from search_space.errors import UserError
from search_space.limits import read_json
from training.checkpoint import CheckpointError, load_trained
from training.data import DataError, decoding_vae, load_vae
from training.teachers import TeacherError, load_teacher


@pytest.mark.parametrize("text, says", [
    ("{bad", r"is malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2"),
    ('{"a": 1,\n "b": }', r"is malformed JSON: Expecting value: line 2 column 7"),
    ("[1, 2]", r"holds a list \[...\] at the top level, expected an object"),
    ('"text"', r"holds a string at the top level"),
    ("[" * 100_000 + "]" * 100_000, r"nests lists or tables deeper than 64 levels"),
    ('{"n": ' + "9" * 5000 + "}", r"holds an integer longer than 100 digits"),
    (b"\xff\xfe{}", r"is not UTF-8 text \(byte 0\)"),
])
def test_every_bad_json_side_file_is_one_line_naming_it(tmp_path, text, says):
    path = tmp_path / "side.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TeacherError, match=rf"^index {path} {says}") as e:
        read_json(path, "index", TeacherError, expect=dict)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=rf"^index {tmp_path / 'none.json'} does not exist$"):
        read_json(tmp_path / "none.json", "index")


def _one_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("index, says", [
    ("{bad", "model_index.json is malformed JSON: Expecting property name enclosed in double quotes: line 1 "
             "column 2"),
    ("[1, 2]", "model_index.json holds a list [...] at the top level, expected an object {...}"),
    ('{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}',
     "has no SD3Transformer2DModel"),
])
def test_a_bad_sd3_pipeline_index_is_one_line(tmp_path, capsys, index, says):
    root = tmp_path / "sd3"
    root.mkdir()
    (root / "model_index.json").write_text(index)
    for teacher in (f"sd3:{root}", str(root)):
        err = _one_line(capsys, ["train", "unet", "tiny-debug", "--out", str(tmp_path / "r"), "--steps", "2",
                                 "--teacher", teacher])
        assert err.startswith("pocketdiff: error: teacher ") and says in err, err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_sd3_prefix_needs_a_pipeline_folder(tmp_path):
    with pytest.raises(TeacherError, match=r"model_index\.json not found; sd3:PATH names an SD3 pipeline"):
        load_teacher(f"sd3:{tmp_path}")


def test_a_model_folder_without_weights_is_refused_naming_it(tmp_path):
    """A transformer folder (bare, or inside a pipeline) and a VAE folder with a config.json and no weights."""
    transformer = tmp_path / "sd3" / "transformer"
    transformer.mkdir(parents=True)
    (transformer / "config.json").write_text('{"_class_name": "SD3Transformer2DModel"}')
    says = r"{} has a config.json but no weights file \(\*\.safetensors or \*\.bin\)"
    with pytest.raises(TeacherError, match=says.format(transformer)):
        load_teacher(transformer)
    (tmp_path / "sd3" / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    with pytest.raises(TeacherError, match=says.format(transformer)):
        load_teacher(tmp_path / "sd3")
    (transformer / "config.json").write_text("[]")
    with pytest.raises(TeacherError, match=r"transformer/config\.json holds a list"):
        load_teacher(transformer)
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    for load in (load_vae, lambda p: decoding_vae(str(p), "latent")):
        with pytest.raises(DataError, match=says.format(vae)):
            load(vae)
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (vae / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(DataError, match="holds a 'UNet2DConditionModel', not an AutoencoderKL"):
        load_vae(vae)


def test_a_vae_for_pixel_data_is_refused_before_any_work(tmp_path, capsys):
    """tiny-debug trains on MNIST pixels: no VAE decodes them, so --vae would be silently unused."""
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    err = _one_line(capsys, ["-q", "eval", "quality", "tiny-debug", "--vae", str(vae), "--budget", "12steps",
                             "--out", str(tmp_path / "q")])
    assert f"--vae {vae}: this is pixel data, which no VAE decodes" in err and "drop --vae" in err
    assert not (tmp_path / "q").exists()


# --- our checkpoints ----------------------------------------------------------------------------------------

def _edit(change):
    """checkpoint.json rewritten: `change(manifest)` edits the parsed manifest in place."""
    def rewrite(text: str) -> str:
        manifest = json.loads(text)
        change(manifest)
        return json.dumps(manifest)
    return rewrite


@pytest.mark.parametrize("rewrite, says", [
    (lambda text: "[1, 2]", "holds a list [...] at the top level, expected an object {...}"),
    (lambda text: text[:40], "is malformed JSON: "),
    (_edit(lambda m: m.pop("step")), "lacks or mistypes step (int)"),
    (_edit(lambda m: m.update(step=True)), "lacks or mistypes step (int)"),
    (_edit(lambda m: m.update(spec=[1])), "lacks or mistypes spec (dict)"),
    (_edit(lambda m: m["meta"].pop("data_kind")), "lacks or mistypes meta.data_kind"),
    (_edit(lambda m: m["files"].pop("model.safetensors")), "'files' table must list model.safetensors"),
    (_edit(lambda m: m["spec"].update(stages=3)), "holds an invalid spec: "),
])
def test_bad_checkpoint_metadata_is_one_line_naming_the_file(tmp_path, checkpoint, capsys, rewrite, says):
    run, ckpt = checkpoint
    path = ckpt / "checkpoint.json"
    path.write_text(rewrite(path.read_text()))
    with pytest.raises(CheckpointError) as e:
        load_trained(run)
    assert str(ckpt) in str(e.value) and says in str(e.value) and "\n" not in str(e.value), str(e.value)
    for flag in ("--init", "--teacher"):
        err = _one_line(capsys, ["train", "unet", "tiny-debug", flag, str(run), "--out", str(tmp_path / "r"),
                                 "--steps", "2"])
        assert says in err and str(ckpt) in err, err


def test_a_latest_pointer_outside_the_checkpoints_is_refused(checkpoint):
    run, _ = checkpoint
    (run / "checkpoints" / "latest").write_text("../../../etc")
    for load in (load_trained, load_teacher):  # --init, --teacher: the damage is named, not "no checkpoint"
        with pytest.raises(CheckpointError, match=r"checkpoints/latest names '\.\./\.\./\.\./etc', not a checkpoint"):
            load(run)
