"""The Detection table: GradCAM of detected boxes on ultralytics YOLOv8n (random
weights, seed 0) against its floor (one forward of the wrapped detector and one
backward from one box's score to the default target layers), and K boxes as K calls
against the image repeated K times in one call and against ``explain_targets`` (one
forward pass, the K boxes' gradients: how explain_detections explains an image's boxes). Skipped with a note where ultralytics is not installed (an optional package).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import torch
from bench_cases import graph_from_first, hooked_call
from bench_harness import Row, Table

#: boxes explained by the K-box rows
DETECTION_BOXES = 8
#: the least confidence of the candidates the boxes are chosen from: none (random
#: weights score every class ~1e-5, so every candidate goes to NMS)
CANDIDATE_CONFIDENCE = 0.0
DETECTION_TITLE = "Detection: YOLOv8n (random weights)"


class DetectionCase:
    """YOLOv8n (``YOLO("yolov8n.yaml")``, seed 0) wrapped by ``as_detector``, one image
    ``size`` x ``size`` (uniform in [0, 1), seed 0), and its :data:`DETECTION_BOXES`
    best-scoring boxes after NMS at :data:`CANDIDATE_CONFIDENCE`, as explain_detections makes
    their BoxTargets (with the candidates matched on the detection pass)."""

    def __init__(self, device: torch.device, size: int) -> None:
        # Offline, and no settings file written into the user's home.
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="bench-yolo-"))
        os.environ.setdefault("YOLO_VERBOSE", "False")  # no settings banner in the tables
        from ultralytics import YOLO

        from pytorch_grad_cam.detection import as_detector
        from pytorch_grad_cam.detection.explain import detection_targets, select_detections

        torch.manual_seed(0)
        self.detector = as_detector(YOLO("yolov8n.yaml", verbose=False)).to(device)
        self.layers = self.detector.default_target_layers()
        self.image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            candidates = self.detector(self.image)[0]
        boxes, labels, _ = select_detections(candidates, CANDIDATE_CONFIDENCE, max_detections=DETECTION_BOXES)
        if boxes.shape[0] < DETECTION_BOXES:
            raise RuntimeError(f"only {boxes.shape[0]} boxes at confidence {CANDIDATE_CONFIDENCE}; lower it")
        # As explain_detections makes them: the candidates matched on this detection pass.
        self.targets = detection_targets(candidates, boxes, labels)

    def gradcam(self) -> object:
        """A GradCAM of the wrapped detector on its default target layers."""
        from pytorch_grad_cam import GradCAM

        return GradCAM(self.detector, self.layers)


_CASES: Dict[Tuple[torch.device, int], DetectionCase] = {}


def detection_case(device: torch.device, size: int) -> DetectionCase:
    """The case on ``device`` at ``size``, built once per (device, size)."""
    if (device, size) not in _CASES:
        _CASES[(device, size)] = DetectionCase(device, size)
    return _CASES[(device, size)]


def detection_floor(device: torch.device, size: int) -> Callable[[], None]:
    """One forward pass of the wrapped detector that records a graph only from the first
    default target layer on, the first box's BoxTarget score, and one backward pass to
    the default target layers' outputs."""
    case = detection_case(device, size)

    def run() -> None:
        recorded: List[torch.Tensor] = []
        handles = graph_from_first(case.layers, recorded)
        score = hooked_call(lambda: case.targets[0](case.detector(case.image)[0]), handles)
        torch.autograd.grad(score, recorded)

    return run


def one_box(device: torch.device, size: int) -> Callable[[], None]:
    """One GradCAM call on the image with the first box's BoxTarget."""
    case = detection_case(device, size)
    cam = case.gradcam()
    return lambda: cam(case.image, case.targets[:1])


def separate_boxes(device: torch.device, size: int) -> Callable[[], None]:
    """K GradCAM calls on the image, one BoxTarget each."""
    case = detection_case(device, size)
    cam = case.gradcam()

    def run() -> None:
        for target in case.targets:
            cam(case.image, [target])

    return run


def batched_boxes(device: torch.device, size: int) -> Callable[[], None]:
    """One GradCAM call on the image repeated K times with the K BoxTargets."""
    case = detection_case(device, size)
    cam = case.gradcam()
    copies = case.image.expand(len(case.targets), *case.image.shape[1:]).contiguous()
    return lambda: cam(copies, case.targets)


def several_boxes(device: torch.device, size: int) -> Callable[[], None]:
    """GradCAM's explain_targets on the image with the K BoxTargets (how explain_detections
    explains one image's boxes): one forward pass, the K scores' gradients at the layers."""
    case = detection_case(device, size)
    cam = case.gradcam()
    return lambda: cam.explain_targets(case.image, case.targets)


def detection_note() -> Optional[str]:
    """The one-line note that the Detection table is skipped, or None where ultralytics is installed."""
    if importlib.util.find_spec("ultralytics") is None:
        return f"{DETECTION_TITLE}: skipped, ultralytics is not installed (pip install ultralytics)"
    return None


def detection_tables(size: int) -> List[Table]:
    """The Detection table at ``size`` x ``size`` ([] where ultralytics is not installed)."""
    if detection_note() is not None:
        return []
    k = DETECTION_BOXES
    return [
        Table(
            f"{DETECTION_TITLE}, {size} x {size}, GradCAM on the neck outputs",
            "det-floor:1",
            "one forward of the wrapped detector + one box's backward to the default target layers; "
            f"ms/image of the K = {k} rows: per box",
            [
                Row(
                    "det-floor:1",
                    "floor: forward + one box's backward to the layers (reference)",
                    _on(detection_floor, size),
                ),
                Row("det-box:1", "GradCAM, one box", _on(one_box, size)),
                Row(f"det-separate:{k}", f"GradCAM, K = {k} boxes as {k} calls", _on(separate_boxes, size)),
                Row(f"det-batched:{k}", f"GradCAM, K = {k} boxes in one call (image x {k})", _on(batched_boxes, size)),
                Row(
                    f"det-several:{k}",
                    f"GradCAM, K = {k} boxes by explain_targets (one forward, {k} gradients)",
                    _on(several_boxes, size),
                ),
            ],
        )
    ]


def _on(case: Callable[[torch.device, int], Callable[[], None]], size: int) -> Callable[[object], Callable[[], None]]:
    # A row's make(bench): the case on the bench's device at the table's size.
    return lambda bench: case(bench.device, size)


#: (row, reference row) ratios that are not against the table's reference.
DETECTION_PAIRS = [
    (f"det-batched:{DETECTION_BOXES}", f"det-separate:{DETECTION_BOXES}"),
    (f"det-several:{DETECTION_BOXES}", f"det-separate:{DETECTION_BOXES}"),
]
