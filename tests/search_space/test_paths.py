"""Dotted paths (search_space/paths.py): one grammar for --set (search_space/overrides.py), study knobs, describe
and the explorer, with the same message for the same mistake."""
import pytest

from pocketdiff.cli import main
from search_space import PRESETS, apply_overrides, paths
from search_space.sampling import parse_space
from search_space.errors import SpecError

D = {"stages": [{"channels": 32, "heads": [1, 2]}, {"channels": 64, "heads": [2]}], "attention": "mqa",
     "kv_heads": None}


def test_get_path_set_path_flatten_diff():
    assert paths.get_path(D, "stages.1.channels") == 64 and paths.get_path(D, "stages.0.heads") == [1, 2]
    assert paths.get_path(D, "stages.5.channels", default="x") == "x"
    d = {"stages": [dict(s) for s in D["stages"]], "attention": "mqa", "kv_heads": None}
    paths.set_path(d, "stages.1.channels", 96)
    paths.set_path(d, "kv_heads", 2)
    assert d["stages"][1]["channels"] == 96 and d["kv_heads"] == 2
    assert paths.flatten(D) == {"stages.0.channels": 32, "stages.0.heads": [1, 2], "stages.1.channels": 64,
                                "stages.1.heads": [2], "attention": "mqa", "kv_heads": None}
    assert paths.diff(D, d) == [("kv_heads", None, 2), ("stages.1.channels", 64, 96)]
    assert paths.diff(D, {**D, "extra": 1}) == [("extra", paths.MISSING, 1)]
    assert paths.parse_assignment("stages.0.heads=[1, 4]") == ("stages.0.heads", [1, 4])
    assert paths.parse_assignment("attention=mqa") == ("attention", "mqa")


@pytest.mark.parametrize("path,value,match", [
    ("stages", 3, "stages is a list of 2 entries, not a single value: set one field at a time, "
                  "e.g. stages.0.channels=..."),
    ("stages.0", 3, "stages.0 is an object with keys channels, heads, not a single value"),
    ("attention", [1], "attention is a single value, not a list of 1 entries"),
    ("stages.2.channels", 3, "index '2' is out of range \\(there are 2 entries, 0 to 1\\)"),
    ("stagez", 3, "unknown key 'stagez'; known: attention, kv_heads, stages"),
    ("attention.x", 3, "'x' goes below a single value"),
])
def test_set_refuses_a_wrong_path_or_shape(path, value, match):
    d = {"stages": [dict(s) for s in D["stages"]], "attention": "mqa", "kv_heads": None}
    with pytest.raises(SpecError, match=match):
        paths.set_path(d, path, value)
    assert d == D  # nothing changed


def test_the_same_mistake_reads_the_same_in_set_and_in_a_study_knob():
    base = PRESETS["tiny-debug"]
    with pytest.raises(SpecError) as by_set:
        apply_overrides(base, ["stagez=3"])
    with pytest.raises(SpecError) as by_knob:
        parse_space({"base": "tiny-debug", "stagez": {"choices": [1, 2]}})
    reason = str(by_set.value).removeprefix("--set stagez: ")
    assert reason.startswith("unknown key 'stagez'; known: attention") and reason in str(by_knob.value)


def test_set_stages_is_one_clean_line_from_the_cli(capsys):
    assert main(["describe", "tiny-debug", "--set", "stages=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--set stages is a list of 2 entries" in err and "Traceback" not in err
