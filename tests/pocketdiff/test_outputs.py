"""Every command that writes checks its output before any work: a file in the way or a folder that cannot be
written is one line naming the flag and the path (exit 2), and nothing is created or changed."""
import pytest

from tests import studyfiles
from tests.test_hostile_input import _cli

# {out}: a path under the obstacle (a file, or a read-only folder)
WRITERS = [
    (["train", "unet", "tiny-debug", "--out", "{out}/x", "--steps", "2"], "--out"),
    (["train", "decoder", "tiny-debug-decoder", "--out", "{out}/x"], "--out"),
    (["eval", "quality", "tiny-debug", "--out", "{out}/x"], "--out"),
    (["export", "coreml", "tiny-debug", "--latent", "8", "-o", "{out}/x.mlpackage"], "-o"),
    (["data", "encode", "folder:{tmp}", "--vae", "{tmp}", "--out", "{out}/x"], "--out"),
    (["sample", "{tmp}", "--prompt", "a digit", "-o", "{out}/x.png"], "-o"),
    (["latency", "fit", "--profiles", "{out}/p"], "--profiles"),
    (["latency", "fit", "--profiles", "{tmp}/p", "--reports", "{out}/r"], "--reports"),
    (["latency", "import", "{tmp}/m.csv", "--into", "{out}/m.csv"], "--into"),
    (["latency", "plan", "--device", "a17pro", "-o", "{out}/plan.csv"], "-o"),
    (["study", "export", "--storage", "sqlite:///{tmp}/s.db", "-o", "{out}/x.csv"], "-o"),
    (["study", "best", "--storage", "sqlite:///{tmp}/s.db", "-o", "{out}/w.json"], "-o"),
    (["study", "run", "{tmp}/s.toml", "--storage", "sqlite:///{out}/s.db", "--no-progress"], "artifact folder"),
]


def _run(tmp_path, argv, out):
    (tmp_path / "m.csv").write_text("not read: the output is refused first\n")
    studyfiles.write(tmp_path / "s.toml", studyfiles.study("s"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = _cli([a.format(tmp=tmp_path, out=out) for a in argv])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made
    return code, err


IDS = [" ".join(argv[:2]) + (f" {flag}" if argv[1] in ("fit",) else "") for argv, flag in WRITERS]


@pytest.mark.parametrize("argv, flag", WRITERS, ids=IDS)
def test_a_file_in_the_way_is_refused_before_any_work(tmp_path, argv, flag):
    (tmp_path / "afile").write_text("mine")
    code, err = _run(tmp_path, argv, tmp_path / "afile")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"pocketdiff: error: {flag} {tmp_path}/afile/") and f"{tmp_path}/afile is a file" in err
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("argv, flag", WRITERS, ids=IDS)
def test_a_read_only_folder_is_refused_before_any_work(tmp_path, readonly_folder, argv, flag):
    code, err = _run(tmp_path, argv, readonly_folder)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"pocketdiff: error: {flag} {readonly_folder}/") and "is not writable" in err


def test_the_study_storage_itself_is_checked(tmp_path):
    """The storage folder is checked where it is opened (a reader's and a writer's storage URL alike)."""
    from search_space.outputs import OutputError
    from studies.storage import open_for_writing

    (tmp_path / "afile").write_text("mine")
    with pytest.raises(OutputError, match=r"^storage .*afile/s.db cannot be created: .*afile is a file"):
        open_for_writing(f"sqlite:///{tmp_path}/afile/s.db")


def test_a_full_disk_no_writer_named_is_still_one_line_naming_the_file(monkeypatch):
    """A write the library does not wrap (a log line, a PNG) that hits a full disk ends as one line too."""
    import errno

    from latency_models import profiles

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")
    monkeypatch.setattr(profiles, "available_chips", full)
    code, err = _cli(["latency", "devices"])
    assert code == 2 and err == ("pocketdiff: error: cannot write /data/run/metrics.jsonl: no space left on the "
                                 "device; free space or choose another folder, then run again\n"), err
