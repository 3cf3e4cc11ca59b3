"""Predictor, calibration data, device profiles and the prediction API."""
from __future__ import annotations

import csv
import math
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models import export, predictor, profiles  # noqa: E402
from latency_models.api import predict, predict_latency  # noqa: E402
from latency_models.measurements import (MEASUREMENT_COLUMNS, Measurement, MeasurementError,  # noqa: E402
                                         import_measurements, load_calibration, load_published,
                                         read_measurements)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(export.CACHE_ENV, str(tmp_path / "cache"))


# --- calibration data ---------------------------------------------------------------------------------------

def test_calibration_copy_parses_with_sources_and_protocols():
    rows = load_calibration()
    assert len(rows) == 51
    assert {m.chip for m in rows} == {"a13", "a14", "a15", "a16", "a17pro", "m1", "m2"}
    assert all(m.source.startswith("https://") for m in rows)
    sd = [m for m in rows if m.family == "sd-unet"]
    assert len(sd) == 8 and all(m.input_shape == (2, 4, 64, 64) and m.weight_bits == 6 for m in sd)
    assert {m.protocol for m in rows if m.chip == "a17pro"} == {"coremltools-docs-xcode",
                                                                 "coremltools-docs-ios18-seed"}
    assert next(m for m in rows if "width 0.35" in m.model or m.latency_ms == 1.0).input_shape == (1, 3, 96, 96)


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _row(ms):
    return ["r18", "torchvision:resnet18", "1x3x224x224", "Mac", "M2", "macOS 15", "cpu_and_ne", "fp16", ms,
            "bench"]


def test_import_rejects_missing_columns_by_name(tmp_path):
    bad = _write(tmp_path / "bad.csv", ["model", "arch", "latency_ms"], [["a", "timm:x", "1"]])
    with pytest.raises(MeasurementError, match="missing column.*input_shape.*device"):
        read_measurements(bad)


def test_import_rejects_non_positive_latency_with_line_numbers(tmp_path):
    bad = _write(tmp_path / "bad.csv", MEASUREMENT_COLUMNS, [_row("1.5"), _row("0"), _row("2"), _row("-3"),
                                                             _row("fast"), _row("inf"), _row("nan"), _row("1e308")])
    with pytest.raises(MeasurementError) as e:
        read_measurements(bad)
    for line in (3, 5, 6, 7, 8, 9):
        assert f"line {line}, column latency_ms" in str(e.value)
    assert "line 2," not in str(e.value) and "line 4," not in str(e.value)


def test_import_refuses_a_cell_that_a_spreadsheet_would_run(tmp_path):
    row = _row("1.5")
    row[0] = "=HYPERLINK(\"http://x\")"  # the model column
    bad = _write(tmp_path / "bad.csv", MEASUREMENT_COLUMNS, [_row("1.5"), row])
    with pytest.raises(MeasurementError, match=r"line 3, column model: .* starts like a spreadsheet formula"):
        import_measurements(bad, tmp_path / "store.csv")
    assert not (tmp_path / "store.csv").exists()  # nothing stored


@pytest.mark.parametrize("column, cell, says", [
    ("chip", "Z99", "chip: unknown chip 'Z99'; known chips: a13, a14, "),
    ("chip", "", "chip: chip is empty"),
    ("arch", "timm:no_such_net", "arch: timm has no model 'no_such_net'"),
    ("arch", "torchvision:resnet999", "arch: torchvision has no model 'resnet999'"),
    ("arch", "preset:no-such-preset", "arch: unknown preset 'no-such-preset'"),
    ("arch", "transformers:gpt9", "arch: no transformers architecture 'gpt9'; known: distilbert"),
    ("arch", "diffusers:sd99", "arch: cannot rebuild architecture 'diffusers:sd99'; use torchvision:NAME"),
    ("arch", "spec:/no/such.json", "arch: spec file /no/such.json does not exist"),
    ("input_shape", "1x3xax224", "input_shape: input shape '1x3xax224' is not like"),
    ("input_shape", "1x128x64x64", "arch: torchvision:resnet18 takes an RGB batch BATCHx3xHxW"),
    ("weight_bits", "0", "weight_bits: '0' must be a positive, finite number up to 32"),
    ("weight_bits", "1e400", "weight_bits: '1e400' is not a whole number"),
])
def test_import_names_each_bad_cell_by_line_and_column_and_stores_nothing(tmp_path, column, cell, says):
    """Unknown chips and architectures the workbench cannot rebuild are refused like a bad number; the store
    keeps what it held."""
    header = MEASUREMENT_COLUMNS + ("weight_bits",)
    row = dict(zip(header, _row("1.5") + ["16"]))
    row[column] = cell
    bad = _write(tmp_path / "bad.csv", header, [_row("1.5") + ["16"], list(row.values())])
    store = _write(tmp_path / "store.csv", header, [_row("2.5") + ["16"]])
    before = store.read_bytes()
    with pytest.raises(MeasurementError) as e:
        import_measurements(bad, store)
    assert f"bad.csv: 1 bad row(s), none used: line 3, column {says}" in str(e.value), str(e.value)
    assert store.read_bytes() == before


def test_chips_are_read_as_the_sources_and_phones_name_them(tmp_path):
    rows = [_row("1.5"), _row("1.5"), _row("1.5")]
    rows[0][4], rows[1][4], rows[2][4] = "A17 Pro", "iPhone 15 Pro", "M1 Max (10-core CPU)"
    back = read_measurements(_write(tmp_path / "chips.csv", MEASUREMENT_COLUMNS, rows))
    assert [m.chip for m in back] == ["a17pro", "a17pro", "m1max"]


def test_import_appends_valid_rows(tmp_path):
    good = _write(tmp_path / "good.csv", MEASUREMENT_COLUMNS, [_row("1.5"), _row("1.7")])
    n, store = import_measurements(good, tmp_path / "store.csv")
    n2, _ = import_measurements(good, store)
    back = read_measurements(store)
    assert (n, n2, len(back)) == (2, 2, 4)
    assert back[0].chip == "m2" and back[0].protocol == "measure-cpu_and_ne"


# --- fitting ------------------------------------------------------------------------------------------------

def _synthetic(n_models=24, seed=0):
    rng = np.random.default_rng(seed)
    theta = np.zeros(len(predictor.COLUMNS))
    theta[predictor.COLUMNS.index("flops")] = 0.3
    theta[predictor.COLUMNS.index("act_bytes")] = 0.02
    theta[predictor.COLUMNS.index("ops")] = 0.004
    theta[predictor.COLUMNS.index("softmax.bytes")] = 0.05
    scales = {"x1": 1.0, "x2": 2.5}
    ms, totals = [], []
    for i in range(n_models):
        t = {c: 0.0 for c in predictor.COLUMNS}
        t.update(flops=rng.uniform(0.1, 20) * 1e9, act_bytes=rng.uniform(1, 200) * 1e6,
                 ops=float(rng.integers(50, 600)), params=1e6)
        t["softmax.bytes"] = rng.uniform(0, 50) * 1e6
        t["weight_bytes"] = 0.0
        for chip, s in scales.items():
            if chip == "x2" and i % 3:
                continue  # the second chip has a third of the models: the shared structure carries it
            y = s * float(predictor.design_row(t) @ theta)
            ms.append(Measurement(f"m{i}", f"torchvision:m{i}", (1, 3, 8, 8), chip, chip, y, "p", "synthetic"))
            totals.append(t)
    return ms, totals, scales


def test_fit_recovers_a_synthetic_structure_with_non_negative_terms():
    ms, totals, scales = _synthetic()
    model = predictor.fit(ms, totals, ridge=1e-6)  # the default ridge trades exactness for held-out error
    assert (model.theta >= 0).all()
    assert model.scales["x2"] / model.scales["x1"] == pytest.approx(scales["x2"] / scales["x1"], rel=0.02)
    for m, t in zip(ms, totals):
        assert model.predict(t, m.chip, m.protocol) == pytest.approx(m.latency_ms, rel=0.05)


def test_metrics_on_perfect_and_reversed_predictions():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    perfect = predictor.metrics(y, y)
    assert perfect["spearman"] == pytest.approx(1) and perfect["mape"] == 0 and perfect["within_10"] == 1
    reversed_ = predictor.metrics(y, y[::-1].copy())
    assert reversed_["spearman"] == pytest.approx(-1) and reversed_["within_25"] < 1
    assert predictor.metrics(y, np.full(4, math.nan))["n"] == 0


# --- committed profiles ---------------------------------------------------------------------------------------

def test_committed_profiles_are_complete_and_from_one_fit():
    chips = profiles.available_chips()
    assert {"a13", "a14", "a16", "a17pro"} <= set(chips)
    loaded = [profiles.load_profile(c) for c in chips]
    assert len({p["fit_id"] for p in loaded}) == 1
    for p in loaded:
        assert p["measurements"] and all(m["source"] for m in p["measurements"])
        assert "leave_one_family_out" in p["validation"] and p["feature_source"] == predictor.FEATURE_SOURCE
        for regime in ("small", "large"):
            assert p["band"][regime]["log_low"] <= 0 <= p["band"][regime]["log_high"]
            assert p["model"]["adopted"][regime] in ("roofline", "op-class-linear")
            assert p["model"]["adopted_because"][regime]
        lofo = p["validation"]["leave_one_family_out"]
        assert {"roofline", "predictor", "flops_linear", "params_linear"} <= set(lofo)
    assert sum(len(p["measurements"]) for p in loaded) == len(load_published())


def test_refit_from_profiles_reproduces_the_stored_structure():
    ms, totals = profiles.measurements_from_profiles()
    model = predictor.fit(ms, totals)
    stored = profiles.load_profile("a14")["model"]["linear"]
    assert np.allclose(model.theta, stored["structure"]["theta"], rtol=1e-6, atol=1e-12)
    assert model.scales["a14"] == pytest.approx(stored["scale"], rel=1e-6)


def test_device_names_aliases_and_unknown_devices():
    assert profiles.resolve_device("iPhone 15 Pro") == "a17pro"
    assert profiles.resolve_device("A14 Bionic") == "a14"
    with pytest.raises(profiles.UnknownDevice, match="devices with a profile: a13, a14"):
        profiles.resolve_device("pixel9")
    with pytest.raises(profiles.UnknownDevice, match="a18pro, which has no profile") as err:
        profiles.resolve_device("iphone16pro")
    # says what to measure, not only that data is missing
    assert "resnet50" in str(err.value) and "fig3-a" in str(err.value) and "latency import" in str(err.value)


# --- prediction API ---------------------------------------------------------------------------------------------

def test_predict_fastvit_on_a14_brackets_the_published_number():
    ms, (low, high) = predict_latency("timm:fastvit_t8", (1, 3, 256, 256), "a14")
    assert low <= ms <= high
    assert low <= 0.8 <= high  # apple/ml-fastvit README: 0.8 ms on iPhone 12 Pro


def test_predict_full_snapgen_unet_cold_and_cached_within_budget():
    t0 = time.perf_counter()
    cold = predict("snapgen-unet", None, "a17pro", latent=128)
    cold_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    warm = predict("snapgen-unet", None, "iphone15pro", latent=128)
    warm_s = time.perf_counter() - t1
    assert not cold.cached_features and warm.cached_features
    assert cold_s < 60 and warm_s < 1
    assert warm.ms == cold.ms and cold.low_ms < cold.ms < cold.high_ms
    assert cold.feature_source == "torch-meta" and "meta device" in cold.feature_note
    # Bigger latent, bigger latency: the prediction responds to the input
    assert predict("snapgen-unet", None, "a17pro", latent=64).ms < cold.ms


class _Unconvertible(nn.Module):
    """Singular values then a projection: coremltools has no conversion for linalg_svd."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(torch.linalg.svd(x)[1])


def test_module_core_ml_cannot_convert_is_predicted_from_torch_features():
    from latency_models.export import ExportError, export_coreml, model_for

    module = _Unconvertible()
    with pytest.raises(ExportError):
        export_coreml(model_for(module=module, input_shape=(1, 8, 8)))
    p = predict(module, (1, 8, 8), "a16")
    assert p.ms > 0 and p.feature_source == "torch-meta"
    assert p.model == "_Unconvertible"


def test_predictions_of_calibrated_models_rank_like_measurements_on_a13():
    rows = [m for m in load_calibration() if m.chip == "a13"]
    got = [predictor.measurement_totals(m) for m in rows]
    model = profiles.model_from_profile(profiles.load_profile("a13"))
    pred = np.array([model.predict(t, "a13", m.protocol) for t, m in zip(got, rows)])
    assert predictor.metrics(np.array([m.latency_ms for m in rows]), pred)["spearman"] > 0.9
