"""The command line behind ``cam.py``, the ``pytorch-grad-cam`` console script and the
usage examples, and the photo-level steps they share with the docs' grid script: read a
photo, make the model's input, predict, compute a CAM for one class, guided
backpropagation, and write the pictures.

Every mistake a user can make on the command line (a missing or unreadable photo, an
unknown method, model, layer or class, weights that cannot be had) ends in one line on
stderr and a non-zero exit code, never a traceback. So does any other exception raised
by the model or the library (exit code 1); ``--debug`` (or the environment variable
``PYTORCH_GRAD_CAM_DEBUG=1``) lets it propagate with its traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.perturbation_cam import PerturbationCAM
from pytorch_grad_cam.cli.metrics import METRICS, compute_metrics, metric_lines, parse_metric_names
from pytorch_grad_cam.cli.model_zoo import (
    MODELS,
    ModelEntry,
    WeightsMismatch,
    WeightsUnavailable,
    imagenet_classes,
    layer_name,
    load_model,
)
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.registry import METHODS, get_method
from pytorch_grad_cam.utils.image import deprocess_image, preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

TOP_K = 5
DEBUG_VARIABLE = "PYTORCH_GRAD_CAM_DEBUG"

#: The ``--help`` text of cam.py and the console script.
DESCRIPTION = """Explain what an ImageNet classifier sees in a photo: a CAM overlay, guided
backpropagation, and both combined.

    pytorch-grad-cam --image-path <path> --method <method> [--use-cuda] [--aug-smooth] [--eigen-smooth]
    python cam.py --image-path examples/cat.jpg --model efficientnet_lite0   # offline, pretrained
    python cam.py --image-dir photos --method gradcam,eigencam --output-dir out   # a whole folder
    torchrun --nproc-per-node 2 cam.py --image-dir photos --output-dir out      # in two processes

With --image-path, writes <method>_cam.jpg, <method>_gb.jpg and <method>_cam_gb.jpg (the photo's size)
into --output-dir and prints the model's top-5 classes. Methods: every name in
pytorch_grad_cam.METHODS. Models: pytorch_grad_cam.cli.model_zoo.MODELS.
With --image-dir, writes for each image sub/a.jpg: sub/a.thumb.jpg, sub/a.<method>.jpg
(the overlay) and sub/a.<method>.npz (the map), and results.csv; a run started again
with the same arguments skips what is done.
"""


class CLIError(Exception):
    """A user error, reported as one line on stderr with exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))  # one line, whatever the source said
        self.code = code


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
    inputs.add_argument("--image-dir", type=Path, metavar="DIR",
                        help="explain every image under DIR (recursive; jpg, jpeg, png, bmp, webp) into "
                             "--output-dir, mirroring its tree, with results.csv; resumable; runs under torchrun")
    parser.add_argument(
        "--method", default="gradcam", metavar="NAME",
        help=f"the CAM method: {', '.join(METHODS)} (default: gradcam); with --image-dir, several: a,b,c",
    )
    parser.add_argument(
        "--model", default=default_model, metavar="NAME", help=f"{', '.join(models)} (default: {default_model})"
    )
    parser.add_argument(
        "--weights", type=Path, metavar="PATH", help="a state dict (torch.save(model.state_dict(), PATH)) to load instead of the pretrained weights"
    )
    parser.add_argument(
        "--target-layer", metavar="NAME", help="dotted name of the layer to explain, as in model.named_modules() (e.g. layer4.2); default: per model"
    )
    parser.add_argument(
        "--category", metavar="K", help="ImageNet class to explain: an index (281) or a name (tabby); default: the top prediction"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("."), metavar="DIR", help="where to write the pictures (default: .)")
    parser.add_argument("--aug-smooth", "--aug_smooth", dest="aug_smooth", action="store_true",
                        help="test-time augmentation smoothing (6x the work)")
    parser.add_argument("--eigen-smooth", "--eigen_smooth", dest="eigen_smooth", action="store_true",
                        help="first-principal-component smoothing")
    parser.add_argument("--metrics", type=parse_metric_names, metavar="NAMES",
                        help=f"after the pictures, print how faithful the map is: comma-separated, "
                             f"from {', '.join(METRICS)}, or all (scores the class's softmax probability; "
                             f"ROAD's noise is seeded, so the numbers repeat)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                        help="perturbed copies per forward pass for scorecam/ablationcam and --metrics; "
                             "with --image-dir also images per CAM call (default: 32)")
    parser.add_argument("--num-workers", type=_non_negative_int, default=2, metavar="N",
                        help="with --image-dir: processes that read and resize the images while the model "
                             "runs (0: the main process; default: 2)")
    parser.add_argument("--device", metavar="DEV", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--use-cuda", "--use_cuda", dest="use_cuda", action="store_true",
                        help="use CUDA if there is one (otherwise says so and runs on the CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an unexpected error (or set {DEBUG_VARIABLE}=1)")
    return parser


def choose_device(device: Optional[str], use_cuda: bool) -> torch.device:
    """``--device`` if given (it must work), else CUDA for ``--use-cuda`` where available, else the CPU.

    Raises:
        CLIError: if ``device`` is not a usable torch device.
    """
    if device is None:
        if use_cuda and not torch.cuda.is_available():
            note("--use-cuda: CUDA is not available on this machine; running on the CPU")
        return torch.device("cuda" if use_cuda and torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
        torch.empty(1, device=chosen)
    except (RuntimeError, AssertionError) as error:
        raise CLIError(f"--device {device}: not usable here ({error}); use --device cpu") from None
    return chosen


def note(message: str) -> None:
    """One informational line on stderr."""
    print(f"note: {message}", file=sys.stderr)


# ----------------------------------------------------------------- photos and classes
def read_photo(path: Path) -> np.ndarray:
    """The photo at ``path`` as an RGB float32 (H, W, 3) array in [0, 1].

    Raises:
        CLIError: if the file is missing, unreadable, or not an image OpenCV can decode.
    """
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path} is a directory, not a photo")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise CLIError(f"{path}: cannot read it ({error.strerror or error})") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise CLIError(f"{path} is not an image that OpenCV can read (JPEG, PNG, BMP, TIFF, WebP, ...)")
    return np.float32(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)) / 255


def model_input(photo: np.ndarray, entry: ModelEntry) -> torch.Tensor:
    """The whole photo resized to the model's input size and normalised: (1, 3, h, w).
    Resizing (not cropping) keeps all of the photo in the explanation."""
    height, width = entry.input_size
    resized = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
    return preprocess_image(resized, mean=entry.mean, std=entry.std)


def resize_to(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``image`` (h, w) or (h, w, C) resized bilinearly to ``size`` = (height, width)."""
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def resolve_category(text: Optional[str]) -> Optional[int]:
    """``--category``: None, an index, or an ImageNet class name (case-insensitive).

    Raises:
        CLIError: for a name that is not one class (with the closest names).
    """
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = imagenet_classes()
    classes = [name.lower() for name in names]
    exact = [index for index, name in enumerate(names) if name == text]
    matches = exact or [index for index, name in enumerate(classes) if name == text.lower()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CLIError(f"--category {text!r} names several ImageNet classes ({matches}); pass the index")
    close = difflib.get_close_matches(text.lower(), classes, n=3, cutoff=0.6)
    hint = f"; did you mean {' / '.join(repr(name) for name in close)}?" if close else "; pass an index 0-999"
    raise CLIError(f"--category {text!r} is not an ImageNet class name{hint}")


def class_label(index: int, classes: int) -> str:
    """'tabby (281)' for ImageNet outputs, 'class 3' otherwise."""
    if classes == 1000:
        return f"{imagenet_classes()[index]} ({index})"
    return f"class {index}"


def predict(model: nn.Module, input_tensor: torch.Tensor) -> torch.Tensor:
    """Class probabilities (C,) for a one-image input.

    Raises:
        CLIError: if the model does not return (1, C) class scores.
    """
    with torch.no_grad():
        logits = model(input_tensor)
    if not torch.is_tensor(logits) or logits.ndim != 2:
        raise CLIError("the model does not return (1, classes) scores; cam.py explains classifiers")
    return logits[0].float().softmax(dim=0).cpu()


def top_predictions(probabilities: torch.Tensor, k: int = TOP_K) -> List[Tuple[int, float]]:
    """The ``k`` most probable classes as (index, probability), best first."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [(int(index), float(value)) for value, index in zip(values, indices)]


# ----------------------------------------------------------------- model and layer
def select_layer(model: nn.Module, entry: ModelEntry, name: Optional[str]) -> Tuple[nn.Module, str]:
    """The layer named ``name`` (dotted, as in named_modules), or the entry's default.

    Raises:
        CLIError: for a name that is not a module of the model (with the closest names).
    """
    if name is None:
        layer = entry.target_layer(model)
        return layer, layer_name(model, layer)
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name], name
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
    hint = f"did you mean {' / '.join(close)}?" if close else "see model.named_modules()"
    raise CLIError(f"--target-layer {name!r} is not a layer of this model; {hint}")


def build_model(
    name: str, entry: ModelEntry, weights: Optional[Path], progress: bool
) -> nn.Module:
    """:func:`load_model`, with every way it can fail turned into one CLIError line."""
    if weights is not None and not Path(weights).is_file():
        raise CLIError(f"--weights {weights}: no such file")
    try:
        model = load_model(entry, name, weights, progress)
    except WeightsUnavailable as error:
        raise CLIError(
            f"{error}. To run offline use --model efficientnet_lite0 (its ImageNet weights come "
            f"with a pip package) or --weights PATH to a {name} state dict"
        ) from None
    except WeightsMismatch as error:
        raise CLIError(f"--weights: {error}") from None
    except OSError as error:
        raise CLIError(f"--weights {weights}: cannot read it ({error})") from None
    except ModuleNotFoundError as error:
        raise CLIError(
            f"--model {name} needs the Python module {error.name!r}: pip install \"grad-cam[demo]\""
        ) from None
    if weights is None and entry.pretrained is None:
        note(f"{name} has random weights (no trained weights offline); pass --weights PATH for trained ones")
    return model


# ----------------------------------------------------------------- the maps
def compute_cam(
    method_name: str,
    model: nn.Module,
    target_layer: nn.Module,
    input_tensor: torch.Tensor,
    category: int,
    *,
    reshape_transform=None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """The CAM (h, w) in [0, 1] of ``category`` for a one-image ``input_tensor``, at its size.

    Raises:
        ValueError: for an unknown method, and the method's own argument errors.
    """
    method = get_method(method_name)
    options = {"batch_size": batch_size, "progress": progress} if issubclass(method, PerturbationCAM) else {}
    with method(model, [target_layer], reshape_transform, **options) as cam:
        maps = cam(
            input_tensor,
            targets=[ClassifierOutputTarget(category)],
            aug_smooth=aug_smooth,
            eigen_smooth=eigen_smooth,
        )
    return maps[0]


def guided_backprop(model: nn.Module, input_tensor: torch.Tensor, category: int) -> np.ndarray:
    """The guided-backpropagation gradient (h, w, 3) of ``category`` for one image."""
    return GuidedBackpropReLUModel(model)(input_tensor, target_category=category)


def write_image(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image (JPEG/PNG by suffix).

    Raises:
        CLIError: if it cannot be encoded or written.
    """
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    ok, encoded = cv2.imencode(path.suffix, bgr)
    if not ok:
        raise CLIError(f"cannot encode {path}")
    try:
        path.write_bytes(encoded.tobytes())
    except OSError as error:
        raise CLIError(f"cannot write {path} ({error.strerror or error})") from None


# ----------------------------------------------------------------- the program
def cam_overlay(photo: np.ndarray, grayscale: np.ndarray) -> np.ndarray:
    """The CAM ``grayscale`` (any size) as a heatmap over ``photo`` (RGB float), at the photo's size."""
    return show_cam_on_image(photo, np.clip(resize_to(grayscale, photo.shape[:2]), 0, 1), use_rgb=True)


def make_pictures(photo: np.ndarray, grayscale: np.ndarray, gradient: np.ndarray) -> Dict[str, np.ndarray]:
    """The three RGB pictures at the photo's size, from the CAM and the guided gradient
    at the model's input size: "cam" (overlay), "gb" (guided backprop), "cam_gb" (both)."""
    cam_mask = np.clip(resize_to(grayscale, photo.shape[:2]), 0, 1)
    gradient = resize_to(gradient, photo.shape[:2])
    return {
        "cam": show_cam_on_image(photo, cam_mask, use_rgb=True),
        "gb": deprocess_image(gradient),
        "cam_gb": deprocess_image(cam_mask[..., None] * gradient),
    }


def save_pictures(output_dir: Path, method_name: str, pictures: Dict[str, np.ndarray]) -> List[Path]:
    """Write ``<method>_<kind>.jpg`` for each picture into ``output_dir`` (created if needed).

    Raises:
        CLIError: if the folder or a file cannot be written.
    """
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CLIError(f"--output-dir {output_dir}: cannot create it ({error.strerror or error})") from None
    paths = []
    for kind, picture in pictures.items():
        paths.append(output_dir / f"{method_name}_{kind}.jpg")
        write_image(paths[-1], picture)
    return paths


def print_predictions(model_name: str, image_path: Path, photo: np.ndarray, probabilities: torch.Tensor) -> None:
    """The top-5 classes with their probabilities, on stdout."""
    classes = probabilities.numel()
    print(f"{model_name} on {image_path} ({photo.shape[1]}x{photo.shape[0]}), top-{TOP_K} classes:")
    for rank, (index, probability) in enumerate(top_predictions(probabilities), start=1):
        print(f"  {rank}. {class_label(index, classes):<40} {100 * probability:5.1f}%")


def run(args: argparse.Namespace, models: Dict[str, ModelEntry]) -> None:
    """Explain one photo as the arguments say: print the top classes, write the three pictures
    (with ``--image-dir``: every image of a folder, see :mod:`pytorch_grad_cam.cli.folder`).
    Everything that can be checked before building the model is checked first.

    Raises:
        CLIError: on any user error.
    """
    if args.image_dir is not None:
        from pytorch_grad_cam.cli.folder import run_folder

        return run_folder(args, models)
    if "," in args.method:
        raise CLIError(f"--method {args.method}: one method per photo; several (a,b) work with --image-dir", code=2)
    try:
        get_method(args.method)
    except ValueError as error:
        raise CLIError(f"--method: {error}", code=2) from None
    if args.model not in models:
        raise CLIError(f"--model {args.model!r} is not one of {', '.join(models)}", code=2)
    entry = models[args.model]
    method_name = args.method.lower()
    photo = read_photo(args.image_path)
    requested = resolve_category(args.category)
    device = choose_device(args.device, args.use_cuda)
    progress = not args.no_progress

    model = build_model(args.model, entry, args.weights, progress).to(device)
    layer, layer_path = select_layer(model, entry, args.target_layer)
    input_tensor = model_input(photo, entry).to(device)
    probabilities = predict(model, input_tensor)
    classes = probabilities.numel()
    if requested is not None and not 0 <= requested < classes:
        raise CLIError(f"--category {requested} is outside the model's {classes} classes (0-{classes - 1})")
    print_predictions(args.model, args.image_path, photo, probabilities)
    category = requested if requested is not None else top_predictions(probabilities, 1)[0][0]
    smoothing = [name for name, on in (("aug smooth", args.aug_smooth), ("eigen smooth", args.eigen_smooth)) if on]
    print(f"{method_name} at layer {layer_path} for {class_label(category, classes)}"
          + (f", with {' + '.join(smoothing)}" if smoothing else ""))

    try:
        grayscale = compute_cam(
            method_name, model, layer, input_tensor, category,
            reshape_transform=entry.reshape_transform, aug_smooth=args.aug_smooth,
            eigen_smooth=args.eigen_smooth, batch_size=args.batch_size, progress=progress,
        )
        gradient = guided_backprop(model, input_tensor, category)
    except (ValueError, TypeError, IndexError) as error:  # the library's argument checks
        raise CLIError(f"{method_name} at layer {layer_path}: {error}") from None
    except torch.cuda.OutOfMemoryError:
        raise CLIError("out of GPU memory; try a smaller --batch-size or --device cpu") from None
    paths = save_pictures(args.output_dir, method_name, make_pictures(photo, grayscale, gradient))
    print(f"wrote {', '.join(str(path) for path in paths)}")
    if args.metrics:
        print_metrics(args.metrics, model, input_tensor, grayscale, category, classes, args.batch_size)


def print_metrics(
    names: List[str], model: nn.Module, input_tensor: torch.Tensor, grayscale: np.ndarray, category: int,
    classes: int, batch_size: int,
) -> None:
    """``--metrics``: a heading, then one line per metric of the map, on stdout.

    Raises:
        CLIError: if a metric rejects its input (a model that is not a classifier, say).
    """
    try:
        values = compute_metrics(names, model, input_tensor, grayscale, category, batch_size)
    except (ValueError, TypeError, IndexError) as error:
        raise CLIError(f"--metrics: {error}") from None
    except torch.cuda.OutOfMemoryError:
        raise CLIError("--metrics: out of GPU memory; try a smaller --batch-size or --device cpu") from None
    print(f"metrics of the map (score: the softmax probability of {class_label(category, classes)}):")
    for line in metric_lines(values):
        print(line)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(
    argv: Optional[Sequence[str]] = None,
    *,
    models: Optional[Dict[str, ModelEntry]] = None,
    default_model: str = "resnet50",
    description: Optional[str] = DESCRIPTION,
    prog: Optional[str] = None,
) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and explain the photo; the exit code.

    Args:
        models: the models ``--model`` chooses from (default: :data:`MODELS`).
        default_model: the model used without ``--model``.
        description: the ``--help`` text.
        prog: the program name in messages (default: the script's name).
    """
    models = MODELS if models is None else models
    parser = build_parser(models, default_model, description, prog)
    args = None
    try:
        with warnings.catch_warnings():  # restores showwarning when done
            warnings.showwarning = _one_line_warning
            try:
                args = parser.parse_args(argv)
            except SystemExit as done:  # --help, printed by argparse (its errors are CLIErrors)
                return int(done.code or 0)
            run(args, models)
    except CLIError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the model's or the library's: one line unless debugging
        if (args is not None and args.debug) or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0"):
            raise
        message = " ".join(str(error).split()) or "(no message)"
        print(f"{parser.prog}: error: {type(error).__name__}: {message} (--debug shows the traceback)",
              file=sys.stderr)
        return 1
    return 0
