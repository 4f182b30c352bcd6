"""The documentation site's frame: the API reference leaves no public name out, the
navigation names pages that exist, llms.txt links every page and names only things
that exist, and the short README stays short, links pages that exist and lists every
method.

``make docs`` (``mkdocs build --strict``, run by ``.ci/run``) checks the links and that
every ``::: name`` resolves; these tests check what the build cannot: that nothing is
missing.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import List

import pytorch_grad_cam
from pytorch_grad_cam.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", flags=re.M)


def api_directives() -> List[str]:
    """The dotted paths of every ``::: path`` directive of the API reference."""
    return [path for page in sorted(API.glob("*.md")) for path in DIRECTIVE.findall(page.read_text(encoding="utf-8"))]


def resolve(dotted: str) -> object:
    """The object at ``dotted`` (a module, or a name inside one)."""
    module, _, name = dotted.rpartition(".")
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        return getattr(importlib.import_module(module), name)


def nav_pages() -> List[str]:
    """The pages of mkdocs.yml's ``nav``, relative to docs/, in order."""
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s+- (?:[^:\n]+: )?([\w/.-]+\.md)\s*$", nav, flags=re.M)


def test_api_reference_names_every_public_name() -> None:
    """Every name of ``pytorch_grad_cam.__all__`` and every registered method has its
    own ``:::`` entry, so a new method cannot be left out of the reference."""
    documented = {path.rsplit(".", 1)[-1] for path in api_directives()}
    wanted = set(pytorch_grad_cam.__all__) | {cls.__name__ for cls in METHODS.values()}
    assert len(wanted) >= 37  # the 25 methods and the helpers exported beside them
    missing = sorted(wanted - documented)
    assert not missing, f"add a '::: pytorch_grad_cam.<name>' entry to a page of docs/api/ for: {missing}"


def test_api_directives_resolve() -> None:
    """Every entry names an object that exists (the build says so too, more slowly)."""
    paths = api_directives()
    assert len(paths) > 100
    for path in paths:
        assert path.startswith("pytorch_grad_cam."), path
        assert resolve(path) is not None, path
    duplicated = sorted({path for path in paths if paths.count(path) > 1})
    assert not duplicated, f"documented twice: {duplicated}"


def test_nav_names_every_page_that_exists() -> None:
    """The nav's pages exist, and every page (the API reference's too) is in the nav."""
    pages = nav_pages()
    assert pages[:2] == ["index.md", "getting-started.md"]
    assert not [page for page in pages if not (DOCS / page).is_file()]
    on_disk = sorted(str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk
