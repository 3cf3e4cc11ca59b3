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


def test_plan_writes_rows_that_export_and_import(tmp_path, capsys):
    out = tmp_path / "plan.csv"
    assert main(["latency", "plan", "--device", "m4", "-n", "3", "--include", "tiny-debug", "--latent", "16",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "3 of 26 candidates for m4" in text and "pins " in text
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["latency_ms"] == "" and r["chip"] == "m4" for r in rows)
    assert all(r["export_command"].startswith("pocketdiff export coreml ") for r in rows)
    assert main(["latency", "plan", "--device", "m4", "--include", "no-such-preset", "-o", str(out)]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_export_coreml_takes_a_planned_microbenchmark_and_records_its_arch(tmp_path, capsys):
    import coremltools as ct

    out = tmp_path / "c.mlpackage"
    assert main(["export", "coreml", "--arch", "microbench:conv3x3-c8-l2", "--input", "1x8x8x8", "-o", str(out)]) == 0
    meta = ct.models.MLModel(str(out), skip_model_load=True).get_spec().description.metadata.userDefined
    assert meta["pocketdiff.arch"] == "microbench:conv3x3-c8-l2"  # what `latency measure` writes into arch
    assert main(["export", "coreml", "--arch", "microbench:conv3x3-c8-l2", "-o", str(out)]) == 2
    assert main(["export", "coreml", "--arch", "microbench:conv3x3-c8-l2", "--input", "1x9x8x8", "-o", str(out)]) == 2
    assert "input shape like 1x8xHxW" in capsys.readouterr().err


def test_fit_device_replaces_only_that_chips_profile(tmp_path, monkeypatch, capsys):
    import shutil

    from latency_models import measurements, ratios
    from latency_models.measurements import Measurement
    from latency_models.profiles import PROFILE_DIR, load_profile

    # Two families and both size regimes per chip: the fit validates each family held out, per regime.
    rows = [Measurement(a, a, shape, chip, chip, ms * k, "p", "test")
            for chip, k in (("m4", 1.0), ("a17pro", 1.6))
            for a, shape, ms in (("microbench:conv3x3-c8-l2", (1, 8, 16, 16), 0.1),
                                 ("microbench:conv3x3-c512-l2", (1, 512, 128, 128), 41.0),
                                 ("preset:tiny-debug", (1, 4, 16, 16), 0.8),
                                 ("preset:tiny-debug", (1, 4, 32, 32), 2.1))]
    monkeypatch.setattr(measurements, "load_published", lambda: rows[:4])
    monkeypatch.setattr(ratios, "load_design_chain", lambda: [])
    store = tmp_path / "measured.csv"
    with store.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MEASUREMENT_COLUMNS)
        w.writeheader()
        for m in rows[4:]:
            w.writerow({"model": m.model, "arch": m.arch, "input_shape": "x".join(map(str, m.input_shape)),
                        "device": "iPhone 15 Pro", "chip": "A17 Pro", "os": "", "compute_units": "cpu_and_ne",
                        "precision": "fp16", "latency_ms": m.latency_ms, "source": "test"})
    profiles = tmp_path / "profiles"
    shutil.copytree(PROFILE_DIR, profiles)
    before = {p.name: p.read_text() for p in profiles.glob("*.json")}
    assert main(["latency", "fit", "--measurements", str(store), "--device", "iphone15pro",
                 "--profiles", str(profiles)]) == 0
    after = {p.name: p.read_text() for p in profiles.glob("*.json")}
    assert [n for n in before if before[n] != after[n]] == ["a17pro.json"]
    new = load_profile("a17pro", profiles)
    assert new["previous_fit_id"] == json.loads(before["a17pro.json"])["fit_id"] != new["fit_id"]
    assert {m["arch"] for m in new["measurements"]} == {m.arch for m in rows[4:]}
    assert "other profiles and the reports were not rewritten" in capsys.readouterr().out
