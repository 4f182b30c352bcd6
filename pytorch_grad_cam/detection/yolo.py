"""The YOLO family as per-image Candidates: ultralytics YOLOv8 / YOLO11 detect heads
(eval output ``(B, 4 + nc, N)``: cxcywh in input pixels, then sigmoided class
probabilities) and YOLOv5-style outputs ``(B, N, 5 + nc)`` (cxcywh, objectness, class
probabilities; a candidate's class confidence is objectness x class probability).

Recognised by duck typing, without importing ultralytics: an ultralytics ``YOLO``
object is unwrapped to its ``DetectionModel`` (the wrapper must never hold the ``YOLO``
object itself: its ``train()`` starts a training run, and ``nn.Module.eval()`` calls
``train(False)`` on every child).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from pytorch_grad_cam import sparse_backward
from pytorch_grad_cam.detection.adapters import register_adapter
from pytorch_grad_cam.detection.candidates import Candidates, cxcywh_to_xyxy
from pytorch_grad_cam.model_state import evaluation_mode
from pytorch_grad_cam.utils.hooks import Hooks

__all__ = ["YOLODetector", "YOLOv5Detector", "adapt_yolo", "detect_head", "yolov5_candidates", "yolov8_candidates"]

# Attributes the ultralytics head caches on each forward (the anchor grid for the last
# input shape); they are put back afterwards so that a call leaves the head as found.
_HEAD_CACHE = ("anchors", "strides", "shape")


def detect_head(model: nn.Module) -> Optional[nn.Module]:
    """The YOLO detect head ``model.model[-1]`` when it has ``nc``, ``stride`` and ``no``, else None."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, (nn.Sequential, nn.ModuleList)) or len(layers) == 0:
        return None
    head = layers[-1]
    return head if all(hasattr(head, name) for name in ("nc", "stride", "no")) else None


def _first(output: object) -> torch.Tensor:
    """The prediction tensor of an eval output: the tensor itself or a tuple's first element."""
    prediction = output[0] if isinstance(output, (tuple, list)) else output
    if not torch.is_tensor(prediction) or prediction.ndim != 3:
        raise ValueError(
            f"expected a YOLO prediction tensor (B, 4 + classes, N) or (B, N, 5 + classes), or a tuple "
            f"starting with one, got {type(prediction).__name__} {tuple(getattr(prediction, 'shape', ()))}"
        )
    return prediction


def yolov8_candidates(output: object, classes: int, xyxy: bool = False) -> List[Candidates]:
    """One Candidates per image from a YOLOv8 / YOLO11 eval output.

    Args:
        output: ``(B, 4 + classes (+ extra), N)`` or a tuple starting with it; rows 0-3
            are cxcywh in input pixels (xyxy when ``xyxy``), the next ``classes`` rows
            sigmoided class probabilities (extra rows, e.g. mask coefficients, are ignored).
        classes: the number of classes ``nc``.
        xyxy: whether the boxes are already x1, y1, x2, y2.

    Returns:
        A list of B Candidates with (N, 4) xyxy boxes and (N, classes) scores.

    Raises:
        ValueError: if the prediction has fewer than 4 + classes rows.
    """
    prediction = _first(output)
    if prediction.shape[1] < 4 + classes:
        raise ValueError(
            f"a YOLOv8 prediction needs 4 + {classes} rows, got shape {tuple(prediction.shape)}; "
            "is this an end-to-end (NMS-free) output (B, max_det, 6)? pass the model, not its output"
        )
    boxes = prediction[:, :4].transpose(1, 2)
    boxes = boxes if xyxy else cxcywh_to_xyxy(boxes)
    scores = _class_logits(output, prediction, classes)
    scores = prediction[:, 4 : 4 + classes] if scores is None else scores.sigmoid()
    scores = scores.transpose(1, 2)
    return [Candidates(image_boxes, image_scores) for image_boxes, image_scores in zip(boxes, scores)]


def _class_logits(output: object, prediction: torch.Tensor, classes: int) -> Optional[torch.Tensor]:
    """The head's raw class logits (B, classes, N) where its output carries them (the
    ``{"scores": ...}`` of an eval output's second element), else None.

    The prediction's class rows are these logits sigmoided, but concatenated after the
    decoded boxes: a score taken from there would send a zero gradient back through the
    whole box branch. Taken from the logits, the backward pass runs the class branch only.
    """
    raw = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    logits = raw.get("scores") if isinstance(raw, dict) else None
    fits = torch.is_tensor(logits) and logits.shape == (prediction.shape[0], classes, prediction.shape[2])
    return logits if fits else None


def yolov5_candidates(output: object) -> List[Candidates]:
    """One Candidates per image from a YOLOv5-style output.

    Args:
        output: ``(B, N, 5 + classes)`` or a tuple starting with it: cxcywh in input
            pixels, objectness, class probabilities (all already sigmoided).

    Returns:
        A list of B Candidates: xyxy boxes and scores = objectness x class probability.

    Raises:
        ValueError: if the output is not (B, N, 5 + classes) with at least one class.
    """
    prediction = _first(output)
    if prediction.shape[-1] < 6:
        raise ValueError(f"a YOLOv5-style output is (B, N, 5 + classes), got shape {tuple(prediction.shape)}")
    boxes = cxcywh_to_xyxy(prediction[..., :4])
    scores = prediction[..., 5:] * prediction[..., 4:5]
    return [Candidates(image_boxes, image_scores) for image_boxes, image_scores in zip(boxes, scores)]


class _YOLOWrapper(nn.Module):
    """What both YOLO wrappers share: the model as ``model``, eval mode for the call, the
    head's cached anchor grid put back, and the neck outputs as default layers."""

    returns_candidates = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _run(self, images: torch.Tensor) -> object:
        head = detect_head(self.model)
        cached = {name: head.__dict__[name] for name in _HEAD_CACHE if head is not None and name in head.__dict__}
        try:
            with evaluation_mode(self.model):
                return self.model(images)
        finally:
            if head is not None:
                for name in _HEAD_CACHE:
                    head.__dict__.pop(name, None)
                head.__dict__.update(cached)

    def default_target_layers(self) -> List[nn.Module]:
        """The layers whose outputs feed the detect head (``model.model[i]`` for i in
        ``model.model[-1].f``): the neck's multi-scale outputs.

        Raises:
            ValueError: if the model has no ultralytics-style head with ``f`` (pass target layers).
        """
        head = detect_head(self.model)
        sources = getattr(head, "f", None)
        if head is None or sources is None:
            raise ValueError(
                f"{type(self.model).__name__} has no head listing its inputs (model.model[-1].f); pass target_layers"
            )
        sources = [sources] if isinstance(sources, int) else list(sources)
        return [self.model.model[index] for index in sources]


class YOLODetector(_YOLOWrapper):
    """An ultralytics YOLOv8 / YOLO11 ``DetectionModel`` whose forward returns one
    Candidates per image (end-to-end heads: the one-to-one head's candidates, before
    its top-k selection)."""

    def forward(self, images: torch.Tensor) -> List[Candidates]:
        """One Candidates per image, boxes in the pixels of ``images``."""
        head = detect_head(self.model)
        end_to_end = bool(getattr(head, "end2end", False))
        branches = getattr(head, "one2one_cv3" if end_to_end else "cv3", None)
        levels: List[torch.Tensor] = []
        with Hooks() as hooks:
            if sparse_backward.skipping() and isinstance(branches, nn.ModuleList):
                # Each level's class logits as its branch returns them, to be joined again
                # by a concatenation that skips the levels a box's score does not read.
                for branch in branches:
                    hooks.forward(branch, lambda module, inputs, out: levels.append(out))
            output = self._run(images)
        if end_to_end and isinstance(output, (tuple, list)):
            # The first output is already top-k selected; decode the raw one-to-one head
            # instead so that every candidate (before selection) is scored.
            raw = output[1]["one2one"]
            output = (head._inference(raw), raw)  # noqa: SLF001 (ultralytics' own decoder)
        if levels:
            output = _levels_joined(output, levels)
        # The head decodes xyxy when end-to-end or asked to, else cxcywh.
        xyxy = end_to_end or bool(getattr(head, "xyxy", False))
        return yolov8_candidates(output, int(head.nc), xyxy=xyxy)


def _levels_joined(output: object, levels: List[torch.Tensor]) -> object:
    """``output`` with its raw class logits (``output[1]["scores"]``, (B, nc, N)) replaced
    by the same numbers: the ``levels``' logits joined by :func:`sparse_backward.cat`; as
    it is where they do not fit."""
    raw = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    if not isinstance(raw, dict) or not torch.is_tensor(raw.get("scores")):
        return output
    joined = sparse_backward.cat([level.flatten(2) for level in levels], dim=2)
    return (output[0], {**raw, "scores": joined}) if joined.shape == raw["scores"].shape else output


class YOLOv5Detector(_YOLOWrapper):
    """A model whose eval output is YOLOv5-style ``(B, N, 5 + classes)`` (or a tuple
    starting with it), returning one Candidates per image."""

    def forward(self, images: torch.Tensor) -> List[Candidates]:
        """One Candidates per image, boxes in the pixels of ``images``."""
        return yolov5_candidates(self._run(images))


def _is_yolov5_head(head: nn.Module) -> bool:
    # YOLOv5's head predicts per anchor (``na``) 5 + nc numbers; v8's predicts DFL
    # distributions (``reg_max``) with no objectness.
    return hasattr(head, "na") and not hasattr(head, "reg_max") and int(head.no) == int(head.nc) + 5


@register_adapter
def adapt_yolo(model: object) -> Optional[nn.Module]:
    """YOLO: an ultralytics YOLO object or its DetectionModel (YOLOv8/YOLO11, or YOLOv5-style), model.model[-1] with nc, stride, no (not OBB).

    Returns:
        A :class:`YOLODetector` or :class:`YOLOv5Detector` holding the detection model,
        or None if ``model`` is neither.
    """
    candidates: Sequence[object] = (model, getattr(model, "model", None)) if isinstance(model, nn.Module) else ()
    for module in candidates:
        if isinstance(module, nn.Module):
            head = detect_head(module)
            # Rotated boxes (the OBB head's extra angle, ``ne``) are not xyxy boxes.
            if head is not None and not hasattr(head, "ne"):
                return YOLOv5Detector(module) if _is_yolov5_head(head) else YOLODetector(module)
    return None
