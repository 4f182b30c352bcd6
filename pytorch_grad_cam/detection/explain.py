"""The common job in one call: detect (a confidence threshold, then class-wise NMS over
the model's candidates), then one map per kept box, then draw boxes with their maps.

A box's map explains :class:`~pytorch_grad_cam.detection.BoxTarget` (its box, its
label, and the candidates matched to it on the detection pass). All of one image's
boxes go through :meth:`~pytorch_grad_cam.base_cam.BaseCAM.explain_targets`: for the
gradient methods one forward pass and the boxes' gradients at the target layers, rather
than K calls.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Type, Union

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import batched_nms, remove_small_boxes
from tqdm import tqdm

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.detection.adapters import as_detector
from pytorch_grad_cam.detection.candidates import Candidates
from pytorch_grad_cam.detection.targets import BoxTarget, MaskTarget
from pytorch_grad_cam.model_state import evaluation_mode, prepare_input
from pytorch_grad_cam.registry import method_class

__all__ = ["Detection", "detection_targets", "draw_detections", "explain_detections", "select_detections"]


@dataclass
class Detection:
    """One kept detection and its map.

    Attributes:
        box: (4,) x1, y1, x2, y2 in the pixels of the model's input.
        label: the class index, as the model numbers its classes.
        score: the kept candidate's confidence for ``label``.
        cam: (H, W) float32 map of :class:`BoxTarget` (box, label), in [0, 1] (of
            :class:`MaskTarget` with ``explain="mask"``).
        mask: (H, W) bool, the instance's predicted mask (Mask R-CNN), else None.
    """

    box: np.ndarray
    label: int
    score: float
    cam: np.ndarray
    mask: Optional[np.ndarray] = None


def select_detections(
    candidates: Candidates, confidence: float = 0.25, iou_threshold: float = 0.45, max_detections: int = 20
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The detections kept from one image's candidates: each candidate's best class,
    those with confidence >= ``confidence``, class-wise NMS at ``iou_threshold``, the
    ``max_detections`` best.

    Returns:
        (boxes (K, 4) xyxy, labels (K,) int64, scores (K,)), detached, best score first.
    """
    return _detections_at(candidates, kept_candidates(candidates, confidence, iou_threshold, max_detections))


def _detections_at(candidates: Candidates, kept: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes (K, 4), labels (K,), scores (K,)) of the candidates at ``kept``, each for its
    best class, detached."""
    scores, labels = candidates.scores.detach()[kept].max(dim=1)
    return candidates.boxes_of_best(kept).detach().float(), labels, scores.float()


def kept_candidates(
    candidates: Candidates, confidence: float = 0.25, iou_threshold: float = 0.45, max_detections: int = 20
) -> torch.Tensor:
    """The positions (K,) among ``candidates`` of the detections :func:`select_detections`
    keeps, best first (boxes narrower or lower than 1e-3 pixels are not kept)."""
    scores, labels = candidates.scores.detach().max(dim=1)
    keep = torch.nonzero(scores >= confidence).flatten()
    boxes = candidates.boxes_of_best(keep).detach().float()
    # A box with no width or height (a degenerate regression) is no object to explain.
    sized = remove_small_boxes(boxes, 1e-3)
    keep, boxes = keep[sized], boxes[sized]
    return keep[batched_nms(boxes, scores[keep].float(), labels[keep], iou_threshold)[:max_detections]]


def explain_detections(
    model: object,
    images: torch.Tensor,
    method: Union[str, Type[BaseCAM]] = "gradcam",
    target_layers: Optional[Sequence[nn.Module]] = None,
    confidence: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 20,
    progress: bool = False,
    explain: str = "box",
    **method_options: object,
) -> List[List[Detection]]:
    """Detect objects in ``images`` and compute one map per detected box.

    Args:
        model: a detector :func:`~pytorch_grad_cam.detection.as_detector` recognises (or its wrapper).
        images: (B, 3, H, W) float tensor, as the model takes it.
        method: a name in ``pytorch_grad_cam.METHODS`` (e.g. "gradcam", "hirescam") or a CAM class.
        target_layers: the layers to explain; None: the family's default layers.
        confidence: the least best-class confidence a kept candidate has.
        iou_threshold: NMS's IoU threshold (class-wise).
        max_detections: the most boxes kept per image.
        progress: show a progress bar over the images (and the method's own, for
            methods that have one: ScoreCAM, AblationCAM).
        explain: "box": each map explains the object's confidence (:class:`BoxTarget`);
            "mask": the mask an instance-segmentation model predicts for it
            (:class:`~pytorch_grad_cam.detection.MaskTarget`, Mask R-CNN).
        **method_options: passed to the CAM class's constructor (e.g. ``batch_size``).

    Returns:
        Per image, its :class:`Detection` list, best score first (empty if nothing is kept).

    Raises:
        TypeError: if ``images`` is not a (B, 3, H, W) tensor, ``model`` is no supported
            detector, or ``method`` is neither a method name nor a CAM class.
        ValueError: for an unknown method name, an ``explain`` other than "box"/"mask",
            or "mask" for a model that predicts no masks.
    """
    if explain not in ("box", "mask"):
        raise ValueError(f'explain must be "box" or "mask", got {explain!r}')
    if not torch.is_tensor(images) or images.ndim != 4:
        raise TypeError(
            f"images must be a (B, 3, H, W) tensor, got {type(images).__name__} {tuple(getattr(images, 'shape', ()))}"
        )
    detector = as_detector(model)
    cam_class = method_class(method)
    images = prepare_input(images, detector)  # the model's device and float dtype
    # Detected as the maps will be computed: in eval mode (dropout off), every submodule's
    # own mode given back afterwards.
    with torch.no_grad(), evaluation_mode(detector):
        candidates = detector(images)
    if explain == "mask" and any(found.masks is None for found in candidates):
        raise ValueError('explain="mask" needs a model that predicts instance masks (Mask R-CNN); use explain="box"')
    layers = list(target_layers) if target_layers is not None else detector.default_target_layers()
    results: List[List[Detection]] = []
    if "progress" in inspect.signature(cam_class).parameters:
        method_options = {"progress": progress, **method_options}
    with cam_class(detector, layers, **method_options) as cam:
        for index, found in enumerate(tqdm(candidates, disable=not progress, desc="detections")):
            kept = kept_candidates(found, confidence, iou_threshold, max_detections)
            results.append(_explain_image(cam, images[index : index + 1], found, kept, explain))
    return results


def detection_targets(
    candidates: Candidates, boxes: torch.Tensor, labels: torch.Tensor, explain: str = "box"
) -> List[BoxTarget]:
    """A target per detected box (:class:`BoxTarget`, or :class:`MaskTarget` for
    ``explain="mask"``), its candidates matched once, here, on the detection pass's
    ``candidates`` (so the map pass scores exactly those).

    Returns:
        One target per box, in order.
    """
    kind = MaskTarget if explain == "mask" else BoxTarget
    targets = []
    for box, label in zip(boxes.detach().cpu(), labels.tolist()):
        matched = BoxTarget(box, int(label)).matches(candidates).nonzero().flatten().cpu()
        targets.append(kind(box, int(label), indices=matched))
    return targets


def _explain_image(
    cam: BaseCAM, image: torch.Tensor, candidates: Candidates, kept: torch.Tensor, explain: str
) -> List[Detection]:
    """One image's detections with their maps: the CAM's maps of the image for its targets."""
    if kept.numel() == 0:
        return []
    boxes, labels, scores = _detections_at(candidates, kept)
    targets = detection_targets(candidates, boxes, labels, explain)
    maps = cam.explain_targets(image, targets)
    masks = _pasted_masks(candidates, kept, labels, boxes, tuple(image.shape[-2:]))
    return [
        Detection(
            box=target.box.numpy().astype(np.float32),
            label=target.label,
            score=float(score),
            cam=np.asarray(heat, np.float32),
            mask=None if masks is None else masks[k],
        )
        for k, (target, score, heat) in enumerate(zip(targets, scores.tolist(), maps))
    ]


def _pasted_masks(
    candidates: Candidates, kept: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]
) -> Optional[np.ndarray]:
    """(K, H, W) bool: each kept candidate's mask for its label, pasted into its box at
    the input's size as the model pastes it (probability >= 0.5); None without masks."""
    if candidates.masks is None:
        return None
    logits = candidates.class_masks(kept, labels).detach()
    pasted = paste_masks_in_image(torch.sigmoid(logits)[:, None].float(), boxes, size)[:, 0]
    return (pasted >= 0.5).cpu().numpy()


def draw_detections(
    image: np.ndarray, detections: Sequence[Detection], class_names: Optional[Sequence[str]] = None, alpha: float = 0.5
) -> np.ndarray:
    """The image with each detection's box, its "label score" caption, its map (JET
    colours) blended inside its box, and its mask's outline where it has one.

    Args:
        image: (H, W, 3) RGB float in [0, 1], the image the detections were made on.
        detections: from :func:`explain_detections`, boxes in the image's pixels.
        class_names: names for the labels (default: the label numbers).
        alpha: the weight of the map's colours inside a box.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ValueError: if ``image`` is not (H, W, 3) with values in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.min() < 0 or image.max() > 1:
        raise ValueError(f"image must be (H, W, 3) RGB floats in [0, 1], got shape {image.shape}; divide uint8 by 255")
    canvas = np.round(image * 255).astype(np.uint8)
    height, width = canvas.shape[:2]
    for detection in detections:
        x1, y1, x2, y2 = (int(round(float(v))) for v in detection.box)
        x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width))
        y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height))
        if x2 > x1 and y2 > y1:
            heat = np.uint8(np.clip(detection.cam[y1:y2, x1:x2], 0, 1) * 255)
            colours = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
            region = canvas[y1:y2, x1:x2].astype(np.float32)
            canvas[y1:y2, x1:x2] = np.uint8(np.round((1 - alpha) * region + alpha * colours))
        if detection.mask is not None:  # the instance's mask, outlined
            outline, _ = cv2.findContours(
                np.asarray(detection.mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(canvas, outline, -1, (255, 255, 255), 1)
        name = class_names[detection.label] if class_names is not None else str(detection.label)
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), (255, 255, 0), 1)
        cv2.putText(
            canvas,
            f"{name} {detection.score:.2f}",
            (x1 + 2, max(y1 + 10, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return canvas
