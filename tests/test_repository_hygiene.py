"""The repository explains itself: no tracked file cites a document that lives outside
it, every citation of ``docs/decisions.md`` ("docs/decisions.md, D6", "..., G3") names
a heading that exists there, and every test that ``docs/decisions.md`` names as a guard
exists, so that a renamed or deleted guard cannot go unnoticed."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
DECISIONS = ROOT / "docs" / "decisions.md"

#: The documents that exist only beside the repository. The first two are matched as
#: upper-case whole words (with or without ".md", "§", "decision 3", "'s"), so
#: identifiers built from them such as ``COMPAT_NAMES`` do not count; the style guide
#: only with its ".md" (the contact sheet's template has a ``@STYLE@`` slot). Spelled in
#: lower case here so that this file does not cite them itself.
_OUTSIDE_DOCUMENTS = ("spec", "compat", "style")
OUTSIDE_CITATION = re.compile(
    r"\b(?:"
    + "|".join(name.upper() for name in _OUTSIDE_DOCUMENTS[:2])
    + r")\b"
    + r"|\b"
    + _OUTSIDE_DOCUMENTS[2].upper()
    + r"\.md\b"
    + r"|\.\./shared\b|/work/(?:shared)\b"
)

#: "docs/decisions.md, D6", "docs/decisions.md, G3 and G4", "docs/decisions.md, D1–D12";
#: a citation may wrap onto a comment's next line.
_LABEL = r"[DG]\d+"
CITATION = re.compile(r"docs/decisions\.md,[\s#]*(" + _LABEL + r"(?:\s*(?:,|and|or|/|–|-)\s*" + _LABEL + r")*)")
HEADING = re.compile(r"^## ([DG])(\d+) — \S.*$", re.MULTILINE)
#: ``tests/test_x.py::test_name``, ``tests/test_x.py::TestClass::test_name``, with an
#: optional parametrised id (``[gradcam-with]``) that is stripped before the look-up.
TEST_REFERENCE = re.compile(r"(tests/[\w/.-]+\.py)::((?:\w+::)*\w+)(?:\[[^\]\s`]*\])?")


def tracked_text_files() -> Iterator[Tuple[str, str]]:
    """(path relative to the root, text) of every file git tracks that is text."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout (git ls-files failed: {error}); nothing to scan")
    for name in listed.stdout.decode("utf-8").split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue  # deleted in the working tree, or a submodule
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary (pictures)
        try:
            yield name, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def outside_citations(text: str) -> List[Tuple[int, str]]:
    """(line number, line) of every line that cites a document outside the repository."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if OUTSIDE_CITATION.search(line)]


def cited_labels(text: str) -> List[str]:
    """Every "D<n>" / "G<n>" that a citation of docs/decisions.md in ``text`` names."""
    return [label for match in CITATION.finditer(text) for label in re.findall(_LABEL, match.group(1))]


def sections(text: str) -> Dict[str, str]:
    """docs/decisions.md's sections: label ("D6") -> the text up to the next heading."""
    matches = list(HEADING.finditer(text))
    ends = [match.start() for match in matches[1:]] + [len(text)]
    return {match.group(1) + match.group(2): text[match.end() : end] for match, end in zip(matches, ends)}


def defined_tests(path: Path) -> Set[str]:
    """The test functions of a test file, as "name" or "Class::name"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
    return names


def test_the_patterns_match_what_they_should() -> None:
    """The scanners below can fail: each pattern finds a citation and passes over the
    words that only look like one."""
    outside = [name.upper() for name in _OUTSIDE_DOCUMENTS]
    for cited in (
        f"{outside[0]}.md step 4",
        f"{outside[1]} §13",
        f"see {outside[1]} decision 1",
        f"{outside[2]}.md",
        "../" + "shared/notes.md",
        "/work/" + "shared/x.md",
    ):
        assert outside_citations(f"x = 1\n# {cited}\n") == [(2, f"# {cited}")], cited
    for innocent in (
        f"{outside[1]}_NAMES = []",
        f"{outside[0]}_METHODS",
        "spec = FAMILIES[f]",
        "--image-dir /shared/photos",
        "<style>",
        f'"{outside[2]}": _STYLE',
        f"<style>@{outside[2]}@</style>",
    ):
        assert outside_citations(innocent) == [], innocent
    assert cited_labels("docs/decisions.md, D6 and G3; docs/decisions.md,\n    # D1–D12") == ["D6", "G3", "D1", "D12"]
    assert cited_labels("see docs/decisions.md for the guarantees") == []
    assert sections("## D1 — a\ntext\n## G2 — b\nmore\n") == {"D1": "\ntext\n", "G2": "\nmore\n"}
    reference = "`tests/test_api.py::test_clear_errors[gradcam-3]` and tests/a.py::Class::test_b"
    assert [m.group(1, 2) for m in TEST_REFERENCE.finditer(reference)] == [
        ("tests/test_api.py", "test_clear_errors"),
        ("tests/a.py", "Class::test_b"),
    ]


def test_no_tracked_file_cites_a_document_outside_the_repository() -> None:
    """The design documents of the first build live outside the repository; the
    repository states their content in its own words (docs/decisions.md, the README)."""
    found = [
        f"{name}:{number}: {line}" for name, text in tracked_text_files() for number, line in outside_citations(text)
    ]
    assert not found, "cite docs/decisions.md instead:\n" + "\n".join(found)


def test_docs_decisions_has_d1_to_d12_and_numbered_guarantees_each_with_a_guard() -> None:
    text = DECISIONS.read_text(encoding="utf-8")
    labels = list(sections(text))
    decisions = [label for label in labels if label.startswith("D")]
    guarantees = [label for label in labels if label.startswith("G")]
    assert decisions == [f"D{n}" for n in range(1, 13)], decisions
    assert guarantees and guarantees == [f"G{n}" for n in range(1, len(guarantees) + 1)], guarantees
    unguarded = [label for label, body in sections(text).items() if not TEST_REFERENCE.search(body)]
    assert not unguarded, f"sections that name no test: {unguarded}"


def test_every_citation_of_docs_decisions_names_a_heading() -> None:
    headings = set(sections(DECISIONS.read_text(encoding="utf-8")))
    checked, wrong = 0, []
    for name, text in tracked_text_files():
        for label in cited_labels(text):
            checked += 1
            if label not in headings:
                wrong.append(f"{name}: docs/decisions.md, {label}")
    assert checked > 0, "no citation found: the pattern no longer matches the citations"
    assert not wrong, "citations of headings that docs/decisions.md does not have:\n" + "\n".join(wrong)


def test_every_test_named_in_docs_decisions_exists() -> None:
    references = list(TEST_REFERENCE.finditer(DECISIONS.read_text(encoding="utf-8")))
    assert len(references) >= 24, "docs/decisions.md should name at least one test per section"
    defined: Dict[str, Set[str]] = {}  # each file parsed once
    missing = []
    for match in references:
        name, test = match.group(1), match.group(2)
        if name not in defined:
            defined[name] = defined_tests(ROOT / name) if (ROOT / name).is_file() else set()
        if test not in defined[name]:
            missing.append(f"{name}::{test}")
    assert not missing, "guards named in docs/decisions.md that do not exist:\n" + "\n".join(missing)
