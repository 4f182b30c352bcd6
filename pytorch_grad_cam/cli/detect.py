"""``cam.py --detector NAME``: one map per detected object, with the library's
:func:`~pytorch_grad_cam.detection.explain_detections`, for a photo (this module) or a
folder (:mod:`pytorch_grad_cam.cli.folder.detections`, which uses the steps here).

The photo is resized (its aspect ratio kept) so that its longer side is
``--image-size`` pixels, both sides rounded to the detector's stride where it has one;
the detector finds its boxes and explains each one at that size. The outputs are
mapped back onto the photo: ``<method>_detections.jpg`` is the photo at its own size
with every box, its class and score, and its map drawn inside it; the printed boxes are
in the photo's pixels; ``<method>_detections.npz`` holds both the photo's boxes and the
model's own (input pixels), and the maps at the model input's size, exactly as
``explain_detections`` returns them.

Without ``--weights`` the detector has random weights (seeded, so a run repeats), and
the command says loudly that its boxes and maps mean nothing.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import get_method
from pytorch_grad_cam.cli.detector_zoo import DetectorEntry, package_installed
from pytorch_grad_cam.cli.jobs import (
    CLIError,
    check_method,
    choose_device,
    encode_image,
    method_options,
    read_photo,
    resize_to,
    select_layer,
)
from pytorch_grad_cam.cli.model_zoo import ModelEntry, WeightsMismatch, layer_name, load_model
from pytorch_grad_cam.detection import Detection, as_detector, draw_detections, explain_detections

__all__ = [
    "BUNDLED_PHOTO",
    "INAPPLICABLE_OPTIONS",
    "RANDOM_WEIGHTS_CONFIDENCE",
    "TRAINED_CONFIDENCE",
    "check_detection_arguments",
    "check_input_fits",
    "class_names",
    "detection_lines",
    "detector_entry",
    "detector_input",
    "encode_detections",
    "explain_photo",
    "input_size",
    "label_name",
    "load_detector",
    "on_photo",
    "prepare_defaults",
    "run_detection",
    "target_layers",
]

#: The photo explained when ``--detector`` is given without --image-path or --image-dir.
BUNDLED_PHOTO = Path(__file__).resolve().parents[2] / "examples" / "cat.jpg"
#: ``--confidence``'s default with ``--weights``, and with random weights (whose
#: confidences are all tiny, so that a threshold would keep nothing).
TRAINED_CONFIDENCE = 0.25
RANDOM_WEIGHTS_CONFIDENCE = 0.0
#: The options of the classifier command that mean nothing to a detector: their
#: argparse names, and how the user wrote them.
INAPPLICABLE_OPTIONS = {
    "model": "--model",
    "category": "--category",
    "metrics": "--metrics",
    "aug_smooth": "--aug-smooth",
    "eigen_smooth": "--eigen-smooth",
}
_RANDOM_WEIGHTS_WARNING = (
    "WARNING: {name} has RANDOM weights (built from its configuration, seed 0): random weights "
    "explain nothing. Its boxes, scores and maps are meaningless and only show the mechanics; "
    "pass --weights PATH (a state dict of this architecture) to explain a trained {name}."
)


# ----------------------------------------------------------------- the command line
def detector_entry(detectors: Dict[str, DetectorEntry], name: str) -> DetectorEntry:
    """The entry of ``--detector name``.

    Raises:
        CLIError: (exit code 2) for an unknown name; (exit code 1) when the package that
            provides it is not installed, naming the package.
    """
    if name not in detectors:
        raise CLIError(f"--detector {name!r} is not one of {', '.join(detectors)}", code=2)
    entry = detectors[name]
    if not package_installed(entry.package):
        raise CLIError(
            f"--detector {name} needs the {entry.package} package, which is not installed: pip install {entry.package}"
        )
    return entry


def check_detection_arguments(args: argparse.Namespace, explicit: Sequence[str]) -> None:
    """Nothing if every option given on the command line (``explicit``: argparse names)
    applies to a detector.

    Raises:
        CLIError: (exit code 2) naming the first option that does not apply, or for
            (argparse checks the detector options' values).
    """
    for dest, flag in INAPPLICABLE_OPTIONS.items():
        if dest in explicit:
            raise CLIError(
                f"{flag} does not apply to --detector (it explains every detected box; "
                f"use --confidence and --max-detections to choose them)",
                code=2,
            )


def input_size(photo_size: Tuple[int, int], entry: DetectorEntry, image_size: int) -> Tuple[int, int]:
    """(height, width) of the model's input for a photo of ``photo_size`` (height, width):
    the longer side ``image_size``, the aspect ratio kept, both sides multiples of
    ``entry.multiple`` (at least one multiple)."""
    height, width = photo_size
    scale = image_size / max(height, width)
    multiple = entry.multiple
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (height, width))


def detector_input(photo: np.ndarray, entry: DetectorEntry, image_size: int) -> torch.Tensor:
    """The model's input (1, 3, h, w) for an RGB float photo in [0, 1]: resized with
    INTER_AREA to :func:`input_size`, normalised where the entry says so."""
    height, width = input_size(photo.shape[:2], entry, image_size)
    resized = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA)
    if entry.mean is not None:
        resized = (resized - np.float32(entry.mean)) / np.float32(entry.std)
    return torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)


# ----------------------------------------------------------------- the model
def _weights_hint(entry: DetectorEntry, name: str) -> str:
    if entry.package == "ultralytics":
        return (
            f"; an ultralytics checkpoint is not a state dict: save one with "
            f"torch.save(YOLO('{name}.pt').model.state_dict(), '{name}_state.pt')"
        )
    if entry.package == "transformers":
        return "; or pass the folder that save_pretrained wrote"
    return ""


def load_detector(
    name: str, entry: DetectorEntry, weights: Optional[Path], image_size: int, warn: bool = True
) -> nn.Module:
    """The detector in eval mode: its architecture with the state dict in ``weights``
    (for transformers also a ``save_pretrained`` folder), or with random weights (seed 0,
    the global random state left as it was) after an unmissable warning on stderr
    (unless not ``warn``: torchrun's other ranks).

    Raises:
        CLIError: for weights that are missing, unreadable or do not fit, and a missing
            Python module (naming it).
    """
    if weights is not None and not Path(weights).exists():
        raise CLIError(f"--weights {weights}: no such file")
    try:
        if weights is not None and Path(weights).is_dir():
            return _from_pretrained(entry, weights)
        architecture = ModelEntry(architecture=lambda: entry.architecture(image_size), target_layer=lambda m: m)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = load_model(architecture, name, weights, progress=False)
    except WeightsMismatch as error:
        raise CLIError(f"--weights: {error}{_weights_hint(entry, name)}") from None
    except OSError as error:
        raise CLIError(f"--weights {weights}: cannot read it ({error})") from None
    except ModuleNotFoundError as error:
        raise CLIError(f"--detector {name} needs the Python module {error.name!r}: pip install {error.name}") from None
    if weights is None and warn:
        print(_RANDOM_WEIGHTS_WARNING.format(name=name), file=sys.stderr)
    return model


def _from_pretrained(entry: DetectorEntry, folder: Path) -> nn.Module:
    """A transformers model from the ``save_pretrained`` ``folder`` (its own config and
    weights, offline).

    Raises:
        CLIError: if the detector is not a transformers one, or the folder holds no model.
    """
    if entry.pretrained_class is None:
        raise CLIError(f"--weights {folder} is a folder; this detector takes a state dict file")
    import transformers

    try:
        model = getattr(transformers, entry.pretrained_class).from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CLIError(f"--weights {folder}: not a {entry.pretrained_class} save_pretrained folder ({error})") from None
    return model.eval()


def class_names(model: nn.Module, entry: DetectorEntry) -> List[str]:
    """The model's class names: a transformers config's ``id2label`` where it has one
    (a ``save_pretrained`` folder brings its own), else the entry's."""
    labels = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(labels, dict) and labels:
        return [str(labels.get(index, index)) for index in range(max(labels) + 1)]
    return list(entry.class_names)


def target_layers(model: nn.Module, name: Optional[str]) -> Tuple[Optional[List[nn.Module]], str]:
    """``--target-layer``: the layer list to explain (None: the family's default layers)
    and how to name them in the output.

    Raises:
        CLIError: for a name that is not a module of the model (with the closest names).
    """
    if name is not None:
        layer, path = select_layer(model, None, name)  # the entry is read only without a name
        return [layer], path
    try:
        defaults = as_detector(model).default_target_layers()
    except (TypeError, ValueError) as error:
        raise CLIError(f"{error}; pass --target-layer") from None
    names = ", ".join(layer_name(model, layer) for layer in defaults)
    return None, f"{names} (the family's default)"


def check_input_fits(name: str, model: nn.Module, images: torch.Tensor) -> None:
    """Nothing, unless the input is too small for the model: RT-DETR picks its
    ``num_queries`` queries among the cells of its feature maps (strides
    ``config.feat_strides``), so an input with fewer cells cannot be explained.

    Raises:
        CLIError: naming the sizes, with the fix (a larger --image-size).
    """
    config = getattr(model, "config", None)
    strides = getattr(config, "feat_strides", None)
    queries = getattr(config, "num_queries", None)
    if not str(getattr(config, "model_type", "")).startswith("rt_detr") or not strides or not queries:
        return
    height, width = images.shape[-2:]
    cells = sum(-(-height // stride) * -(-width // stride) for stride in strides)
    if cells < queries:
        raise CLIError(
            f"--image-size: the input {width}x{height} is too small for {name}: its {queries} queries are chosen "
            f"among the {cells} cells of its feature maps; pass a larger --image-size"
        )


# ----------------------------------------------------------------- explaining
def explain_photo(
    model: nn.Module,
    images: torch.Tensor,
    args: argparse.Namespace,
    method: str,
    layers: Optional[List[nn.Module]],
) -> List[Detection]:
    """:func:`explain_detections` of one image as the arguments say.

    Raises:
        CLIError: for the library's argument errors and an out-of-memory GPU.
    """
    cam_class = get_method(method)
    options = method_options(cam_class, args.batch_size, not args.no_progress)
    options["progress"] = not args.no_progress  # explain_detections' bars and the method's own
    try:
        return explain_detections(
            model,
            images,
            method=cam_class,
            target_layers=layers,
            confidence=args.confidence,
            max_detections=args.max_detections,
            **options,
        )[0]
    except (ValueError, TypeError, IndexError) as error:
        raise CLIError(f"{method}: {error}") from None
    except torch.cuda.OutOfMemoryError:
        raise CLIError("out of GPU memory; try a smaller --image-size or --max-detections, or --device cpu") from None


def on_photo(detections: Sequence[Detection], input_hw: Tuple[int, int], photo_hw: Tuple[int, int]) -> List[Detection]:
    """The detections mapped from the model's input onto the photo: boxes scaled by each
    side's ratio, maps resized bilinearly to the photo's size."""
    scale_y, scale_x = photo_hw[0] / input_hw[0], photo_hw[1] / input_hw[1]
    factors = np.float32([scale_x, scale_y, scale_x, scale_y])
    return [
        replace(d, box=np.float32(d.box) * factors, cam=np.clip(resize_to(d.cam, photo_hw), 0, 1)) for d in detections
    ]


def encode_detections(
    detections: Sequence[Detection],
    photo_detections: Sequence[Detection],
    names: Sequence[str],
    input_hw: Tuple[int, int],
) -> bytes:
    """The ``.npz`` of an image's detections (compressed).

    Keys: ``boxes`` (K, 4) float32 x1, y1, x2, y2 in the photo's pixels; ``input_boxes``
    (K, 4) in the model input's pixels; ``labels`` (K,) int64; ``names`` (K,) str;
    ``scores`` (K,) float32; ``maps`` (K, h, w) float32 in [0, 1] at the input's size
    (``explain_detections``' own maps); ``input_size`` (h, w)."""
    height, width = input_hw
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        boxes=np.float32([d.box for d in photo_detections]).reshape(-1, 4),
        input_boxes=np.float32([d.box for d in detections]).reshape(-1, 4),
        labels=np.int64([d.label for d in detections]),
        names=np.array([label_name(d.label, names) for d in detections], dtype=str),
        scores=np.float32([d.score for d in detections]),
        maps=np.float32([d.cam for d in detections]).reshape(-1, height, width),
        input_size=np.int64(input_hw),
    )
    return buffer.getvalue()


def label_name(label: int, names: Sequence[str]) -> str:
    """The name of class ``label`` ("class 7" past the end of ``names``)."""
    return names[label] if 0 <= label < len(names) else f"class {label}"


def detection_lines(photo_detections: Sequence[Detection], names: Sequence[str]) -> List[str]:
    """One line per detection: ``  cat (17)  score 0.873  box [x1, y1, x2, y2]`` (photo pixels)."""
    lines = []
    for d in photo_detections:
        box = ", ".join(f"{value:.1f}" for value in d.box)
        lines.append(f"  {label_name(d.label, names)} ({d.label})  score {d.score:.3g}  box [{box}]")
    return lines


def prepare_defaults(args: argparse.Namespace, entry: DetectorEntry) -> None:
    """Fill in ``--image-size`` and ``--confidence`` where not given: their defaults
    depend on the detector and on whether there are ``--weights``."""
    if args.image_size is None:
        args.image_size = entry.image_size
    if args.confidence is None:
        args.confidence = TRAINED_CONFIDENCE if args.weights is not None else RANDOM_WEIGHTS_CONFIDENCE


def run_detection(args: argparse.Namespace, detectors: Dict[str, DetectorEntry], explicit: Sequence[str]) -> None:
    """``cam.py --detector NAME`` on one photo (``--image-path``, or the bundled photo):
    print one line per detection, write ``<method>_detections.jpg`` and ``.npz``.

    Raises:
        CLIError: on any user error (checked before the model is built where possible).
    """
    if "," in args.method:
        raise CLIError(f"--method {args.method}: one method per photo; several (a,b) work with --image-dir", code=2)
    check_detection_arguments(args, explicit)
    method = check_method(args.method)
    entry = detector_entry(detectors, args.detector)
    prepare_defaults(args, entry)
    image_path = args.image_path if args.image_path is not None else BUNDLED_PHOTO
    photo = read_photo(image_path)
    device = choose_device(args.device, args.use_cuda)
    model = load_detector(args.detector, entry, args.weights, args.image_size).to(device)
    layers, layer_names = target_layers(model, args.target_layer)
    images = detector_input(photo, entry, args.image_size).to(device)
    check_input_fits(args.detector, model, images)
    input_hw = tuple(images.shape[-2:])
    names = class_names(model, entry)
    print(
        f"{args.detector} on {image_path} ({photo.shape[1]}x{photo.shape[0]}, the model's input "
        f"{input_hw[1]}x{input_hw[0]}); {method} at {layer_names}"
    )
    detections = explain_photo(model, images, args, method, layers)
    mapped = on_photo(detections, input_hw, photo.shape[:2])
    print(f"{len(detections)} detection(s) at confidence >= {args.confidence:g} (at most {args.max_detections}):")
    for line in detection_lines(mapped, names):
        print(line)
    if not detections:
        print("  none; try a lower --confidence")
    paths = _write(
        Path(args.output_dir),
        method,
        draw_detections(photo, mapped, class_names=names),
        detections,
        mapped,
        names,
        input_hw,
    )
    print(f"wrote {', '.join(str(path) for path in paths)}")


def _write(
    output_dir: Path,
    method: str,
    picture: np.ndarray,
    detections: Sequence[Detection],
    mapped: Sequence[Detection],
    names: Sequence[str],
    input_hw: Tuple[int, int],
) -> List[Path]:
    """``<method>_detections.jpg`` and ``.npz`` in ``output_dir`` (created if needed).

    Raises:
        CLIError: if the folder or a file cannot be written.
    """
    paths = [output_dir / f"{method}_detections.jpg", output_dir / f"{method}_detections.npz"]
    contents = [encode_image(picture, ".jpg"), encode_detections(detections, mapped, names, input_hw)]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for path, data in zip(paths, contents):
            path.write_bytes(data)
    except OSError as error:
        raise CLIError(f"--output-dir {output_dir}: cannot write ({error.strerror or error})") from None
    return paths
