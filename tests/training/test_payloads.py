"""No code from a weights file (training/weights.py, training/checkpoint.py): a pickle payload planted in a
teacher folder (a bare diffusers model, an SD3 pipeline's transformer or text encoder), a VAE folder (`--vae`,
`data encode`, the decoder's `vae:PATH` encoder), a text-encoder folder (`--encoder`) or one of our checkpoints
(`--init`, `--teacher`, `--resume`) never runs: the real load path refuses it with one line naming the file."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from pocketdiff.cli import main
from training.checkpoint import CheckpointError, load_trained, read_state
from training.data import DataError, decoding_vae, load_vae, vae_identity
from training.decoder import DecoderDataError, load_encoder
from training.teachers import TeacherError, load_teacher
from training.text import encode_prompts
from training.weights import ModelFolderError
from tests.payloads import plant

FORMATS = ("torch", "legacy", "pickle")


def _folder(path: Path, config: dict, weights: str, marker: Path, fmt: str = "torch") -> Path:
    """A model folder as save_pretrained writes it, with the payload as its weights file."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    plant(path / weights, marker, fmt)
    return path


def test_the_payload_is_live_when_unpickled_unchecked(tmp_path):
    """The control: each planted format does run code when loaded with a full unpickler."""
    for fmt in FORMATS:
        marker = tmp_path / f"ran-{fmt}"
        try:
            torch.load(plant(tmp_path / f"p-{fmt}.bin", marker, fmt), weights_only=False)
        except RuntimeError:  # a bare pickle is no torch file, but the unpickler ran it while looking
            assert fmt == "pickle"
        assert marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_payload_in_a_diffusers_teacher_folder_does_not_run(tmp_path, fmt):
    marker = tmp_path / "ran"
    folder = _folder(tmp_path / "unet", {"_class_name": "UNet2DConditionModel"}, "diffusion_pytorch_model.bin",
                     marker, fmt)
    with pytest.raises(TeacherError, match=r"teacher model folder weights file .*unet/diffusion_pytorch_model\.bin "
                                           r"is not a plain tensor file.*refused"):
        load_teacher(folder)
    assert not marker.exists()


def test_a_payload_in_an_sd3_pipeline_does_not_run(tmp_path):
    """In the transformer (given as the folder or as sd3:FOLDER), and in a text encoder checked before any load."""
    marker = tmp_path / "ran"
    root = tmp_path / "sd3"
    index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
             "text_encoder_3": [None, None]}
    _folder(root / "transformer", {"_class_name": "SD3Transformer2DModel"}, "diffusion_pytorch_model.bin", marker)
    (root / "model_index.json").write_text(json.dumps(index))
    for source in (root, f"sd3:{root}"):
        with pytest.raises(TeacherError, match=r"transformer/diffusion_pytorch_model\.bin is not a plain tensor"):
            load_teacher(source)
    (root / "transformer" / "diffusion_pytorch_model.bin").unlink()
    (root / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")  # never read before the check
    _folder(root / "text_encoder", {"model_type": "clip_text_model"}, "pytorch_model.bin", marker)
    with pytest.raises(TeacherError, match=r"text_encoder/pytorch_model\.bin is not a plain tensor"):
        load_teacher(root)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_payload_in_a_vae_folder_does_not_run(tmp_path, fmt):
    """--vae for eval quality / sample (decoding_vae, load_vae) and data encode (vae_identity)."""
    marker = tmp_path / "ran"
    folder = _folder(tmp_path / "vae", {"_class_name": "AutoencoderKL"}, "diffusion_pytorch_model.bin", marker, fmt)
    for load in (load_vae, vae_identity, lambda p: decoding_vae(str(p), "latent")):
        with pytest.raises(DataError, match=r"VAE folder weights file .*vae/diffusion_pytorch_model\.bin is not"):
            load(folder)
    assert not marker.exists()


def test_a_payload_as_the_decoders_vae_encoder_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    folder = _folder(tmp_path / "vae", {"_class_name": "AutoencoderKL"}, "diffusion_pytorch_model.bin", marker)
    with pytest.raises(DecoderDataError, match=r"encoder VAE folder weights file .*model\.bin is not a plain"):
        load_encoder(f"vae:{folder}", data=None, latent_channels=4)
    assert not marker.exists()


def test_a_payload_in_a_text_encoder_folder_does_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = _folder(tmp_path / "clip", {"model_type": "clip_text_model"}, "pytorch_model.bin", marker)
    with pytest.raises(ModelFolderError, match=r"text encoder folder weights file .*clip/pytorch_model\.bin"):
        encode_prompts(["a photo of a cat"], str(folder))
    # the same through the CLI: one line, exit 2, before any training
    assert main(["train", "unet", "tiny-debug", "--encoder", str(folder), "--out", str(tmp_path / "r"),
                 "--steps", "2", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "clip/pytorch_model.bin is not a plain tensor file" in err
    assert not marker.exists() and not (tmp_path / "r" / "checkpoints").exists()


# --- our checkpoints ----------------------------------------------------------------------------------------

def _reseal(ckpt: Path, name: str) -> None:
    """Update checkpoint.json's sha256 of `name`, so that only the loader stands between the file and its code."""
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    manifest["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "checkpoint.json").write_text(json.dumps(manifest))


def test_a_payload_state_file_is_never_read_by_init_or_teacher_and_refused_by_resume(tmp_path, checkpoint):
    run, ckpt = checkpoint
    marker = tmp_path / "ran"
    plant(ckpt / "state.pt", marker)
    _reseal(ckpt, "state.pt")
    load_trained(run)  # --init reads the weights only
    assert load_teacher(run).description.startswith("checkpoint:")  # --teacher with our checkpoint
    with pytest.raises(CheckpointError, match=r"checkpoint file .*step_0000002/state\.pt is not a plain tensor file"):
        read_state(ckpt)  # --resume
    assert not marker.exists()


def test_a_payload_as_our_weights_file_is_refused_by_init_teacher_and_the_cli(tmp_path, checkpoint, capsys):
    run, ckpt = checkpoint
    marker = tmp_path / "ran"
    plant(ckpt / "model.safetensors", marker)
    _reseal(ckpt, "model.safetensors")
    says = r"checkpoint file .*step_0000002/model\.safetensors is corrupt"
    with pytest.raises(CheckpointError, match=says):
        load_trained(run)
    with pytest.raises(CheckpointError, match=says):
        load_teacher(run)
    for flag in ("--init", "--teacher"):
        assert main(["train", "unet", "tiny-debug", flag, str(run), "--out", str(tmp_path / "r"), "--steps", "2",
                     "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "model.safetensors is corrupt" in err, err
    assert not marker.exists()
