"""The library's shape, checked so it stays readable: no file in pytorch_grad_cam/ over
450 lines, no function over 80, no import cycle between its modules, and nothing outside
the command line importing it."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parent.parent / "pytorch_grad_cam"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The library modules ``name`` imports anywhere in its text (a function-level import
    is a dependency too: two modules that need each other are one concern)."""
    found: Set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def test_no_file_over_450_lines_and_no_function_over_80():
    too_long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_FILE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_no_import_cycle_in_the_library():
    graph = import_graph()
    assert len(graph) > 40 and "pytorch_grad_cam.base_cam" in graph["pytorch_grad_cam.grad_cam"]
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def walk(node: str, path: List[str]) -> None:
        state[node] = 1
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                cycles.append(path[path.index(child) :] + [child])
            elif child not in state:
                walk(child, path + [child])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    assert not cycles, cycles


def test_the_core_never_imports_the_command_line():
    graph = import_graph()
    offenders = {
        name: sorted(module for module in imports if module.startswith("pytorch_grad_cam.cli"))
        for name, imports in graph.items()
        if not name.startswith("pytorch_grad_cam.cli")
    }
    assert not {name: found for name, found in offenders.items() if found}
