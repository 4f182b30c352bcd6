"""The command line's arguments (cam.py, the console script and the usage examples)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Optional, Sequence

from pytorch_grad_cam import METHODS
from pytorch_grad_cam.cli.detector_zoo import DETECTORS, DetectorEntry, package_installed
from pytorch_grad_cam.cli.jobs import CLIError
from pytorch_grad_cam.cli.metrics import METRICS, parse_metric_names
from pytorch_grad_cam.cli.model_zoo import ModelEntry
from pytorch_grad_cam.cli.prompts import add_prompt_options
from pytorch_grad_cam.cli.video import add_video_options

__all__ = ["DEBUG_VARIABLE", "build_parser", "parse_arguments"]

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


def _fraction(text: str) -> float:
    """An argparse ``type``: the text as a number in [0, 1].

    Raises:
        argparse.ArgumentTypeError: naming the bad text or value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value:g}")
    return value


#: A value no option has: an option that still holds it after parsing was not given.
_NOT_GIVEN = object()


def parse_arguments(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, plus ``explicit``: the names (dests) of the options
    given on the command line, default values included (``--model resnet50`` counts).

    Raises:
        CLIError: for a malformed command line (from the parser); SystemExit for --help.
    """
    # argparse fills in a default only where the namespace has no value yet: every option
    # starts as _NOT_GIVEN, and those still holding it get their defaults afterwards.
    actions = [action for action in parser._actions if action.dest != argparse.SUPPRESS]  # noqa: SLF001
    namespace = argparse.Namespace(**{action.dest: _NOT_GIVEN for action in actions})
    args = parser.parse_args(argv, namespace)
    explicit: FrozenSet[str] = frozenset(
        action.dest for action in actions if getattr(args, action.dest) is not _NOT_GIVEN
    )
    for action in actions:
        if getattr(args, action.dest) is _NOT_GIVEN:
            setattr(args, action.dest, action.default)
    args.explicit = explicit
    return args


def _detector_names(detectors: Dict[str, DetectorEntry]) -> str:
    """The --detector names for --help, grouped by package (those not installed marked)."""
    groups: Dict[str, list] = {}
    for name, entry in detectors.items():
        groups.setdefault(entry.package, []).append(name)
    return "; ".join(
        f"{', '.join(names)} ({package}{'' if package_installed(package) else ', NOT INSTALLED'})"
        for package, names in groups.items()
    )


def build_parser(
    models: Dict[str, ModelEntry],
    default_model: str,
    description: Optional[str] = None,
    prog: Optional[str] = None,
    detectors: Optional[Dict[str, DetectorEntry]] = None,
) -> argparse.ArgumentParser:
    """The arguments of cam.py and the usage examples (the README's, plus model and detector options).

    ``detectors``: the names ``--detector`` lists in --help (default: the detector zoo)."""
    parser = _Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # One of the two is required, except with --detector (which has a bundled photo):
    # the app checks it (app.run).
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument(
        "--image-path",
        type=Path,
        metavar="PATH",
        help="the photo to explain (with --detector or --clip, default: the bundled examples/cat.jpg)",
    )
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
    _add_detection_options(parser, DETECTORS if detectors is None else detectors)
    add_prompt_options(parser)
    add_video_options(parser)
    _add_run_options(parser)
    return parser


def _add_detection_options(parser: argparse.ArgumentParser, detectors: Dict[str, DetectorEntry]) -> None:
    """``--detector`` and the options only it reads."""
    group = parser.add_argument_group(
        "detectors (--detector; --model, --category, --metrics and smoothing do not apply)"
    )
    group.add_argument(
        "--detector",
        metavar="NAME",
        help=f"explain every detected object of a detector instead of a classifier: {_detector_names(detectors)}. "
        "Built with random weights (which explain nothing) unless --weights gives a state dict",
    )
    group.add_argument(
        "--image-size",
        type=_positive_int,
        metavar="N",
        help="the longer side of the detector's input, in pixels (the aspect ratio kept; default: per "
        "detector, 640 for YOLO and RT-DETR, 800 for torchvision's and DETR, 320 for SSDlite)",
    )
    group.add_argument(
        "--confidence",
        type=_fraction,
        metavar="C",
        help="the least confidence of a kept box (default: 0.25 with --weights, 0 with random weights)",
    )
    group.add_argument(
        "--max-detections",
        type=_positive_int,
        default=10,
        metavar="N",
        help="the most boxes explained per image, best first, after class-wise NMS (default: 10)",
    )


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
