"""`pocketdiff export coreml` and `pocketdiff latency ...` as a user runs them."""
from __future__ import annotations

import csv
import json
import os
import platform

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models import export  # noqa: E402
from latency_models.measurements import MEASUREMENT_COLUMNS  # noqa: E402
from pocketdiff.cli import main  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))


def test_predict_timm_model_prints_latency_band_and_feature_source(capsys):
    assert main(["latency", "predict", "--timm", "fastvit_t8", "--input", "1x3x256x256", "--device", "a14"]) == 0
    out = capsys.readouterr().out
    assert "on a14:" in out and " ms [" in out and "band:" in out and "features: torch-meta" in out


def test_predict_json_spec(capsys):
    assert main(["latency", "predict", "tiny-debug", "--latent", "16", "--device", "iphone15pro", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["chip"] == "a17pro" and d["low_ms"] <= d["ms"] <= d["high_ms"] and d["input_shape"] == "1x4x16x16"


def test_unknown_device_lists_known_devices(capsys):
    assert main(["latency", "predict", "tiny-debug", "--device", "pixel9"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'pixel9'" in err and "a17pro" in err and "iphone15pro" in err


def test_model_flags_are_checked(capsys):
    assert main(["latency", "predict", "--timm", "fastvit_t8", "--device", "a14"]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["latency", "predict", "tiny-debug", "--timm", "fastvit_t8", "--device", "a14"]) == 2


@pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS measure really measures")
def test_measure_says_it_needs_macos(tmp_path, capsys):
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    assert main(["latency", "measure", str(pkg), "--runs", "5", "--out", str(tmp_path / "m.csv")]) == 1
    assert "needs macOS" in capsys.readouterr().out
    assert not (tmp_path / "m.csv").exists()


def test_import_reports_bad_rows_and_accepts_good_ones(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(MEASUREMENT_COLUMNS)
        w.writerow(["r18", "torchvision:resnet18", "1x3x224x224", "Mac", "M2", "15", "all", "fp16", "-1", "x"])
    assert main(["latency", "import", str(bad), "--into", str(tmp_path / "s.csv")]) == 2
    assert "line 2" in capsys.readouterr().err
    bad.write_text(bad.read_text().replace(",-1,", ",1.25,"))
    assert main(["latency", "import", str(bad), "--into", str(tmp_path / "s.csv")]) == 0
    assert "1 rows valid" in capsys.readouterr().out


def test_report_shows_both_schemes_and_baselines(capsys):
    assert main(["latency", "report", "--device", "a13"]) == 0
    out = capsys.readouterr().out
    for word in ("leave-one-model-out", "leave-one-family-out", "roofline", "today (linear)", "FLOPs linear",
                 "params linear", "verdict:", "small models: predicts with", "GMACs: predicts with"):
        assert word in out


def test_devices_lists_chips_with_and_without_profiles(capsys):
    assert main(["latency", "devices"]) == 0
    out = capsys.readouterr().out
    assert "a18pro" in out and "no profile" in out and "iphone15pro" in out


def test_export_coreml_tiny_decoder(tmp_path, capsys):
    out = tmp_path / "out" / "d.mlpackage"
    assert main(["export", "coreml", "tiny-debug-decoder", "--latent", "8", "-o", str(out)]) == 0
    assert (out / "Manifest.json").exists() and "converted" in capsys.readouterr().out
    assert main(["export", "coreml", "tiny-debug-decoder", "--latent", "8", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True
    assert main(["export", "coreml", "tiny-debug-decoder", "-o", str(tmp_path / "x.zip")]) == 2


def test_features_command_torch_and_host(capsys):
    assert main(["latency", "features", "tiny-debug", "--latent", "16"]) == 0
    assert "features from torch-meta" in capsys.readouterr().out
    assert main(["latency", "host", "tiny-debug-decoder", "--latent", "8", "--runs", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["median_ms"] > 0
