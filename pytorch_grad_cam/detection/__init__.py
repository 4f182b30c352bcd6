"""Per-object maps for detectors: a target for one detected box
(:class:`BoxTarget`; :class:`MaskTarget` for an instance's mask) that every method can explain, for every supported detector family
once its model is wrapped by :func:`as_detector` (each family's adapter turns the raw
output into per-image :class:`Candidates`, before NMS)."""

# The family adapters register themselves on import (the order is the order as_detector tries).
from pytorch_grad_cam.detection import (
    detr,  # noqa: F401
    torchvision_models,  # noqa: F401
    yolo,  # noqa: F401
)
from pytorch_grad_cam.detection.adapters import ADAPTERS, as_detector, register_adapter
from pytorch_grad_cam.detection.candidates import Candidates, box_iou, cxcywh_to_xyxy
from pytorch_grad_cam.detection.explain import Detection, draw_detections, explain_detections
from pytorch_grad_cam.detection.targets import BoxTarget, MaskTarget

__all__ = [
    "ADAPTERS",
    "BoxTarget",
    "Candidates",
    "Detection",
    "MaskTarget",
    "draw_detections",
    "explain_detections",
    "as_detector",
    "box_iou",
    "cxcywh_to_xyxy",
    "register_adapter",
]
