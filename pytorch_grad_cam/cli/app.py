"""The command line behind ``cam.py``, the ``pytorch-grad-cam`` console script and the
usage examples: the arguments, the run from one photo to its pictures (``--image-dir``
hands over to :mod:`pytorch_grad_cam.cli.folder`), and the one-line errors. The steps it
shares with folder mode (reading a photo, the model's input, the model and its layer,
the class probabilities and labels) live in :mod:`pytorch_grad_cam.cli.jobs`; this
module re-exports those that ``docs/make_grid.py`` and the tests use
(``read_photo``, ``model_input``, ``predict``, ``select_layer``, ``cam_overlay``, ...).

Every mistake a user can make on the command line (a missing, unreadable or truncated
photo, an unknown method, model, layer or class, weights that cannot be had) ends in one
line on stderr and a non-zero exit code, never a traceback. So does any other exception
raised by the model or the library (exit code 1); ``--debug`` (or the environment
variable ``PYTORCH_GRAD_CAM_DEBUG=1``) lets it propagate with its traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import GuidedBackpropReLUModel
from pytorch_grad_cam.cli.arguments import DEBUG_VARIABLE, build_parser, parse_arguments
from pytorch_grad_cam.cli.detect import run_detection
from pytorch_grad_cam.cli.detector_zoo import DETECTORS, DetectorEntry
from pytorch_grad_cam.cli.folder import run_detection_folder, run_folder
from pytorch_grad_cam.cli.jobs import (
    CLIError,
    build_model,
    cam_overlay,
    check_category,
    check_method,
    choose_device,
    class_label,
    encode_image,
    make_cam,
    model_entry,
    model_input,
    predict,
    read_photo,
    resize_to,
    resolve_category,
    select_layer,
)
from pytorch_grad_cam.cli.metrics import compute_metrics, metric_lines
from pytorch_grad_cam.cli.model_zoo import MODELS, ModelEntry, ReshapeTransform, layer_name, load_model
from pytorch_grad_cam.cli.prompts import run_prompts
from pytorch_grad_cam.cli.video import run_video, wants_video
from pytorch_grad_cam.utils.image import deprocess_image, preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

__all__ = [
    "DESCRIPTION",
    "CLIError",
    "build_parser",
    "main",
    "run",
    "compute_cam",
    "guided_backprop",
    "make_pictures",
    "save_pictures",
    "top_predictions",
    # re-exported from jobs, model_zoo and utils.image for docs/make_grid.py, benchmarks/bench.py and the tests
    "MODELS",
    "ModelEntry",
    "cam_overlay",
    "class_label",
    "layer_name",
    "load_model",
    "model_input",
    "predict",
    "preprocess_image",
    "read_photo",
    "resolve_category",
    "select_layer",
]

TOP_K = 5

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

A map for every detected object (--detector; no --image-path: the bundled examples/cat.jpg):
    python cam.py --detector retinanet --image-size 320 --max-detections 3     # random weights
    python cam.py --detector fasterrcnn --weights fasterrcnn_resnet50_fpn_coco-258fb6c6.pth \
        --image-path photo.jpg --method hirescam
    python cam.py --detector yolov8n --image-dir photos --output-dir out       # a whole folder
writes <method>_detections.jpg (the photo, each box with its class, score and map) and
<method>_detections.npz (boxes, labels, names, scores, maps) and prints one line per box.
Without --weights the detector has random weights: its boxes and maps mean nothing.

One map per text prompt (--clip, an open_clip model; no --image-path: examples/cat.jpg):
    python cam.py --clip ViT-B-32 --prompts "a photo of a cat,a photo of a dog"   # random weights
writes <method>_prompts.jpg and <method>_prompts.npz and prints each prompt's cosine.

A video model, window by window over time (--video-model; no --video-path: a generated clip):
    python cam.py --video-model r3d_18 --method gradcam                         # random weights
    python cam.py --video-path clip.mp4 --weights r3d_18-b3b3357e.pth --window 16 --video-format mp4
    python cam.py --video-path videos --output-dir out                          # a whole folder
writes <method>_video.gif (each frame with its map) and <method>_video.npz (the maps) and
prints each window's top Kinetics-400 class. Random weights explain nothing.
"""


# ----------------------------------------------------------------- the classes and the maps
def top_predictions(probabilities: torch.Tensor, k: int = TOP_K) -> List[Tuple[int, float]]:
    """The ``k`` most probable classes as (index, probability), best first."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [(int(index), float(value)) for value, index in zip(values, indices)]


def compute_cam(
    method_name: str,
    model: nn.Module,
    target_layer: nn.Module,
    input_tensor: torch.Tensor,
    category: int,
    *,
    reshape_transform: Optional[ReshapeTransform] = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """The CAM (h, w) in [0, 1] of ``category`` for a one-image ``input_tensor``, at its size.

    Raises:
        ValueError: for an unknown method, and the method's own argument errors.
    """
    with make_cam(method_name, model, target_layer, reshape_transform, batch_size=batch_size, progress=progress) as cam:
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
    encoded = encode_image(rgb, path.suffix)
    try:
        path.write_bytes(encoded)
    except OSError as error:
        raise CLIError(f"cannot write {path} ({error.strerror or error})") from None


# ----------------------------------------------------------------- the program
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


#: The options that only --detector reads.
DETECTOR_OPTIONS = {"image_size": "--image-size", "confidence": "--confidence", "max_detections": "--max-detections"}


def run(
    args: argparse.Namespace, models: Dict[str, ModelEntry], detectors: Optional[Dict[str, DetectorEntry]] = None
) -> None:
    """Explain one photo as the arguments say: print the top classes, write the three pictures
    (with ``--image-dir``: every image of a folder, see :mod:`pytorch_grad_cam.cli.folder`;
    with ``--detector``: every detected object, see :mod:`pytorch_grad_cam.cli.detect`;
    with ``--clip``: one map per text prompt, see :mod:`pytorch_grad_cam.cli.prompts`).
    Everything that can be checked before building the model is checked first.

    Raises:
        CLIError: on any user error.
    """
    explicit = getattr(args, "explicit", frozenset())  # the options given (arguments.parse_arguments)
    if wants_video(args):
        run_video(args, explicit)
        return None
    if args.clip is not None or args.prompts is not None:
        if args.detector is not None:
            raise CLIError("--clip and --detector are two tasks; pass one of them", code=2)
        run_prompts(args)
        return None
    if args.detector is not None:
        detectors = DETECTORS if detectors is None else detectors
        if args.image_dir is not None:
            return run_detection_folder(args, detectors, explicit)
        return run_detection(args, detectors, explicit)
    for dest, flag in DETECTOR_OPTIONS.items():
        if dest in explicit:
            raise CLIError(f"{flag} applies only with --detector NAME", code=2)
    if args.image_path is None and args.image_dir is None:
        raise CLIError("one of the arguments --image-path --image-dir is required (see --help)", code=2)
    if args.image_dir is not None:
        return run_folder(args, models)
    if "," in args.method:
        raise CLIError(f"--method {args.method}: one method per photo; several (a,b) work with --image-dir", code=2)
    method_name = check_method(args.method)
    entry = model_entry(models, args.model)
    photo = read_photo(args.image_path)
    requested = resolve_category(args.category)
    device = choose_device(args.device, args.use_cuda)
    progress = not args.no_progress

    model = build_model(args.model, entry, args.weights, progress).to(device)
    layer, layer_path = select_layer(model, entry, args.target_layer)
    input_tensor = model_input(photo, entry).to(device)
    probabilities = predict(model, input_tensor)
    classes = probabilities.numel()
    check_category(requested, classes)
    print_predictions(args.model, args.image_path, photo, probabilities)
    category = requested if requested is not None else top_predictions(probabilities, 1)[0][0]
    smoothing = [name for name, on in (("aug smooth", args.aug_smooth), ("eigen smooth", args.eigen_smooth)) if on]
    print(
        f"{method_name} at layer {layer_path} for {class_label(category, classes)}"
        + (f", with {' + '.join(smoothing)}" if smoothing else "")
    )

    try:
        grayscale = compute_cam(
            method_name,
            model,
            layer,
            input_tensor,
            category,
            reshape_transform=entry.reshape_transform,
            aug_smooth=args.aug_smooth,
            eigen_smooth=args.eigen_smooth,
            batch_size=args.batch_size,
            progress=progress,
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
    names: List[str],
    model: nn.Module,
    input_tensor: torch.Tensor,
    grayscale: np.ndarray,
    category: int,
    classes: int,
    batch_size: int,
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
    detectors: Optional[Dict[str, DetectorEntry]] = None,
) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and explain the photo; the exit code.

    Args:
        models: the models ``--model`` chooses from (default: :data:`MODELS`).
        detectors: the detectors ``--detector`` chooses from (default: the detector zoo,
            :data:`pytorch_grad_cam.cli.detector_zoo.DETECTORS`).
        default_model: the model used without ``--model``.
        description: the ``--help`` text.
        prog: the program name in messages (default: the script's name).

    ``explore`` as the first argument starts the browser explorer instead
    (:mod:`pytorch_grad_cam.explorer.command`, ``explore --help``).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["explore"]:  # the browser explorer, imported (with gradio) only when asked for
        from pytorch_grad_cam.explorer.command import main as explore

        return explore(arguments[1:], prog=f"{prog or 'pytorch-grad-cam'} explore")
    models = MODELS if models is None else models
    detectors = DETECTORS if detectors is None else detectors
    parser = build_parser(models, default_model, description, prog, detectors)
    args = None
    try:
        with warnings.catch_warnings():  # restores showwarning when done
            warnings.showwarning = _one_line_warning
            try:
                args = parse_arguments(parser, argv)
            except SystemExit as done:  # --help, printed by argparse (its errors are CLIErrors)
                return int(done.code or 0)
            run(args, models, detectors)
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
        print(f"{parser.prog}: error: {type(error).__name__}: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0
