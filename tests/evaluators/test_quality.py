"""Quality evaluator and its CLI: tiny budgets on MNIST-5k and on latents encoded by a tiny random VAE."""
import json
import math

import pytest
import torch

import pocketdiff.cli as cli
from evaluators.quality import evaluate_quality
from training.fidelity import INCEPTION_FILE
from training.config import LoopConfig

# 150 samples: more than the domain features' 128 dimensions, below which FD is withheld as meaningless.
# Warm-up 1 step so tiny step budgets are valid (the default 10-step warm-up needs at least 11 steps).
FAST = dict(num_samples=150, sample_steps=2)
TINY = LoopConfig.quality_preset(warmup_steps=1)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("quality-cache")


@pytest.fixture(autouse=True)
def _module_cache(shared_cache, monkeypatch):
    """One cache for the module: the MNIST domain classifier and prompt embeddings are built once."""
    monkeypatch.setenv("POCKETDIFF_CACHE", str(shared_cache))


@pytest.fixture
def run_cli(monkeypatch, capsys):
    # Only the data and eval command groups: the test does not depend on other groups importing cleanly.
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("pocketdiff.cmd_data", "pocketdiff.cmd_eval"))

    def run(*argv):
        rc = cli.main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err
    return run


def test_evaluate_quality_record_and_outputs(tmp_path):
    record = evaluate_quality("tiny-debug", "mnist5k", "3steps", seed=0, out_dir=tmp_path, progress=False,
                              train_config=TINY, **FAST)
    assert record["status"] == "ok" and record["steps"] == 3 and record["train_images"] == 3 * TINY.batch_size
    for key in ("fd_domain", "kid_domain", "precision_domain", "recall_domain", "val_loss", "train_images_per_s"):
        assert math.isfinite(record[key]), key
    assert 0 < record["roofline_ratio"] == record["train_flops_per_s"] / record["matmul_peak_flops_per_s"]
    assert record["train_flops_per_s"] * record["train_step_seconds"] == pytest.approx(record["train_flops_per_step"])
    assert "fid" not in record  # no Inception weights offline: never a domain number under the FID name
    assert "fid_note" in record
    assert record["proxy"]["source_spec_id"] == record["spec_id"]
    assert record["domain_classifier_val_accuracy"] > 0.8
    assert 0 < record["train_share"] < 1
    assert 0 < record["fd_domain_floor"] < record["fd_domain"]  # 3 steps are far from real digits
    assert record["budget_steps"] == 3 and len(record["stream_digest"]) == 16
    # the regime's baselines (mnist5k, 16x16x4) and the share of the learnable loss this run learned
    assert (record["val_loss_constant"], record["val_loss_class_mean"], record["val_loss_linear"]) == \
        pytest.approx((1.2038, 1.1620, 0.2692), abs=5e-4)
    assert record["learned_fraction"] == pytest.approx(
        (record["val_loss_constant"] - record["val_loss"]) / (record["val_loss_constant"] - record["val_loss_linear"]))
    assert record["learned_fraction"] < 0.5  # 3 steps learn little
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "checkpoints" / "latest").is_file()
    assert json.loads((tmp_path / "record.json").read_text())["fd_domain"] == record["fd_domain"]


def test_training_improves_fd_over_untrained():
    config = LoopConfig.quality_preset(batch_size=16, lr=3e-3, warmup_steps=5)
    untrained = evaluate_quality("tiny-debug", "mnist5k", "0steps", seed=0, progress=False, **FAST)
    trained = evaluate_quality("tiny-debug", "mnist5k", "25steps", seed=0, train_config=config, progress=False,
                               **FAST)
    assert trained["val_loss"] < untrained["val_loss"]
    assert trained["fd_domain"] < untrained["fd_domain"]


def test_same_seed_same_record():
    a = evaluate_quality("tiny-debug", "mnist5k", "2steps", seed=5, progress=False, train_config=TINY, **FAST)
    b = evaluate_quality("tiny-debug", "mnist5k", "2steps", seed=5, progress=False, train_config=TINY, **FAST)
    assert (a["val_loss"], a["fd_domain"]) == (b["val_loss"], b["fd_domain"])


def test_zero_samples_scores_the_validation_loss_only(tmp_path):
    """--samples 0: no sampling and no sample metrics (the study default's setting); a negative count is refused."""
    from training.fidelity import MetricError

    record = evaluate_quality("tiny-debug", "mnist5k", "2steps", seed=1, num_samples=0, out_dir=tmp_path,
                              progress=False, train_config=TINY)
    assert record["status"] == "ok" and math.isfinite(record["val_loss"]) and "fd_domain" not in record
    assert record["seconds_sample"] == 0 and "0 samples" in record["metrics_note"]
    assert not (tmp_path / "samples.png").exists() and (tmp_path / "record.json").exists()
    with pytest.raises(MetricError, match="-1 samples"):
        evaluate_quality("tiny-debug", "mnist5k", "2steps", num_samples=-1, progress=False, train_config=TINY)


def test_cli_quality_json(run_cli):
    rc, out, err = run_cli("-q", "eval", "quality", "tiny-debug", "--budget", "11steps", "--samples", "150",
                           "--sample-steps", "2", "--batch-size", "8", "--json")
    assert rc == 0, err
    record = json.loads(out)
    assert record["status"] == "ok" and math.isfinite(record["fd_domain"])
    for key in ("val_loss", "learned_fraction", "val_loss_constant", "val_loss_class_mean", "val_loss_linear"):
        assert math.isfinite(record[key]), key


def test_cli_quality_text_shows_the_baselines(run_cli, monkeypatch):
    from evaluators import quality

    record = {"spec_id": "s", "proxy_spec_id": "p", "proxy": {"channels": [[8], [8, 16]]}, "params_proxy": 1e5,
              "data": "mnist5k-r32", "seeds": 3, "status": "ok", "val_loss": 0.9, "val_loss_ci_low": 0.8,
              "val_loss_ci_high": 1.0, "learned_fraction": 0.33, "learned_fraction_ci_low": 0.22,
              "learned_fraction_ci_high": 0.44, "val_loss_constant": 1.2, "val_loss_class_mean": 1.16,
              "val_loss_linear": 0.27}
    monkeypatch.setattr(quality, "evaluate_quality_seeds", lambda *a, **k: record)
    rc, out, err = run_cli("-q", "eval", "quality", "tiny-debug", "--budget", "11steps")
    assert rc == 0, err
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert lines["learned_fraction"] == ["0.33", "[0.22,", "0.44]", "95%"]
    assert lines["val_loss_constant"] == ["1.2"] and lines["val_loss_linear"] == ["0.27"]


@pytest.mark.parametrize("argv,message", [
    (["--budget", "soon"], "not understood"),
    (["--budget=-5steps"], "negative"),
    (["--budget", "3steps"], "not longer than the 10-step warm-up"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--width-mult", "2"], "width_mult"),
    (["--data", "folder:/nonexistent/images"], "does not exist"),
    (["--data", "latents:/nonexistent"], "no manifest.json"),
    (["--samples", "0"], "--samples must be >= 1"),
])
def test_cli_bad_input_is_one_line_exit_2(run_cli, argv, message):
    rc, out, err = run_cli("-q", "eval", "quality", "tiny-debug", *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_decoder_spec_is_refused(run_cli):
    rc, _, err = run_cli("-q", "eval", "quality", "tiny-debug-decoder", "--budget", "20steps")
    assert rc == 2 and "trains UNet specs" in err


def test_inception_unavailable_names_file_and_flag(run_cli, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    rc, _, err = run_cli("-q", "eval", "quality", "tiny-debug", "--budget", "20steps", "--fid", "on")
    assert rc == 2 and INCEPTION_FILE in err and "--fid-weights" in err
    rc, _, err = run_cli("-q", "eval", "quality", "tiny-debug", "--fid-weights", str(tmp_path / "missing.pth"))
    assert rc == 2 and INCEPTION_FILE in err


def test_encode_then_evaluate_on_latents(run_cli, tmp_path):
    """16 images: the run works end to end, and the domain FD is withheld, with the reason, instead of a number
    that looks meaningful (a 2-image held-out check cannot show the classifier beats chance)."""
    from diffusers import AutoencoderKL
    from PIL import Image

    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for c in ("red", "blue"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            base = torch.tensor([200, 30, 30] if c == "red" else [30, 30, 200], dtype=torch.uint8)
            noise = torch.randint(0, 40, (16, 16, 3), generator=g, dtype=torch.uint8)
            Image.fromarray((base + noise).numpy()).save(root / c / f"{i}.png")
    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                  sample_size=16).save_pretrained(tmp_path / "vae")
    rc, out, err = run_cli("-q", "data", "encode", f"folder:{root}", "--vae", str(tmp_path / "vae"), "--out",
                           str(tmp_path / "latents"), "--resolution", "16", "--shard-size", "6", "--json")
    assert rc == 0, err
    assert json.loads(out)["count"] == 16
    rc, out, err = run_cli("-q", "eval", "quality", "tiny-debug", "--data", f"latents:{tmp_path / 'latents'}",
                           "--budget", "11steps", "--samples", "10", "--sample-steps", "2", "--batch-size", "4",
                           "--out", str(tmp_path / "run"), "--json")
    assert rc == 0, err
    record = json.loads(out)
    assert record["status"] == "ok" and math.isfinite(record["val_loss"])
    assert "fd_domain" not in record and "kid_domain" not in record
    assert "not clearly above chance" in record["metrics_invalid"]
    assert record["data_info"]["vae"].startswith("vae@")
    assert (tmp_path / "run" / "samples.png").is_file()  # decoded through the manifest's VAE


def test_inception_fid_with_local_weights_file(tmp_path, monkeypatch):
    """The Inception path end to end on a tiny ImageFolder, with randomly initialised weights saved as the file
    `--fid-weights` expects (the real file needs a download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception
    from PIL import Image

    with monkeypatch.context() as m:
        m.setattr(inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        weights = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(weights, tmp_path / INCEPTION_FILE)
    root = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()).save(
                root / c / f"{i}.png")
    record = evaluate_quality("tiny-debug", f"folder:{root}", "1steps", seed=0, num_samples=6, sample_steps=1,
                              fid_weights=str(tmp_path / INCEPTION_FILE),
                              train_config=LoopConfig.quality_preset(batch_size=4, warmup_steps=0), progress=False)
    assert math.isfinite(record["fid"]) and "fid_note" not in record
    assert "metrics_invalid" in record and "fd_domain" not in record  # 12 images: no domain score
    assert {"kid", "precision", "recall"} <= set(record)


def test_cli_data_info(run_cli):
    rc, out, err = run_cli("data", "info", "mnist5k", "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert (info["classes"], info["train"], info["held_out"], info["model_space"]) == (10, 4500, 500, [4, 16, 16])


def test_nan_loss_is_a_result_not_a_traceback(monkeypatch):
    import dataclasses

    import evaluators.quality as quality
    from training.data import load_mnist5k

    # Metrics are never reached; skip training a domain classifier for this one-off dataset name.
    monkeypatch.setattr(quality, "register_domain_extractor", lambda data: ("none", {"val_accuracy": 1.0}))
    data = load_mnist5k()
    data = dataclasses.replace(data, name="mnist5k-nan", train_x=torch.full_like(data.train_x, float("nan")))
    record = evaluate_quality("tiny-debug", data, "5steps", seed=0, progress=False, train_config=TINY, **FAST)
    assert record["status"] == "diverged at step 0" and record["steps"] == 0
    assert "fd_domain" not in record
