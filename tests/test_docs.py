"""The README is an entry point and the docs stand alone: every docs page is linked from the README, every
repository path the README and docs name exists, and nothing in the repository cites a file outside it or an
issue number (docs/architecture.md)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP = ("search_space", "training", "latency_models", "evaluators", "studies", "explorer", "pocketdiff", "tests",
       "benchmarks", "docs")
PATH_RE = re.compile(r"`(?:\.venv/bin/python )?((?:%s)/[A-Za-z0-9_./*-]+)" % "|".join(TOP))
OUTSIDE = re.compile(r"\.\./shared|SNAPGEN\.md|DEVELOPERS\.md|STYLE\.md|\bissue #?\d+\b|[(]issue\b", re.I)


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split() if (ROOT / p).is_file()]


def _named_paths(text: str) -> set[str]:
    return {m.rstrip(".:,") for m in PATH_RE.findall(text)}


def test_the_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"(docs/{p.name})" not in readme]
    assert not missing, f"docs pages the README does not link: {missing}"
    assert len(readme.splitlines()) <= 150, "the README is an entry point: at most about 150 lines"


@pytest.mark.parametrize("doc", ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))])
def test_every_path_a_doc_names_exists(doc):
    named = _named_paths((ROOT / doc).read_text())
    gone = sorted(p for p in named if not any(ROOT.glob(p)))
    assert not gone, f"{doc} names paths that do not exist: {gone}"


def test_the_path_check_can_fail():
    assert _named_paths("see `training/trainer.py` and `docs/paper.md`.") == {"training/trainer.py", "docs/paper.md"}
    assert not any(ROOT.glob("training/trainer.py"))


def test_nothing_cites_a_file_outside_the_repository_or_an_issue_number():
    hits = []
    for path in _tracked("*.py", "*.md", "*.toml", ".ci/run"):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line) and "swift-coreml-diffusers" not in line:  # a third party's own issue tracker
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "cite a docs/ page or the paper instead:\n" + "\n".join(hits)
    digest, issue = "SNAPGEN" + ".md", "issue" + " 12"  # spelled apart so this file does not match itself
    assert OUTSIDE.search(f"see {digest} section 3") and OUTSIDE.search(f"({issue}: the fix)")


# --- docs/scale-out.md: its recipes run the one worker command ----------------------------------------------

SCALE_OUT = ROOT / "docs" / "scale-out.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(SCALE_OUT.read_text()) if kind == lang]


def _worker_args(argv: list[str]):
    """Parse a `pocketdiff ...` argument list (shell or Kubernetes variables stand for a storage URL) with the
    CLI's own parser; the study file it names must exist."""
    from pocketdiff.cli import build_parser
    from studies.storage import parse_url

    url = "journal:////shared/x/study.log"
    argv = [re.sub(r"^\"?\$[({]?\w+[)}]?\"?$", url, a) for a in argv]
    args = build_parser().parse_args(argv)
    parse_url(args.storage)
    assert (ROOT / args.file).is_file(), f"{args.file} does not exist"
    return args.group, args.command, args.file, args.no_progress


def _shell_worker_commands(text: str) -> list[list[str]]:
    import shlex
    return [shlex.split(line.split("pocketdiff ", 1)[1]) for line in text.splitlines()
            if re.match(r"\s*(exec\s+)?pocketdiff study worker ", line)]


def test_the_slurm_script_is_valid_bash_running_the_worker_command(tmp_path):
    scripts = [b for b in _blocks("bash") if b.startswith("#!/bin/bash")]
    assert len(scripts) == 1
    (tmp_path / "search.sbatch").write_text(scripts[0])
    r = subprocess.run(["bash", "-n", str(tmp_path / "search.sbatch")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^#SBATCH --array=\d+-\d+", scripts[0], re.M)
    commands = _shell_worker_commands(scripts[0])
    assert len(commands) == 1 and _worker_args(commands[0])[:2] == ("study", "worker")


def test_the_kubernetes_job_runs_the_worker_command_in_parallel():
    import yaml

    docs = [d for block in _blocks("yaml") for d in yaml.safe_load_all(block)]
    kinds = {d["kind"]: d for d in docs}
    assert {"Secret", "Job"} <= set(kinds)
    job = kinds["Job"]["spec"]
    assert job["parallelism"] > 1 and "completions" not in job  # a work queue: done when the workers exit 0
    (container,) = job["template"]["spec"]["containers"]
    args = _worker_args(container["command"][1:] + container["args"])
    secret_keys = set(kinds["Secret"]["stringData"])
    assert any(e["name"] == "POCKETDIFF_STORAGE" and e["valueFrom"]["secretKeyRef"]["key"] in secret_keys
               for e in container["env"] if "valueFrom" in e)
    # the one worker command of every recipe: the page's first block, the Slurm array and this Job
    shell = {_worker_args(c) for b in _blocks("bash") for c in _shell_worker_commands(b)}
    assert shell == {args}, (shell, args)


def test_the_recipe_checks_can_fail(tmp_path):
    with pytest.raises(SystemExit):  # argparse refuses an unknown flag
        _worker_args(["study", "worker", "studies/imagenet-256.toml", "--storage", "$URL", "--no-progess"])
    with pytest.raises(AssertionError):
        _worker_args(["study", "worker", "studies/no-such.toml", "--storage", "$URL"])
    (tmp_path / "bad.sh").write_text("#!/bin/bash\nif true; then\n")
    assert subprocess.run(["bash", "-n", str(tmp_path / "bad.sh")], capture_output=True).returncode != 0
