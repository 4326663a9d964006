"""The documentation points at files that exist: every relative link (and its #anchor) in
README.md, CHANGELOG.md, docs/*.md, benchmarks/README.md and results/**/README.md, and every
``results/...``, ``benchmarks/...`` and ``profiles/...`` path they mention."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted({ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md"),
               ROOT / "benchmarks" / "README.md", *(ROOT / "results").rglob("README.md")})
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repository path: not part of a longer word, URL or git object name (COMMIT:path).
PATH = re.compile(r"(?<![\w./:$-])((?:results|benchmarks|profiles)/[\w./*{},-]*)")
# Placeholders in command templates (results/h200x4/REG, OUT_DIR, ...): not literal paths.
PLACEHOLDER = re.compile(r"\b(?:REG|REGIME|NAME|DIR|OUT|OUTDIR|OUT_DIR|G|R|N|NP|P)\b")


def _expand(path: str) -> list[str]:
    """Brace alternatives, as the shell expands them: a/{b,c}.json -> a/b.json, a/c.json."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m[1].split(",") for q in _expand(path[:m.start()] + alt + path[m.end():])]


def _exists(path: str) -> bool:
    return any(ROOT.glob(path)) if any(c in path for c in "*?[") else (ROOT / path).exists()


def _slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(md: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in md.read_text().splitlines() if line.startswith("#")}


def test_docs_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "docs/results.md", "docs/formats.md", "docs/history.md"} <= names


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_exist(md: Path) -> None:
    bad = []
    for target in LINK.findall(md.read_text()):
        if re.match(r"[a-z]+:", target):
            continue                                    # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(target)
    assert not bad, f"{md.relative_to(ROOT)}: broken links {bad}"


@pytest.mark.parametrize("md", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_repository_paths_exist(md: Path) -> None:
    bad = []
    for raw in PATH.findall(md.read_text()):
        path = raw.rstrip(".,")
        if PLACEHOLDER.search(path) or path.endswith("/..."):
            continue
        bad += [p for p in _expand(path) if not _exists(p)]
    assert not bad, f"{md.relative_to(ROOT)}: paths that do not exist {bad}"


def test_a_missing_path_is_caught() -> None:
    """The checks can fail: a made-up path and a made-up anchor are reported."""
    assert not _exists("results/no-such-machine/validation.csv")
    assert "no-such-heading" not in _anchors(ROOT / "docs" / "formats.md")
    assert PATH.findall("see `results/h200x4/nvlink/x.csv`, not 72fb1c1:results/gpu/") == ["results/h200x4/nvlink/x.csv"]


def test_every_benchmark_entry_point_is_in_the_benchmarks_index() -> None:
    """Each script under benchmarks/ is named (`name`) in benchmarks/README.md."""
    index = (ROOT / "benchmarks/README.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh"))
    assert scripts and [s for s in scripts if f"`{s}`" not in index and f"benchmarks/{s}" not in index] == []
