"""Ratio rows: the published design-chain ratios, their validation, the fit's use of them, and where they show."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models import roofline  # noqa: E402
from latency_models.explain import ratio_evidence  # noqa: E402
from latency_models.measurements import Measurement, MeasurementError  # noqa: E402
from latency_models.profiles import load_profile  # noqa: E402
from latency_models.ratios import (DESIGN_CHAIN_CSV, RATIO_COLUMNS, RatioMeasurement,  # noqa: E402
                                   import_ratios, load_design_chain, read_ratios)
from latency_models.validation import _decided  # noqa: E402
from pocketdiff.cli import main  # noqa: E402
from tests.latency_models.test_roofline import _fused  # noqa: E402

PRIOR = {name: value for name, value, *_ in roofline.SHARED}
REPORTS = Path(roofline.__file__).parent / "reports"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_the_published_design_chain_reads_as_three_a17pro_rows():
    rows = load_design_chain()
    assert [(r.model_before, r.model_after) for r in rows] == [("fig3-a", "fig3-b"), ("fig3-b", "fig3-c1"),
                                                               ("fig3-d", "fig3-e")]
    assert [r.ratio for r in rows] == [0.76, 0.38, 0.91]
    assert {r.chip for r in rows} == {"a17pro"} and {(r.batch, r.latent) for r in rows} == {(1, 128)}
    assert all(r.sigma_log == 0.05 and "2412.09619" in r.source for r in rows)


@pytest.mark.parametrize("column, value, message", [
    ("latency_ratio_after_over_before", "-24", "from 0.01 to 100"),
    ("latency_ratio_after_over_before", "76%", "is not a number"),
    ("sigma_log", "0", "from 0.001 to 2"),
    ("attention", "flash", "not one of math, split_einsum"),
    ("model_after", "fig3-a", "both 'fig3-a'"),
    ("chip", "", "chip is empty"),
    ("chip", "Z99", "unknown chip 'Z99'; known chips: a13"),
    ("input", "128 latent", "write '128x128 latent"),
    ("source", "=HYPERLINK(\"x\")", "starts like a spreadsheet formula"),
])
def test_a_bad_ratio_row_names_its_line_and_what_to_write(tmp_path, column, value, message):
    rows = _rows(DESIGN_CHAIN_CSV)
    rows[1][column] = value
    if column == "model_after":
        rows[1]["model_before"] = value
    bad = _write(tmp_path / "bad.csv", rows)
    with pytest.raises(MeasurementError, match="line 3") as e:
        read_ratios(bad)
    assert message in str(e.value)


def test_a_file_without_the_ratio_columns_says_which_are_missing(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "attention"} for r in _rows(DESIGN_CHAIN_CSV)]
    with pytest.raises(MeasurementError, match="missing column.*attention"):
        read_ratios(_write(tmp_path / "old.csv", rows))


def test_import_routes_ratio_rows_beside_the_store_and_a_bad_file_adds_nothing(tmp_path, capsys):
    store = tmp_path / "store" / "measurements.csv"
    assert main(["latency", "import", str(DESIGN_CHAIN_CSV), "--into", str(store)]) == 0
    ratio_store = store.with_name("ratios.csv")
    assert "3 ratio rows valid" in capsys.readouterr().out and not store.exists()
    assert [r.label for r in read_ratios(ratio_store)] == [r.label for r in load_design_chain()]
    before = ratio_store.read_text()
    rows = _rows(DESIGN_CHAIN_CSV)
    rows[2]["latency_ratio_after_over_before"] = "0"
    with pytest.raises(MeasurementError, match="line 4"):
        import_ratios(_write(tmp_path / "bad.csv", rows), ratio_store)
    assert ratio_store.read_text() == before
    assert list(_rows(ratio_store)[0]) == list(RATIO_COLUMNS) + ["sigma_log"]


def test_a_dense_conv_with_a_long_reduction_rolls_off_and_a_linear_does_not():
    k_pass = PRIOR["k_pass"]
    for k, factor in ((k_pass / 64, 1 + 1 / 8), (4 * k_pass, 3.0)):
        conv = _fused(1, kind=np.array([0]), macs=np.array([1e9]), rows=np.array([4096.0]), k=np.array([k]))
        lin = _fused(1, kind=np.array([2]), macs=np.array([1e9]), rows=np.array([4096.0]), k=np.array([k]))
        chip = (17.5e12, 51.2e9, 32e6)
        c, li = (roofline.op_terms(f, chip, PRIOR)["compute_ms"][0] for f in (conv, lin))
        assert c / li == pytest.approx(factor * PRIOR["eff_linear"] / PRIOR["eff_conv"], rel=1e-9)


def _ratio(before, after, r):
    return RatioMeasurement(before, after, 128, 1, "a17pro", "iPhone 15 Pro", r, 0.05, "split_einsum",
                            "ratio:test", "synthetic")


def test_the_fit_follows_a_ratio_row_that_latency_rows_cannot_pin():
    # Latency rows time linears only; the ratio row says a conv-heavy model is 3x slower than a linear-only model
    # of equal MACs, which holds only if dense convs run at a third of the linears' rate.
    truth = dict(PRIOR, eff_conv=0.25, eff_linear=0.75)
    true_model = roofline.RooflineModel(truth, {}, {}, {})
    rng = np.random.default_rng(0)
    ms, fused = [], []
    for i in range(8):
        c, pos = float(rng.choice([128, 256, 512])), float(rng.choice([256, 1024, 4096]))
        f = _fused(10, kind=np.full(10, 2), macs=np.full(10, pos * c * c), rows=np.full(10, pos),
                   k=np.full(10, c), act_bytes=np.full(10, pos * c * 4.0), weight_bytes=np.full(10, c * c * 2.0))
        ms.append(Measurement(f"m{i}", f"microbench:m{i}", (1, 3, 8, 8), "a17pro", "a17pro",
                              true_model.predict(f, "a17pro", None), "p", "synthetic"))
        fused.append(f)
    pos, c = 4096.0, 256.0
    conv = _fused(10, kind=np.zeros(10, int), macs=np.full(10, pos * c * c * 9), rows=np.full(10, pos),
                  k=np.full(10, c * 9), act_bytes=np.full(10, pos * c * 4.0), weight_bytes=np.full(10, c * c * 18.0))
    lin = _fused(90, kind=np.full(90, 2), macs=np.full(90, pos * c * c), rows=np.full(90, pos),
                 k=np.full(90, c), act_bytes=np.full(90, pos * c * 4.0), weight_bytes=np.full(90, c * c * 2.0))
    r_true = roofline.predicted_ratio(true_model, conv, lin, "a17pro")
    row = _ratio("conv-heavy", "linear-only", r_true)
    with_row = roofline.fit_roofline(ms, fused, ratios=[row], ratio_fused=[(conv, lin)])
    without = roofline.fit_roofline(ms, fused)
    got = roofline.predicted_ratio(with_row, conv, lin, "a17pro")
    ignored = roofline.predicted_ratio(without, conv, lin, "a17pro")
    assert abs(np.log(got / r_true)) < 0.05 < abs(np.log(ignored / r_true))
    # the latency rows still fit (the priors pull a little, as in test_roofline)
    assert np.median([abs(with_row.predict(f, m.chip, m.protocol) / m.latency_ms - 1) for m, f in zip(ms, fused)]) < 0.1


@pytest.mark.parametrize("published, predicted, right", [
    (0.76, 0.70, True), (0.76, 0.86, True), (0.76, 0.87, False), (0.38, 0.85, False), (0.91, 1.02, False),
    (1.10, 1.05, True),
])
def test_a_decision_is_read_right_with_the_sign_and_within_ten_points(published, predicted, right):
    assert _decided(published, predicted) is right


def test_the_committed_profile_checks_the_published_ratios_and_the_fit_with_them_meets_them():
    profile = load_profile("a17pro")
    assert profile["ratios_in_fit"] is False and profile["ratio_band"]["n"] == 3
    got = {(x["before"], x["after"]): x for x in profile["ratios"]}
    for r in load_design_chain():
        x = got[(r.model_before, r.model_after)]
        assert x["published"] == r.ratio and x["held_out"] == x["fitted"]  # not fitted: one out-of-fit prediction
    # The committed reports of `latency fit --fit-ratios`: each published ratio within 5 points in-sample.
    fitted = json.loads((REPORTS / "fit-ratios" / "validation.json").read_text())["ratios"]
    assert fitted["in_fit"] is True and len(fitted["rows"]) == 3
    for x in fitted["rows"]:
        assert abs(x["fitted"] - x["published"]) <= 0.05, (x["before"], x["after"], x["fitted"])


def test_compare_states_the_published_ratio_and_a_band():
    def fake(model, ms):
        return {"model": model, "chip": "a17pro", "total_ms": ms + 1.0, "overhead_ms": 1.0,
                "input_shape": "1x16x128x128"}

    e = ratio_evidence(fake("fig3-b", 100.0), fake("fig3-c1", 40.0))
    assert e["ratio"] == pytest.approx(0.4) and e["low"] < 0.4 < e["high"]
    assert e["published"]["published"] == 0.38 and e["published"]["held_out"] is not None
    # another input size has no published row
    a, b = fake("fig3-b", 100.0), fake("fig3-c1", 40.0)
    a["input_shape"] = b["input_shape"] = "1x16x64x64"
    assert ratio_evidence(a, b)["published"] is None


def test_band_coverage_checks_each_family_against_a_band_built_without_it():
    from latency_models.profiles import _coverage

    # Five families the model gets right and one far off: the band built without the outlier family misses
    # it; every other row is caught by a band built without its own family.
    residuals, family_of = {}, {}
    for i, (fam, r) in enumerate([("a", 0.0), ("b", 0.0), ("c", 0.0), ("d", 0.0), ("e", 0.0), ("far", 1.5),
                                  ("a", 0.0), ("b", 0.0), ("c", 0.0)]):
        key = f"large|a17pro|m{i}|p|{i}"
        residuals[key], family_of[key] = r, fam
    chosen = {"large": "roofline", "small": "roofline"}
    c = _coverage({"roofline": residuals, "predictor": {}}, family_of, chosen, "a17pro")
    assert c["rows"] == 9 and c["covered"] == 8 and c["share"] == pytest.approx(8 / 9)
    # rows of another chip or without a residual of the adopted model do not count
    assert _coverage({"roofline": residuals, "predictor": {}}, family_of, chosen, "m4")["rows"] == 0


def test_a_row_predicted_under_a_protocol_the_refit_never_saw_gets_the_protocol_prior_in_its_band():
    from latency_models.profiles import _coverage, _unfitted_protocol_rows, protocol_band_widening

    # The other families' held-out errors span 0 .. 0.2; the "new" family, whose protocol only it uses, is off
    # by 0.5 in log: outside the plain band, inside it once the band carries the protocol prior (x1.57 a side).
    assert 0.3 < protocol_band_widening() < 0.5
    residuals, family_of = {}, {}
    rows = [("a", "p", 0.0), ("b", "p", 0.2), ("c", "q", 0.1), ("c", "q", 0.1), ("new", "solo", 0.5)]
    ms = [SimpleNamespace(model=f"m{i}", chip="a17pro", protocol=proto, family=fam)
          for i, (fam, proto, _) in enumerate(rows)]
    for i, (fam, proto, r) in enumerate(rows):
        key = f"large|a17pro|m{i}|{proto}|{i}"
        residuals[key], family_of[key] = r, fam
    unfitted = _unfitted_protocol_rows(ms, ["large"] * len(ms))
    # q is used by family c only, solo by "new" only: both are unfitted when their family is held out
    assert unfitted == {"large|a17pro|m2|q|2", "large|a17pro|m3|q|3", "large|a17pro|m4|solo|4"}
    chosen = {"large": "roofline", "small": "roofline"}
    c = _coverage({"roofline": residuals, "predictor": {}}, family_of, chosen, "a17pro", 1.0, unfitted)
    assert c["covered"] == 5 and c["without_protocol_rule"] == 4
    # and the rule widens nothing when every protocol is shared across families
    c = _coverage({"roofline": residuals, "predictor": {}}, family_of, chosen, "a17pro", 1.0, set())
    assert c["covered"] == c["without_protocol_rule"] == 4


def test_every_profile_states_its_band_coverage_over_all_its_rows():
    from latency_models.profiles import available_chips

    for chip in available_chips():
        p = load_profile(chip)
        c = p["band"]["leave_one_family_out_coverage"]
        assert c["rows"] == len(p["measurements"]) and 0 <= c["covered"] <= c["rows"], chip
