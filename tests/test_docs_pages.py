"""Every code block of every documentation page runs, so the docs never say what the
library does not do.

- A page's ```python blocks run in order, in one namespace, as a reader pasting them one
  after the other would run them, in a temporary directory that holds the bundled photos
  (``examples/``). Pages are self-contained: nothing is given to them. The one change made
  before running is :data:`SUBSTITUTIONS` (pretrained weights, which a test cannot
  download, become random weights), each with its reason.
- A page's ```bash blocks: every ``python cam.py ...`` and ``pytorch-grad-cam ...`` command
  runs in process (``pytorch_grad_cam.cli.main``) in that directory and must exit with 0.
  A command that cannot run in a test (a placeholder for the reader's own file, a
  download, another machine) is listed in :data:`NOT_RUN` with the reason, and is still
  parsed by the command line's argument parser, so its options exist. Any other shell
  line (``pip``, ``make``, ``torchrun``) must be listed in :data:`NOT_RUN` too.
  ``pytorch-grad-cam explore`` lines are parsed by the explorer's own parser and not
  started (the page serves until stopped; tests/test_explorer_browser.py starts it).
- Pages use fenced blocks with a language (```python, ```bash, ```text); an unlabelled
  fence fails the test, since it could hide code that never runs.
"""

from __future__ import annotations

import os
import re
import shlex
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", flags=re.S | re.M)
LANGUAGES = {"python", "bash", "text", "csv", "json", "yaml", "bibtex"}

#: (text in a page, what the test runs instead, why): applied to every page's Python.
SUBSTITUTIONS: List[Tuple[str, str, str]] = [
    ('weights="IMAGENET1K_V1"', "weights=None", "torchvision's pretrained weights need a download"),
    ('weights="DEFAULT"', "weights=None", "torchvision's pretrained weights need a download"),
]

#: Shell lines that do not run in the tests, by their start: the reason. cam.py commands
#: among them are still parsed.
NOT_RUN: Dict[str, str] = {
    "pip install": "installs packages (the test environment has them)",
    "make ": "the Makefile's targets: make test runs this test; the others take minutes",
    "torchrun ": "several processes (tests/test_folder_mode.py runs folder mode under torchrun)",
    "python benchmarks/": "the benchmarks measure for minutes (tests/test_bench_layout.py runs bench.py --help and --list)",
    "python cam.py --detector fasterrcnn --weights": "a COCO weights file the reader downloads, and photo.jpg is the reader's own",
    "python cam.py --clip ViT-B-32 --weights openai": "open_clip downloads CLIP's weights, and photo.jpg is the reader's own",
    "python cam.py --video-path clip.mp4 --weights": "the reader's own clip, and torchvision's Kinetics-400 weights file (a download)",
    "python cam.py --image-path examples/cat.jpg --model efficientnet_lite0 --metrics": (
        "ROAD and deletion at 224x224 take minutes on a CPU; tests/test_cli.py runs this command and checks its numbers"
    ),
}


def pages() -> List[Path]:
    """Every Markdown page of the site."""
    return sorted(DOCS.rglob("*.md"))


def blocks(page: Path, language: str) -> List[str]:
    """The page's fenced blocks in ``language``, in order."""
    return [body for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def shell_commands(block: str) -> List[str]:
    """The block's commands: continuation lines joined, comments and prompts dropped."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ").strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def cam_arguments(command: str) -> List[str] | None:
    """The arguments of a ``python cam.py`` / ``pytorch-grad-cam`` command, else None."""
    words = shlex.split(command, comments=True)
    if words[:2] == ["python", "cam.py"]:
        return words[2:]
    if words[:1] == ["pytorch-grad-cam"]:
        return words[1:]
    return None


def not_run_reason(command: str) -> str | None:
    """Why ``command`` does not run in the tests (None: it runs)."""
    for start, reason in NOT_RUN.items():
        if command.startswith(start):
            return reason
    return None


@pytest.fixture
def reader_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with the bundled photos and cam.py, as in the repository."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "cam.py").symlink_to(ROOT / "cam.py")
    monkeypatch.chdir(tmp_path)
    return tmp_path


PYTHON_PAGES = [page for page in pages() if blocks(page, "python")]
SHELL_PAGES = [page for page in pages() if blocks(page, "bash")]


def test_pages_use_labelled_fences() -> None:
    """Every fence names its language, so none hides code that the tests do not run."""
    bad = [
        f"{page.relative_to(ROOT)}: ```{lang or '(none)'}"
        for page in pages()
        for lang, _ in FENCE.findall(page.read_text(encoding="utf-8"))
        if lang not in LANGUAGES
    ]
    assert not bad, f"label these fences with one of {sorted(LANGUAGES)}: {bad}"


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_python_blocks_run(page: Path, reader_directory: Path) -> None:
    """The page's Python blocks, in order, in one namespace."""
    namespace: Dict[str, object] = {"__name__": "__docs__"}
    torch.manual_seed(0)
    for index, block in enumerate(blocks(page, "python")):
        for old, new, _ in SUBSTITUTIONS:
            block = block.replace(old, new)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pages show what the library warns about
            exec(compile(block, f"{page.name} (python block {index + 1})", "exec"), namespace)  # noqa: S102


@pytest.mark.parametrize("page", SHELL_PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_shell_blocks_run(page: Path, reader_directory: Path) -> None:
    """The page's cam.py commands exit with 0; the others are listed with their reason."""
    from pytorch_grad_cam.cli import main
    from pytorch_grad_cam.cli.arguments import build_parser
    from pytorch_grad_cam.cli.detector_zoo import DETECTORS
    from pytorch_grad_cam.cli.model_zoo import MODELS
    from pytorch_grad_cam.explorer.command import build_parser as explore_parser

    parser = build_parser(MODELS, "resnet50", None, "cam.py", DETECTORS)
    for block in blocks(page, "bash"):
        for command in shell_commands(block):
            arguments = cam_arguments(command)
            reason = not_run_reason(command)
            if arguments and arguments[0] == "explore":
                # The explorer's page serves until stopped (tests/test_explorer_browser.py
                # starts it in a browser): its options are parsed, the page is not started.
                explore_parser().parse_args(arguments[1:])
                continue
            if arguments is None:
                assert reason is not None, f"{page.name}: {command!r} is not a cam.py command: list it in NOT_RUN"
                continue
            parser.parse_args(arguments)  # every option named exists
            if reason is None:
                assert main(arguments) == 0, f"{page.name}: {command!r} failed"
    assert os.getcwd() == str(reader_directory)
