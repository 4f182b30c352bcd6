"""The library's shape, checked so it stays readable: no file in pytorch_grad_cam/ over
450 lines, no function over 80, and no import cycle between any of its modules (the cli's
own layout, and that nothing outside it imports it, are checked in test_cli_layout.py,
whose import-graph reader this file uses)."""

from __future__ import annotations

import ast
from typing import Dict, Set

from test_cli_layout import MAX_FILE_LINES, MAX_FUNCTION_LINES, PACKAGE, cycles, imported_modules, module_name


def modules() -> Dict[str, object]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> Dict[str, Set[str]]:
    """Library module -> the library modules it imports (function-level imports count:
    two modules that need each other are one concern)."""
    known = modules()
    return {name: imported_modules(path, set(known)) & set(known) - {name} for name, path in known.items()}


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
    assert cycles(graph) == []
