"""The explorer's detector mode, without gradio: the detectors of ``cam.py --detector``
(built as the command line builds them: random weights, seed 0), the boxes they find on
a photo above a confidence, each method's map of one chosen box (or every box), the
Python snippet and the ``cam.py --detector`` command that reproduce it, and the files to
download. A map here is :func:`pytorch_grad_cam.detection.explain_detections`' own.
"""

from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from pytorch_grad_cam import get_method
from pytorch_grad_cam.cli.detect import class_names, detector_input, label_name, load_detector, on_photo
from pytorch_grad_cam.cli.detector_zoo import DETECTORS, DetectorEntry, package_installed
from pytorch_grad_cam.cli.jobs import method_options
from pytorch_grad_cam.detection import Detection, as_detector, draw_detections, explain_detections
from pytorch_grad_cam.detection.explain import select_detections
from pytorch_grad_cam.explorer.session import cancellable, method_arguments, photo_line, png_name, save_files

__all__ = [
    "ALL_BOXES",
    "DETECTOR_PREFIX",
    "DetectionView",
    "LoadedDetector",
    "NoBoxes",
    "compute_detection_view",
    "detection_command",
    "detection_snippet",
    "detector_choices",
    "detector_name",
    "find_boxes",
    "no_boxes",
    "offered_models",
    "loaded_detector",
    "write_detection_downloads",
]

#: How the model list names a detector ("detector: ssdlite").
DETECTOR_PREFIX = "detector: "
#: The box choice that explains every box (one overlay with all of them, as cam.py draws).
ALL_BOXES = -1
#: NMS's IoU threshold: explain_detections' default, which cam.py uses too.
IOU_THRESHOLD = 0.45


class NoBoxes(ValueError):
    """The detector keeps no box on the photo at the confidence chosen."""


def detector_choices() -> List[str]:
    """The model list's detector entries, for the detectors whose package is installed."""
    return [DETECTOR_PREFIX + name for name, entry in DETECTORS.items() if package_installed(entry.package)]


def offered_models() -> List[str]:
    """Every entry of the page's model list: the classifiers, the detectors, the image-text models."""
    from pytorch_grad_cam.explorer.models import model_names
    from pytorch_grad_cam.explorer.prompts import clip_choices

    return [*model_names(), *detector_choices(), *clip_choices()]


def detector_name(choice: str) -> Optional[str]:
    """The detector a model-list entry names ('detector: ssdlite' -> 'ssdlite'), or None."""
    if choice.startswith(DETECTOR_PREFIX) and choice[len(DETECTOR_PREFIX) :] in DETECTORS:
        return choice[len(DETECTOR_PREFIX) :]
    return None


@dataclass
class LoadedDetector:
    """A built detector (random weights, seed 0, as ``cam.py --detector`` builds it without
    --weights), its zoo entry, class names and input size (the longer side)."""

    name: str
    entry: DetectorEntry
    model: torch.nn.Module
    names: List[str]
    image_size: int

    def input(self, photo: np.ndarray) -> torch.Tensor:
        """The model's input for an RGB float photo (cam.py's resize and normalisation)."""
        return detector_input(photo, self.entry, self.image_size)


_LOADED: Dict[str, LoadedDetector] = {}
_LOCK = threading.Lock()


def loaded_detector(name: str) -> LoadedDetector:
    """The detector ``name`` of cam.py's zoo, built on first use and kept.

    Raises:
        ValueError: for a name that is not in the zoo (naming them).
        CLIError: for a missing Python package (naming it).
    """
    if name not in DETECTORS:
        raise ValueError(f"detector {name!r} is not in cam.py's zoo; choose one of {', '.join(DETECTORS)}")
    with _LOCK:
        if name not in _LOADED:
            entry = DETECTORS[name]
            model = load_detector(name, entry, None, entry.image_size, warn=False)
            _LOADED[name] = LoadedDetector(name, entry, model, class_names(model, entry), entry.image_size)
        return _LOADED[name]


def find_boxes(
    detector: LoadedDetector, photo: np.ndarray, confidence: float, max_detections: int = 20
) -> List[Tuple[int, str, float]]:
    """The boxes the detector keeps on the photo (the selection of explain_detections:
    confidence, class-wise NMS, the best ``max_detections``), best first, as (number,
    class name, score)."""
    with torch.no_grad():
        candidates = as_detector(detector.model)(detector.input(photo))[0]
    _, labels, scores = select_detections(candidates, confidence, IOU_THRESHOLD, max_detections)
    return [
        (number, label_name(int(label), detector.names), float(score))
        for number, (label, score) in enumerate(zip(labels.tolist(), scores.tolist()))
    ]


@dataclass
class DetectionView:
    """One detector run: per method every detection (maps at the input's size), the map
    shown (the chosen box's (h, w), or all boxes' (K, h, w)) and its overlay (the photo at
    its own size, the boxes drawn with their maps, as cam.py --detector draws)."""

    detector: str
    photo_path: Path
    photo: np.ndarray
    input_tensor: torch.Tensor
    box: int
    confidence: float
    max_detections: int
    detections: Dict[str, List[Detection]] = field(default_factory=dict)
    maps: Dict[str, np.ndarray] = field(default_factory=dict)
    overlays: Dict[str, np.ndarray] = field(default_factory=dict)

    def chosen(self, detections: Sequence[Detection]) -> List[Detection]:
        """The detections the view explains: the chosen box, or all."""
        return list(detections) if self.box == ALL_BOXES else [detections[self.box]]


def no_boxes(confidence: float) -> NoBoxes:
    """The error (and message) of a photo where the detector keeps no box at ``confidence``."""
    return NoBoxes(
        f"no box at confidence >= {confidence:g} on this photo; lower the confidence "
        "(a detector with random weights gives every box a tiny score)"
    )


def compute_detection_view(
    detector: LoadedDetector,
    photo_path: Path,
    photo: np.ndarray,
    methods: Sequence[str],
    box: int,
    confidence: float,
    max_detections: int = 20,
    cancelled: Callable[[], bool] = lambda: False,
) -> DetectionView:
    """Each method's map of box ``box`` (a number of :func:`find_boxes`, or
    :data:`ALL_BOXES`), from ``explain_detections`` at ``confidence``. ``cancelled()`` is
    asked before each forward pass of the model.

    Raises:
        NoBoxes: when the detector keeps no box (the message says to lower the confidence).
        ValueError: for a box number past the boxes kept, an unknown method, and the
            methods' own argument errors.
        Cancelled: once ``cancelled()`` turned true.
    """
    view = DetectionView(
        detector.name, Path(photo_path), photo, detector.input(photo), int(box), float(confidence), int(max_detections)
    )

    # The wrappers call the model's parts, not its forward: each part checks.
    with cancellable(list(detector.model.children()), cancelled):
        for method in methods:
            options = {**method_options(get_method(method), 32, True), "progress": True}
            found = explain_detections(
                detector.model, view.input_tensor, method=method, confidence=view.confidence,
                max_detections=view.max_detections, **options,
            )[0]  # fmt: skip
            if not found:
                raise no_boxes(view.confidence)
            if view.box != ALL_BOXES and not 0 <= view.box < len(found):
                raise ValueError(f"box {view.box} is not one of the {len(found)} boxes found; choose one in the list")
            view.detections[method] = found
            maps = [d.cam for d in view.chosen(found)]
            view.maps[method] = maps[0] if view.box != ALL_BOXES else np.stack(maps)
            mapped = on_photo(view.chosen(found), tuple(view.input_tensor.shape[-2:]), photo.shape[:2])
            view.overlays[method] = draw_detections(photo, mapped, class_names=detector.names)
    return view


def detection_snippet(view: DetectionView, detector: LoadedDetector, photo_name: Optional[str] = None) -> str:
    """Python code that computes the view's maps with the library (the detector built as
    cam.py builds it, the photo resized as cam.py does); it leaves them in ``maps``
    (method -> the chosen box's (h, w) map, or every box's (K, h, w))."""
    photo = photo_name if photo_name is not None else str(view.photo_path)
    lines = [
        "import cv2",
        "import numpy as np",
        "",
        "from pytorch_grad_cam.cli.detect import detector_input, load_detector",
        "from pytorch_grad_cam.cli.detector_zoo import DETECTORS",
        "from pytorch_grad_cam.detection import explain_detections",
        "",
        f"entry = DETECTORS[{view.detector!r}]",
        f"model = load_detector({view.detector!r}, entry, None, {detector.image_size})"
        "  # random weights (seed 0): pass a state dict's path for trained ones",
        photo_line(photo),
        f"input_tensor = detector_input(photo, entry, {detector.image_size})",
        "maps = {}",
    ]
    for method in view.maps:
        options = method_arguments(method)
        lines.append(
            f"detections = explain_detections(model, input_tensor, method={method!r}, "
            f"confidence={view.confidence!r}, max_detections={view.max_detections}{options})[0]"
        )
        if view.box == ALL_BOXES:
            lines.append(f"maps[{method!r}] = np.stack([detection.cam for detection in detections])")
        else:
            found = view.detections[method][view.box]
            name = label_name(found.label, detector.names)
            lines.append(f"maps[{method!r}] = detections[{view.box}].cam  # box {view.box}: {name} {found.score:.3f}")
    return "\n".join(lines) + "\n"


def detection_command(view: DetectionView, photo_name: Optional[str] = None) -> str:
    """The ``cam.py --detector`` command of each method (it explains every box it keeps,
    and prints them in the page's order), one per line, with the chosen box in a comment."""
    photo = photo_name if photo_name is not None else str(view.photo_path)
    which = (
        "every box"
        if view.box == ALL_BOXES
        else f"the page's box {view.box} is line {view.box + 1} of the boxes it prints"
    )
    commands = []
    for method in view.maps:
        words = ["python", "cam.py", "--detector", view.detector, "--image-path", photo, "--method", method]
        words += ["--confidence", f"{view.confidence:g}", "--max-detections", str(view.max_detections)]
        commands.append(f"{shlex.join(words)}  # {which}")
    return "\n".join(commands)


def write_detection_downloads(view: DetectionView, folder: Path) -> List[Path]:
    """The view's files in ``folder`` (created if needed): ``maps.npz`` (per method the map
    shown, and ``<method>_boxes``, ``_labels``, ``_scores`` of every box kept in the input's
    pixels; ``box``: the box chosen, -1 for all) and ``<method>.png`` (each overlay).

    Raises:
        OSError: if the folder or a file cannot be written.
    """
    arrays: Dict[str, np.ndarray] = {"box": np.int64(view.box)}
    for method, found in view.detections.items():
        arrays[method] = view.maps[method]
        arrays[f"{method}_boxes"] = np.float32([d.box for d in found]).reshape(-1, 4)
        arrays[f"{method}_labels"] = np.int64([d.label for d in found])
        arrays[f"{method}_scores"] = np.float32([d.score for d in found])
    return save_files(folder, arrays, {png_name(method): overlay for method, overlay in view.overlays.items()})
