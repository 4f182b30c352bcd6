"""``pytorch-grad-cam explore``: its arguments, the user's model file, and the start of
the page. Gradio is imported here only when the page is started, so that ``--help`` and
a missing gradio both answer without it."""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from pytorch_grad_cam.explorer.models import REGISTERED

__all__ = ["build_parser", "load_models_file", "main"]

INSTALL_HINT = 'the explorer needs gradio: pip install "grad-cam[explore]"'


class ExploreError(Exception):
    """A user error of ``explore``, printed as one line."""


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The arguments of ``pytorch-grad-cam explore``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Start the explorer: a local web page (offline) to choose a photo, a model, a layer, "
        "methods and a class, and see the maps, their metrics and the code that reproduces them.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1, this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860, help="the port (default: 7860; 0: a free one)")
    parser.add_argument(
        "--models",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.py",
        help="a Python file that calls pytorch_grad_cam.explorer.register_model(...) (may be repeated)",
    )
    parser.add_argument(
        "--model",
        default="efficientnet_lite0",
        help='the model chosen when the page opens (a detector: "detector: ssdlite"; CLIP: "clip: ViT-B-32")',
    )
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    return parser


def load_models_file(path: Path) -> List[str]:
    """Import the user's file ``path`` (its ``register_model`` calls run), as a module named
    after the file, its folder first on sys.path so that it can import its neighbours.

    Returns:
        The names the file registered.

    Raises:
        ExploreError: for a missing file or one that fails to import (with the error, one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ExploreError(f"--models {path}: no such file")
    before = set(REGISTERED)
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's code: any error, reported in one line
        raise ExploreError(f"--models {path}: {type(error).__name__}: {' '.join(str(error).split())}") from None
    return sorted(set(REGISTERED) - before) or sorted(REGISTERED)


def free_port(host: str) -> int:
    """A port of ``host`` that nothing listens on now (for ``--port 0``)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def main(argv: Optional[Sequence[str]] = None, prog: str = "pytorch-grad-cam explore") -> int:
    """Parse ``argv`` and serve the explorer until interrupted; the exit code (2 for a
    usage error, 1 for a missing gradio or a failing models file)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    try:
        for path in args.models:
            load_models_file(path)
        from pytorch_grad_cam.explorer.detections import offered_models  # torchvision's detection parts

        if args.model not in offered_models():
            raise ExploreError(f"--model {args.model!r} is not offered; choose one of {', '.join(offered_models())}")
        try:
            from pytorch_grad_cam.explorer.app import THEME, build_app
        except ModuleNotFoundError as error:
            if error.name != "gradio":
                raise
            raise ExploreError(INSTALL_HINT) from None
    except ExploreError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    demo = build_app(args.model)
    try:
        demo.queue().launch(
            server_name=args.host,
            server_port=args.port or free_port(args.host),
            share=False,
            inbrowser=not args.no_browser,
            theme=THEME,
            footer_links=[],
        )
    except KeyboardInterrupt:
        return 130
    return 0
