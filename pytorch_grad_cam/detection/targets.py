"""BoxTarget: the score of one detected object, for any detector family."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from pytorch_grad_cam.detection.candidates import Candidates, box_iou
from pytorch_grad_cam.scoring import scoring_perturbed

__all__ = ["BoxTarget"]


class BoxTarget:
    """The confidence the model gives one object: the mean class-``label`` confidence of
    its candidates (before NMS) that predict ``label`` as their top class and overlap
    ``box`` with IoU >= ``iou_threshold``.

    All matched candidates count, each equally (the mean keeps the score in [0, 1]
    whatever their number), so the map explains every candidate that would survive as
    this object, not one that NMS happened to keep. Called on one image's
    :class:`~pytorch_grad_cam.detection.Candidates` (the output of a model wrapped by
    :func:`~pytorch_grad_cam.detection.as_detector`).

    Args:
        box: (x1, y1, x2, y2) in the pixels of the model's input.
        label: the class index, as the model numbers its classes.
        iou_threshold: the least IoU a candidate's box must have with ``box``.

    Raises (on a call):
        TypeError: if the output is not a ``Candidates`` (wrap the model with as_detector).
        ValueError: if no candidate matches on the real input: a box that is not detected
            has no score to explain (the message gives the best IoU among class-``label``
            candidates). On a perturbed copy of the input (ScoreCAM's masked images,
            AblationCAM's ablated activations; :func:`pytorch_grad_cam.scoring.perturbed`)
            the object may vanish: its score there is 0.
    """

    def __init__(self, box: Union[Sequence[float], torch.Tensor], label: int, iou_threshold: float = 0.5) -> None:
        box = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
        if box.numel() != 4 or not bool((box[2:] > box[:2]).all()):
            raise ValueError(f"box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box.tolist()}")
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.box = box
        self.label = int(label)
        self.iou_threshold = float(iou_threshold)

    def matches(self, candidates: Candidates) -> torch.Tensor:
        """(N,) bool: the candidates this target scores."""
        if not 0 <= self.label < candidates.scores.shape[1]:
            raise IndexError(f"label {self.label} is outside the model's {candidates.scores.shape[1]} classes")
        iou = box_iou(candidates.boxes_of(self.label).detach(), self.box)
        return (iou >= self.iou_threshold) & (candidates.scores.detach().argmax(dim=1) == self.label)

    def __call__(self, output: object) -> torch.Tensor:
        if not isinstance(output, Candidates):
            raise TypeError(
                f"BoxTarget needs one image's Candidates, got {type(output).__name__}; wrap the model: "
                "pytorch_grad_cam.detection.as_detector(model)"
            )
        matched = self.matches(output)
        if not bool(matched.any()) and scoring_perturbed():
            return output.scores.sum() * 0  # the object vanished from a perturbed copy: confidence 0
        if not bool(matched.any()):
            same = output.scores.detach().argmax(dim=1) == self.label
            best = float(box_iou(output.boxes_of(self.label).detach()[same], self.box).max()) if same.any() else 0.0
            raise ValueError(
                f"no candidate of class {self.label} overlaps box {[round(v, 1) for v in self.box.tolist()]} with "
                f"IoU >= {self.iou_threshold} (best: {best:.2f}); pass a detected box (xyxy in input pixels) "
                "or a lower iou_threshold"
            )
        return output.scores[matched, self.label].mean()

    def __repr__(self) -> str:
        return f"BoxTarget(box={self.box.tolist()}, label={self.label}, iou_threshold={self.iou_threshold})"
