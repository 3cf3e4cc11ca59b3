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
