"""`pocketdiff latency explain`: splits that add up to the prediction, and where a change comes from."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from latency_models.api import predict  # noqa: E402
from latency_models.explain import breakdown, compare  # noqa: E402
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
