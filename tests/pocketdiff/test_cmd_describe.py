"""`pocketdiff presets list` and `pocketdiff describe`: what a researcher types to check a design step."""
import json

import pytest

from pocketdiff.cli import main
from search_space import PRESETS
from search_space.compact import encode


def test_presets_list_comes_from_the_registry(capsys):
    assert main(["presets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PRESETS)
    assert {r["spec_id"] for r in rows} >= {PRESETS["snapgen-unet"].spec_id}


def test_describe_prints_spec_id_compact_and_counts(capsys):
    assert main(["describe", "sdxl-unet", "--latent", "128", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert PRESETS["sdxl-unet"].spec_id in out and encode(PRESETS["sdxl-unet"]) in out
    assert "params 2,567,463,684" in out
    assert "stage3   1280" in out


def test_describe_json_round_trips_into_a_spec_file(tmp_path, capsys):
    assert main(["describe", "fig3-a", "--set", "attention=mqa", "--latent", "32", "--json", "--no-memory"]) == 0
    d = json.loads(capsys.readouterr().out)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(d["spec"]))
    assert main(["describe", str(path), "--latent", "32", "--json", "--no-memory"]) == 0
    d2 = json.loads(capsys.readouterr().out)
    assert d2["spec_id"] == d["spec_id"] and d2["params"] == d["params"]
    assert sum(r["params"] for r in d["stages"]) == d["params"]


def test_compare_shows_the_design_step(capsys):
    assert main(["describe", "--compare", "fig3-b", "fig3-c2", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "changed fields: conv: regular -> separable; conv_expansion: 1.0 -> 2.0" in out
    assert "-16.4%" in out and "-27.7%" in out  # params and MACs at a 128x128 latent


def test_compare_under_the_uib_reading(capsys):
    """--set sep_block=uib shows step c2 read as one inverted bottleneck per res block."""
    assert main(["describe", "--compare", "fig3-b", "fig3-c2", "--set", "sep_block=uib", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "sep_block: per_conv -> uib" in out and "_uib2_" in out
    assert "-19.4%" in out and "-34.0%" in out  # vs -16.4% / -27.7% under per_conv
    assert PRESETS["fig3-b"].spec_id in out  # fig3-b has no separable block: the override leaves it as it is


def test_old_field_name_in_set_gives_one_notice(capsys, caplog, monkeypatch):
    import search_space.spec
    monkeypatch.setattr(search_space.spec, "_noticed", set())  # notices are once per process
    with caplog.at_level("WARNING", logger="pocketdiff.spec"):
        assert main(["describe", "fig3-e", "--set", "mqa_in_cross_attention=false", "--latent", "32", "--json",
                     "--no-memory"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["share_kv_in_cross_attention"] is False
    notices = [r.getMessage() for r in caplog.records if "mqa_in_cross_attention" in r.getMessage()]
    assert len(notices) == 1 and "share_kv_in_cross_attention" in notices[0] and "\n" not in notices[0]


@pytest.mark.parametrize("args,message", [
    (["describe", "nope"], "unknown preset 'nope'"),
    (["describe", "fig3-a", "--set", "heads=3"], "unknown key 'heads'"),
    (["describe", "fig3-a", "--set", "stages.0.channels=500"], "stages[0].channels=500 is not divisible by the 32"),
    (["describe", "fig3-a", "--latent", "30"], "latent size 30 is not a multiple of 4"),
    (["describe"], "describe needs a preset name"),
    (["describe", "fig3-c2", "--set", "sep_block=mb"], "sep_block='mb' is not one of per_conv, uib"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys):
    assert main(args + ["--no-memory"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
