"""`pocketdiff export coreml -o`: an output the export would have to delete is refused before any work."""
import subprocess
import sys

import pytest


def _export(out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pocketdiff.cli", "export", "coreml", "tiny-debug", "--latent", "8",
                           "-o", str(out)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("make", ["file", "folder"])
def test_existing_non_package_output_is_refused_and_kept(tmp_path, make):
    out = tmp_path / "model.mlpackage"
    if make == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    res = _export(out)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "not a Core ML package" in res.stderr
    kept = out if make == "file" else out / "notes.txt"
    assert kept.read_text() == "keep me"


def test_output_must_be_an_mlpackage(tmp_path):
    res = _export(tmp_path / "model.bin")
    assert res.returncode == 2 and "*.mlpackage" in res.stderr
    assert not (tmp_path / "model.bin").exists()
