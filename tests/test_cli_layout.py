"""The layout of the command-line package ``pytorch_grad_cam/cli/``: every module imports
on its own, no two modules import each other (directly or through others), the library
is reached only through its public names. (The size limits of the project's guide, no
file over 450 lines and no function over 80, are checked for the whole library in
test_library_layout.py.)

The import graph is read with ``ast`` from the source, so a cycle is found even where
Python would happen to import the modules in an order that works.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pytorch_grad_cam"
CLI = PACKAGE / "cli"
#: The other application on the library: the browser explorer, which builds on the cli's
#: steps (and which the cli starts, lazily, for ``pytorch-grad-cam explore``).
EXPLORER = PACKAGE / "explorer"
#: The library modules that the command line may import: the top-level package's names,
#: and the public modules that a user imports too (under utils and metrics, any; the
#: detection package's and vision_language's own names).
PUBLIC_CORE = (
    "pytorch_grad_cam",
    "pytorch_grad_cam.registry",
    "pytorch_grad_cam.metrics",
    "pytorch_grad_cam.utils",
    "pytorch_grad_cam.detection",
    "pytorch_grad_cam.vision_language",
    "pytorch_grad_cam.video",
)
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` under the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def cli_modules() -> Dict[str, Path]:
    """Every module of the cli package (its subpackages included), by dotted name."""
    return {module_name(path): path for path in sorted(CLI.rglob("*.py"))}


def imports_of(source: str, name: str, is_package: bool, known: Set[str]) -> Set[str]:
    """The modules that the source of module ``name`` imports (anywhere in it, functions
    included), as dotted names, relative imports resolved; ``from package import name``
    counts as importing ``package.name`` where that is one of the modules ``known``, else ``package``."""
    package = name if is_package else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - (node.level - 1)], *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def imported_modules(path: Path, known: Set[str]) -> Set[str]:
    """The modules that the file at ``path`` imports (see :func:`imports_of`)."""
    return imports_of(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py", known)


def import_graph() -> Dict[str, Set[str]]:
    """cli module -> the cli modules it imports.

    A submodule's implicit import of its parent package (Python runs ``__init__`` first) is
    not an edge: only what a file names. A package's ``__init__`` importing its own
    submodules is an edge like any other."""
    modules = cli_modules()
    return {name: imported_modules(path, set(modules)) & set(modules) - {name} for name, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Every import cycle of ``graph``, each as a path from a module back to itself."""
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        seen: Set[str] = set()
        while stack:
            node, path = stack.pop()
            for target in sorted(graph[node]):
                if target == start:
                    found.append([*path, start])
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    return found


def test_the_graph_reader_finds_cycles_and_resolves_imports() -> None:
    """The checker itself: a two-module cycle and a three-module one are found, an
    acyclic graph has none, and relative and ``from package import module`` imports
    resolve to their modules."""
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"], ["b", "a", "b"]]
    assert [cycle[0] for cycle in cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})] == ["a", "b", "c"]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    known = set(cli_modules())
    source = (
        "from .files import atomic_write\nfrom .. import jobs\nfrom ..app import main\n"
        "def late():\n    from pytorch_grad_cam.cli import contact_sheet\n"
    )
    assert imports_of(source, "pytorch_grad_cam.cli.folder.shard", False, known) == {
        "pytorch_grad_cam.cli.folder.files",
        "pytorch_grad_cam.cli.jobs",
        "pytorch_grad_cam.cli.app",
        "pytorch_grad_cam.cli.contact_sheet",
    }
    assert imports_of("from . import run\n", "pytorch_grad_cam.cli.folder", True, known) == {
        "pytorch_grad_cam.cli.folder.run"
    }


def test_no_two_cli_modules_import_each_other() -> None:
    """No import cycle in the cli package, direct or through other modules; and app and
    folder (the two that used to import each other) share jobs instead."""
    graph = import_graph()
    assert len(graph) >= 12, sorted(graph)  # it did read the package, folder's modules included
    assert cycles(graph) == []
    app, folder, jobs = "pytorch_grad_cam.cli.app", "pytorch_grad_cam.cli.folder", "pytorch_grad_cam.cli.jobs"
    assert jobs in graph[app] and folder in graph[app]
    users_of_jobs = {name for name, targets in graph.items() if jobs in targets}
    assert {app, f"{folder}.dataset", f"{folder}.run", f"{folder}.shard"} <= users_of_jobs
    assert graph[jobs] == {"pytorch_grad_cam.cli.model_zoo"}


def test_the_cli_reaches_the_library_only_through_public_names() -> None:
    """Each library module the cli imports is public (the top-level package, the
    registry, metrics, utils) or the explorer (started by ``explore``), no imported name is
    private, and no library module outside cli and the explorer imports the cli."""
    modules = cli_modules()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and not node.level
                and (node.module or "").startswith("pytorch_grad_cam")
            ):
                target = node.module
                if not target.startswith(("pytorch_grad_cam.cli", "pytorch_grad_cam.explorer")):
                    assert target in PUBLIC_CORE or target.startswith(
                        ("pytorch_grad_cam.utils.", "pytorch_grad_cam.metrics.")
                    ), (name, target)
                    assert not [alias.name for alias in node.names if alias.name.startswith("_")], (name, target)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("pytorch_grad_cam") and not alias.name.startswith("pytorch_grad_cam.cli"):
                        assert alias.name in PUBLIC_CORE or alias.name.startswith("pytorch_grad_cam.utils."), name
    for path in sorted(PACKAGE.rglob("*.py")):
        if CLI in path.parents or EXPLORER in path.parents:  # the two applications
            continue
        imported = imported_modules(path, set(modules))
        assert not [target for target in imported if target.startswith("pytorch_grad_cam.cli")], path


def test_every_cli_module_imports_on_its_own() -> None:
    """Each cli module imports first, in a new interpreter: a cycle that Python's import
    order hides from one entry point would fail from another. Importing torch costs each
    interpreter seconds, so one new interpreter imports the modules in turn, and before
    each it forgets every cli module it has imported: each import then runs the cli
    package from scratch, as ``python -c "import pytorch_grad_cam.cli.<mod>"`` would."""
    names = sorted(cli_modules())
    script = (
        "import sys, importlib\n"
        "import pytorch_grad_cam\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('pytorch_grad_cam.cli')]:\n"
        "        del sys.modules[loaded]\n"
        "    module = importlib.import_module(name)\n"
        "    print(name, module.__name__ == name)\n"
    )
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    result = subprocess.run(
        [sys.executable, "-c", script, *names], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [f"{name} True" for name in names]
