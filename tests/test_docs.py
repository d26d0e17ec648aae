"""The docs name only what exists: every path that docs/DESIGN.md names (in backticks or in its
layout block) and every relative link of the README and the other project docs resolves in the
repository. Plain file reads, no imports of fastgan: fast, and independent of the build."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "DESIGN.md"
README = ROOT / "README.md"
# the project's own prose; generated run records (docs/lab/**/results.md) are not checked
LINKED_DOCS = ["README.md", "docs/DESIGN.md", "docs/THEORY.md", "docs/lab/README.md",
               "docs/lab/archive/README.md", "benchmarks/NOTES.md"]

PATH_CHARS = re.compile(r"^[\w.\-/*]+$")
FILE_SUFFIX = re.compile(r"\.(py|md|cpp|cu|cuh|h|sh|toml|txt|json|png|csv|jsonl)$")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _exists(rel: str) -> bool:
    """A repository path (a glob when it has a '*') exists."""
    rel = rel.rstrip("/") or "."
    if "*" in rel:
        return any(ROOT.glob(rel))
    return (ROOT / rel).exists()


def _looks_like_path(span: str) -> bool:
    """A code span that names a repository path: no spaces or placeholders, a '/', and either a
    first component that is a top-level entry of the repository or a file suffix."""
    if not PATH_CHARS.match(span) or "/" not in span or span.startswith(("/", "~")):
        return False
    first = span.split("/", 1)[0]
    return (ROOT / first).exists() or bool(FILE_SUFFIX.search(span))


def _outside_fences(text: str) -> str:
    """The text with fenced code blocks removed (their contents are commands and code)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def layout_paths(text: str) -> list[str]:
    """The paths of DESIGN.md's layout block: the first word of every line of the fenced block
    under "## 2. Layout" that starts in the first column (indented lines continue a description)."""
    section = text.split("## 2. Layout", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M)
    assert block, "docs/DESIGN.md section 2 has no layout block"
    return [line.split()[0] for line in block.group(1).splitlines() if line and not line[0].isspace()]


def design_code_paths(text: str) -> list[str]:
    return [s for s in CODE_SPAN.findall(_outside_fences(text)) if _looks_like_path(s)]


def op_stems() -> list[str]:
    """The native ops' stems, from their CPU sources (csrc/<stem>_cpu.cpp)."""
    return sorted(p.name[: -len("_cpu.cpp")] for p in (ROOT / "csrc").glob("*_cpu.cpp"))


def stem_templates(text: str) -> list[str]:
    """Code spans that name a path per op, such as `csrc/<stem>.cu`."""
    return [s for s in CODE_SPAN.findall(_outside_fences(text))
            if "<stem>" in s and _looks_like_path(s.replace("<stem>", "x"))]


def test_layout_block_names_existing_paths():
    paths = layout_paths(DESIGN.read_text(encoding="utf-8"))
    assert len(paths) > 20, paths  # the block was parsed
    missing = [p for p in paths if not _exists(p)]
    assert not missing, f"docs/DESIGN.md's layout names paths that do not exist: {missing}"


def test_layout_block_covers_the_python_packages():
    """Every module of the packages is in the layout (new modules get a line when they land)."""
    named = set(layout_paths(DESIGN.read_text(encoding="utf-8")))
    modules = [p.relative_to(ROOT).as_posix() for pkg in ("fastgan",)
               for p in (ROOT / pkg).rglob("*.py")]
    unnamed = sorted(m for m in modules if m not in named and "__pycache__" not in m)
    if unnamed:  # a fresh module on its way in: report, do not block unrelated changes
        pytest.skip(f"modules not yet described in docs/DESIGN.md section 2: {unnamed}")


def test_design_code_spans_name_existing_paths():
    text = DESIGN.read_text(encoding="utf-8")
    spans = design_code_paths(text)
    assert spans, "no paths found in docs/DESIGN.md's code spans"
    missing = [s for s in spans if not _exists(s)]
    assert not missing, f"docs/DESIGN.md names paths that do not exist: {missing}"


def test_design_per_op_paths_exist_for_every_op():
    """A path written per op (`fastgan/kernels/<stem>.py`) must exist for every op, not just for one."""
    stems = op_stems()
    assert stems, "no csrc/*_cpu.cpp found"
    missing = [s.replace("<stem>", stem) for s in stem_templates(DESIGN.read_text(encoding="utf-8"))
               for stem in stems if not _exists(s.replace("<stem>", stem))]
    assert not missing, f"docs/DESIGN.md promises per-op paths that do not exist: {missing}"


def test_readme_code_spans_name_existing_paths():
    spans = design_code_paths(README.read_text(encoding="utf-8"))
    missing = [s for s in spans if not _exists(s)]
    assert not missing, f"README.md names paths that do not exist: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", _outside_fences(md.read_text(encoding="utf-8")),
                                          flags=re.M)}


@pytest.mark.parametrize("doc", LINKED_DOCS)
def test_relative_links_resolve(doc):
    source = ROOT / doc
    broken = []
    for target in LINK.findall(_outside_fences(source.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        rel, _, fragment = target.partition("#")
        path = (source.parent / rel).resolve() if rel else source
        if not path.exists() or ROOT not in (path, *path.parents):
            broken.append(target)
        elif fragment and path.suffix == ".md" and fragment not in _anchors(path):
            broken.append(target)
    assert not broken, f"{doc}: links that do not resolve: {broken}"


def test_readme_keeps_the_two_commands():
    """CI runs `make test` and the main job is `make lab`: the README shows both."""
    text = README.read_text(encoding="utf-8")
    assert "make lab" in text and "make test" in text
