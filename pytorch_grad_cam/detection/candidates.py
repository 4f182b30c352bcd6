"""A detector's candidates for one image, before non-maximum suppression: the common
form every detector family is turned into, so that one target serves them all.

Boxes are ``xyxy`` in the pixels of the input the model was given; scores are per-class
confidences in [0, 1] (a sigmoid or a softmax, times objectness where a family has
one), differentiable with respect to the model's activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torchvision.ops import box_convert
from torchvision.ops import box_iou as torchvision_box_iou

__all__ = ["Candidates", "box_iou", "cxcywh_to_xyxy"]


@dataclass
class Candidates:
    """One image's candidate detections.

    Attributes:
        boxes: (N, 4) xyxy in input pixels, or (N, C, 4) where a family regresses one box
            per class (Faster R-CNN's box head).
        scores: (N, C) per-class confidences in [0, 1].
        masks: optional per-candidate mask logits (N, C, h, w) or (N, 1, h, w) (Mask R-CNN).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    masks: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.scores.ndim != 2:
            raise ValueError(f"Candidates.scores must be (N, classes), got shape {tuple(self.scores.shape)}")
        if self.boxes.shape[-1] != 4 or self.boxes.shape[0] != self.scores.shape[0]:
            raise ValueError(
                f"Candidates.boxes must be (N, 4) or (N, classes, 4) with N = {self.scores.shape[0]}, "
                f"got shape {tuple(self.boxes.shape)}"
            )

    def boxes_of_best(self, indices: torch.Tensor) -> torch.Tensor:
        """(K, 4): the boxes of the candidates at ``indices``, each for its best class."""
        if self.boxes.ndim == 2:
            return self.boxes[indices]
        return self.boxes[indices, self.scores.detach()[indices].argmax(dim=1)]

    def class_masks(self, selection: torch.Tensor, labels: Union[int, torch.Tensor]) -> torch.Tensor:
        """(M, h, w): the mask logits of the candidates at ``selection`` (positions or an
        (N,) bool mask), each for its label (one ``int`` for all, or (M,) labels);
        class-agnostic masks (N, 1, h, w) as they are."""
        masks = self.masks[selection]
        if masks.shape[1] == 1:
            return masks[:, 0]
        if isinstance(labels, int):
            return masks[:, labels]
        return masks[torch.arange(len(masks), device=masks.device), labels]

    def boxes_of(self, label: int) -> torch.Tensor:
        """(N, 4): each candidate's box for class ``label`` (its only box, or the class's)."""
        return self.boxes if self.boxes.ndim == 2 else self.boxes[:, label]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, centre y, width, height -> x1, y1, x2, y2."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU (N,) of xyxy ``boxes`` (N, 4) with one xyxy ``box`` (4,)."""
    return torchvision_box_iou(boxes, box.to(boxes).reshape(1, 4))[:, 0]
