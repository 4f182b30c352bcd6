"""The documentation site's frame: the API reference leaves no public name out, the
navigation names pages that exist, llms.txt links every page and names only things
that exist, and the short README stays short, links pages that exist and lists every
method.

``make docs`` (``mkdocs build --strict``, run by ``.ci/run``) checks the links and that
every ``::: name`` resolves; these tests check what the build cannot: that nothing is
missing.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import re
import shlex
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


def is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module (the API reference's renderer then shows the
    module, even where the package's ``__init__`` binds a function of that name)."""
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:  # a name inside a module, not a package
        return False


def resolve(dotted: str) -> object:
    """The object named ``name`` in the module ``dotted`` minus its last part."""
    module, _, name = dotted.rpartition(".")
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
        assert not is_module(path), f"{path} is a module: name the object inside it"
        assert not inspect.ismodule(resolve(path)), path
    duplicated = sorted({path for path in paths if paths.count(path) > 1})
    assert not duplicated, f"documented twice: {duplicated}"


def test_nav_names_every_page_that_exists() -> None:
    """The nav's pages exist, and every page (the API reference's too) is in the nav."""
    pages = nav_pages()
    assert pages[:2] == ["index.md", "getting-started.md"]
    assert not [page for page in pages if not (DOCS / page).is_file()]
    on_disk = sorted(str(page.relative_to(DOCS)) for page in DOCS.rglob("*.md"))
    assert sorted(pages) == on_disk


# ---------------------------------------------------------------- llms.txt


def page_url(page: str) -> str:
    """The site's URL of a page, relative to its root (MkDocs' directory URLs)."""
    stem = page.removesuffix(".md")
    if stem == "index":
        return "./"
    return stem.removesuffix("index") if stem.endswith("/index") else stem + "/"


def llms_text() -> str:
    return (DOCS / "llms.txt").read_text(encoding="utf-8")


def test_llms_txt_has_the_llmstxt_shape() -> None:
    """llmstxt.org's format: the title, a one-paragraph summary, then the Docs links."""
    lines = llms_text().splitlines()
    assert lines[0] == "# pytorch_grad_cam"
    assert lines[1] == "" and lines[2].startswith("> ") and lines[3] == ""
    assert "## Docs" in lines


def test_llms_txt_links_every_page_of_the_nav() -> None:
    """Every page of the nav, and nothing else, is linked from llms.txt's Docs section."""
    docs = llms_text().split("## Docs", 1)[1]
    links = re.findall(r"^- \[[^]]+\]\(([^)]+)\): \S", docs, flags=re.M)
    assert len(links) == len(docs.strip().splitlines())  # one link (and what it is for) per line
    assert sorted(links) == sorted(page_url(page) for page in nav_pages())


def llms_code(language: str) -> List[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", llms_text(), flags=re.S | re.M)


def call_target(call: ast.Call, namespace: dict) -> object:
    """What ``call`` calls: an imported name, an instance of an imported class
    (``GradCAM(...)(...)``), or what a factory returns for literal arguments
    (``get_method("scorecam")(...)``)."""
    func = call.func
    if isinstance(func, ast.Name):
        assert func.id in namespace, f"llms.txt calls {func.id}, which it does not import"
        return namespace[func.id]
    assert isinstance(func, ast.Call) and isinstance(func.func, ast.Name), ast.unparse(call)
    inner = call_target(func, namespace)
    if isinstance(inner, type):
        return functools.partial(inner.__call__, None)  # the instance's call
    return inner(*[ast.literal_eval(argument) for argument in func.args])


def test_llms_txt_code_names_what_exists() -> None:
    """Its imports import; each library call passes arguments its signature accepts (the
    reader's own objects, ``model``, ``rgb_img``, stay names); its cam.py line parses."""
    (python,) = llms_code("python")
    tree = ast.parse(python)
    namespace: dict = {}
    imports = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert len(imports) >= 5
    exec(compile(ast.Module(body=imports, type_ignores=[]), "llms.txt", "exec"), namespace)  # noqa: S102
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    called = set()
    for call in calls:
        target = call_target(call, namespace)
        positional = [None] * len(call.args)
        keywords = {keyword.arg: None for keyword in call.keywords}
        signature = inspect.signature(target)
        signature.bind(*positional, **keywords)  # TypeError: a wrong count, or a name it lacks
        unnamed = [word for word in keywords if word not in signature.parameters]  # not even into **kwargs
        assert not unnamed, f"{ast.unparse(call)}: {unnamed} are not parameters of {target}"
        if isinstance(call.func, ast.Name):
            called.add(call.func.id)
    assert {"GradCAM", "show_cam_on_image", "explain_detections", "explain_prompts"} <= called

    from pytorch_grad_cam.cli.arguments import build_parser
    from pytorch_grad_cam.cli.detector_zoo import DETECTORS
    from pytorch_grad_cam.cli.model_zoo import MODELS

    (shell,) = llms_code("bash")
    words = shlex.split(shell, comments=True)
    assert words[:2] == ["python", "cam.py"]
    arguments = build_parser(MODELS, "resnet50", None, "cam.py", DETECTORS).parse_args(words[2:])
    assert arguments.method in METHODS


# ---------------------------------------------------------------- README.md

README = ROOT / "README.md"


def test_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_readme_links_pages_that_exist() -> None:
    """Its docs/ links and pictures name files that exist, and every page of the nav is
    linked (so the README reaches every topic on GitHub too)."""
    links = re.findall(r"\]\((docs/[^)#\s]+)", README.read_text(encoding="utf-8"))
    assert not [link for link in links if not (ROOT / link).is_file()]
    linked = {link.removeprefix("docs/") for link in links}
    # The README is the home page's counterpart; the API reference is linked by its index.
    unlinked = [
        page for page in nav_pages() if page not in linked and page != "index.md" and not page.startswith("api/")
    ]
    assert not unlinked
    assert "api/index.md" in linked and "methods_grid.jpg" in linked


def test_readme_method_table_lists_every_method() -> None:
    """One row per registered method, by its cam.py name."""
    rows = re.findall(r"^\| [^|]+ \| `([^`]+)` \| [^|]+\|$", README.read_text(encoding="utf-8"), flags=re.M)
    assert rows[0] == "cam.py --method"  # the header
    assert sorted(rows[1:]) == sorted(METHODS)
