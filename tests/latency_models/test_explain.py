"""`pocketdiff latency explain`: splits that add up to the prediction, and where a change comes from."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models.api import predict  # noqa: E402
from latency_models.explain import breakdown, compare, kind_evidence  # noqa: E402
from latency_models.profiles import load_profile  # noqa: E402
from pocketdiff.cli import main  # noqa: E402

LATENT = 32  # small maps keep the walk fast; the formula is the same as at 128


@pytest.fixture(scope="module")
def pair():
    return breakdown("fig3-b", "a17pro", latent=LATENT), breakdown("fig3-c1", "a17pro", latent=LATENT)


def test_every_split_sums_to_the_prediction(pair):
    a, _ = pair
    total = predict("fig3-b", None, "a17pro", latent=LATENT).ms
    assert a["total_ms"] == pytest.approx(total, rel=1e-9)
    for key in ("per_stage_ms", "per_kind_ms", "per_block_ms"):
        assert sum(a[key].values()) + a["overhead_ms"] == pytest.approx(total, rel=1e-9), key
    if a["per_term_ms"]:
        assert sum(a["per_term_ms"].values()) + a["overhead_ms"] == pytest.approx(total, rel=1e-9)
    assert {"stage1", "stage2", "stage3"} <= set(a["per_stage_ms"])


def test_separable_convs_show_up_as_the_change(pair):
    a, b = pair
    c = compare(a, b)
    assert c["delta_ms"] == pytest.approx(b["total_ms"] - a["total_ms"])
    assert sum(c["per_stage_ms"].values()) == pytest.approx(c["delta_ms"], abs=1e-6)
    # fig3-c1 swaps dense 3x3 convs for depthwise + pointwise: dense conv time falls, depthwise time appears
    kinds = c["per_kind_ms"]
    assert kinds["conv"] < 0 and kinds["dwconv"] > 0
    assert c["per_block_ms"]["res"] < 0
    top = c["largest_changes"][0]
    assert top["block"] in ("res", "resample") and abs(top["delta_ms"]) > 0


def test_explain_cli_text_and_json(capsys):
    assert main(["latency", "explain", "fig3-b", "--compare", "fig3-c1", "--device", "iphone15pro",
                 "--latent", str(LATENT)]) == 0
    out = capsys.readouterr().out
    assert "per stage" in out and "largest changes" in out and "fig3-c1 vs fig3-b on a17pro" in out
    assert main(["latency", "explain", "fig3-b", "--device", "a17pro", "--latent", str(LATENT), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["b"] is None and data["a"]["chip"] == "a17pro"


def test_explain_bad_input_is_one_line(capsys):
    assert main(["latency", "explain", "fig3-b", "--device", "pixel9"]) == 2
    err = capsys.readouterr().err
    assert "unknown device" in err and "Traceback" not in err
    assert main(["latency", "explain", "fig3-b", "--compare", "no-such-preset", "--device", "a17pro",
                 "--latent", str(LATENT)]) == 2


def test_evidence_per_op_kind_is_the_prediction_seen_as_rates(pair):
    a, _ = pair
    profile = load_profile("a17pro")
    ev = a["evidence"]
    assert {"conv", "linear", "attn"} <= set(ev)
    for kind, e in ev.items():
        assert e["ms"] == pytest.approx(a["per_kind_ms"][kind], rel=1e-9)
        assert e["tflops"] == pytest.approx(e["gflops"] / e["ms"], rel=1e-9)  # GFLOP per ms is TFLOP/s
        assert e["efficiency"] == profile["model"]["roofline"]["shared"][f"eff_{kind}"]
        pinned = profile["model"]["roofline"]["calibrated_range"][kind]["pinned_by"]
        assert e["pinned_by"] == pinned and pinned and all(0 < p["share"] <= 1 for p in pinned)
    # the dense convs of the conv microbenchmarks pin dense-conv efficiency
    assert any(p["model"].startswith("Microbenchmark") for p in ev["conv"]["pinned_by"])


def test_ops_beyond_the_calibrated_range_are_flagged():
    from latency_models import roofline
    from latency_models.profiles import roofline_from_profile

    model = roofline_from_profile(load_profile("a17pro"))
    n = 3
    f = roofline.Fused(kind=np.zeros(n, int), macs=np.full(n, 1e9), rows=np.array([64.0, 4096, 4096]),
                       k=np.array([1152.0, 1152, 20000]), act_bytes=np.full(n, 1e6),
                       weight_bytes=np.array([1e6, 50e6, 1e6]), elements=np.zeros(n), slices=np.ones(n),
                       module=[""] * n, members=np.ones(n, int))
    ms = model.op_terms(f, "a17pro")["ms"]
    cal = {"conv": {"max_weight_bytes": 10e6, "max_k": 5000.0, "max_rows_per_slice": 1e5, "pinned_by": []}}
    e = kind_evidence(f, ms, model, "a17pro", cal)["conv"]
    assert e["outside_ops"] == 2 and e["outside_by"]["weight_bytes"]["ops"] == 1
    assert e["outside_by"]["k"]["largest"] == 20000 and e["outside_by"]["rows_per_slice"]["ops"] == 0
    assert e["outside_share"] == pytest.approx(float(ms[1:].sum() / ms.sum()))


def test_predict_prices_the_attention_form_it_is_asked_for_and_says_so():
    from search_space import SpecError

    measured = predict("tiny-debug", None, "a17pro", latent=LATENT)
    split = predict("tiny-debug", None, "a17pro", latent=LATENT, attention="split_einsum")
    assert measured.attention == "math" and not any("attention form" in w for w in measured.warnings)
    assert split.attention == "split_einsum" and any("fitted on math" in w for w in split.warnings)
    assert split.model_id == measured.model_id and split.ms != measured.ms  # another walk, another op list
    with pytest.raises(SpecError, match="attention form 'flash'"):
        predict("tiny-debug", None, "a17pro", latent=LATENT, attention="flash")
