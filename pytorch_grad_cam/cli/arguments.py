"""The command line's arguments (cam.py, the console script and the usage examples)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, Optional

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.cli.jobs import CLIError
from pytorch_grad_cam.cli.metrics import METRICS, parse_metric_names
from pytorch_grad_cam.cli.model_zoo import ModelEntry

__all__ = ["DEBUG_VARIABLE", "build_parser"]

DEBUG_VARIABLE = "PYTORCH_GRAD_CAM_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (a CLIError) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{message} (see --help)", code=2)


# ----------------------------------------------------------------- arguments
def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: the text as a whole number of at least ``minimum``.

    The returned function raises argparse.ArgumentTypeError naming the bad text or value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser(
    models: Dict[str, ModelEntry], default_model: str, description: Optional[str] = None, prog: Optional[str] = None
) -> argparse.ArgumentParser:
    """The arguments of cam.py and the usage examples (the README's, plus model options)."""
    parser = _Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--image-path", type=Path, metavar="PATH", help="the photo to explain")
    inputs.add_argument(
        "--image-dir",
        type=Path,
        metavar="DIR",
        help="explain every image under DIR (recursive; jpg, jpeg, png, bmp, webp) into "
        "--output-dir, mirroring its tree, with results.csv; resumable; runs under torchrun",
    )
    parser.add_argument(
        "--method",
        default="gradcam",
        metavar="NAME",
        help=f"the CAM method: {', '.join(METHODS)} (default: gradcam); with --image-dir, several: a,b,c",
    )
    parser.add_argument(
        "--model", default=default_model, metavar="NAME", help=f"{', '.join(models)} (default: {default_model})"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        metavar="PATH",
        help="a state dict (torch.save(model.state_dict(), PATH)) to load instead of the pretrained weights",
    )
    parser.add_argument(
        "--target-layer",
        metavar="NAME",
        help="dotted name of the layer to explain, as in model.named_modules() (e.g. layer4.2); default: per model",
    )
    parser.add_argument(
        "--category",
        metavar="K",
        help="ImageNet class to explain: an index (281) or a name (tabby); default: the top prediction",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=Path("."), metavar="DIR", help="where to write the pictures (default: .)"
    )
    _add_run_options(parser)
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """How the maps are computed and shown: smoothing, metrics, batches, device, output."""
    parser.add_argument(
        "--aug-smooth",
        "--aug_smooth",
        dest="aug_smooth",
        action="store_true",
        help="test-time augmentation smoothing (6x the work)",
    )
    parser.add_argument(
        "--eigen-smooth",
        "--eigen_smooth",
        dest="eigen_smooth",
        action="store_true",
        help="first-principal-component smoothing",
    )
    parser.add_argument(
        "--metrics",
        type=parse_metric_names,
        metavar="NAMES",
        help=f"after the pictures, print how faithful the map is: comma-separated, "
        f"from {', '.join(METRICS)}, or all (scores the class's softmax probability; "
        f"ROAD's noise is seeded, so the numbers repeat)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="perturbed copies per forward pass for scorecam/ablationcam and --metrics; "
        "with --image-dir also images per CAM call (default: 32)",
    )
    parser.add_argument(
        "--num-workers",
        type=_non_negative_int,
        default=2,
        metavar="N",
        help="with --image-dir: processes that read and resize the images while the model "
        "runs (0: the main process; default: 2)",
    )
    parser.add_argument("--device", metavar="DEV", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument(
        "--use-cuda",
        "--use_cuda",
        dest="use_cuda",
        action="store_true",
        help="use CUDA if there is one (otherwise says so and runs on the CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show the full traceback of an unexpected error (or set {DEBUG_VARIABLE}=1)",
    )
