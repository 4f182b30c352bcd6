"""BoxTarget: the score of one detected object, for any detector family; MaskTarget: the
mask an instance-segmentation model predicts for it."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torchvision.ops import roi_align

from pytorch_grad_cam.detection.candidates import Candidates, box_iou
from pytorch_grad_cam.scoring import scoring_perturbed

__all__ = ["BoxTarget", "MaskTarget"]


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
        indices: the candidates to score, by their position in the model's candidates,
            as matched once on the image's own detection pass (``explain_detections``
            does this): then every call scores exactly those, on any input, perturbed
            copies included, and a class that barely wins on one pass and loses on
            another by float rounding cannot unmatch the box. None: matched on each call.

    Raises (on a call):
        TypeError: if the output is not a ``Candidates`` (wrap the model with as_detector).
        ValueError: if no candidate matches on the real input: a box that is not detected
            has no score to explain (the message gives the best IoU among class-``label``
            candidates). On a perturbed copy of the input (ScoreCAM's masked images,
            AblationCAM's ablated activations; :func:`pytorch_grad_cam.scoring.perturbed`)
            the object may vanish: its score there is 0.
    """

    def __init__(
        self,
        box: Union[Sequence[float], torch.Tensor],
        label: int,
        iou_threshold: float = 0.5,
        *,
        indices: Optional[Union[Sequence[int], torch.Tensor]] = None,
    ) -> None:
        box = torch.as_tensor(box, dtype=torch.float32).reshape(-1)
        if box.numel() != 4 or not bool((box[2:] > box[:2]).all()):
            raise ValueError(f"box must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {box.tolist()}")
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.box = box
        self.label = int(label)
        self.iou_threshold = float(iou_threshold)
        self.indices = None if indices is None else torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if self.indices is not None and self.indices.numel() == 0:
            raise ValueError("indices is empty; pass the matched candidates' positions, or None to match on each call")

    def matches(self, candidates: Candidates) -> torch.Tensor:
        """(N,) bool: the candidates this target scores.

        Raises:
            IndexError: if ``label`` or one of ``indices`` is outside the candidates.
        """
        count, classes = candidates.scores.shape
        if not 0 <= self.label < classes:
            raise IndexError(f"label {self.label} is outside the model's {classes} classes")
        if self.indices is not None:
            if int(self.indices.min()) < 0 or int(self.indices.max()) >= count:
                raise IndexError(
                    f"indices go up to {int(self.indices.max())} but the model gives {count} candidates; "
                    "indices hold only for the input size they were matched at"
                )
            matched = torch.zeros(count, dtype=torch.bool, device=candidates.scores.device)
            return matched.index_fill_(0, self.indices.to(matched.device), True)
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
        return self.matched_score(output, matched)

    def matched_score(self, output: Candidates, matched: torch.Tensor) -> torch.Tensor:
        """The score of the ``matched`` (N,) candidates (at least one): their mean
        class-``label`` confidence."""
        return output.scores[matched, self.label].mean()

    def __repr__(self) -> str:
        fixed = "" if self.indices is None else f", indices={self.indices.tolist()}"
        return f"BoxTarget(box={self.box.tolist()}, label={self.label}, iou_threshold={self.iou_threshold}{fixed})"


class MaskTarget(BoxTarget):
    """The mask an instance-segmentation model (Mask R-CNN) predicts for one object: over
    the candidates :class:`BoxTarget` matches, the mean of the class-``label`` mask
    probability summed over the instance's region, divided by the cells of the mask grid.

    The region, per candidate and in its mask grid: ``mask`` (a (H, W) boolean mask in
    input pixels, for "why is this part of the object segmented") resampled into the
    candidate's box, or by default the cells the candidate itself gives a probability of
    at least ``threshold`` (its predicted mask). The score is in [0, 1]; its gradient
    flows through the mask head only where the region is.

    Args:
        box: as :class:`BoxTarget`.
        label: as :class:`BoxTarget`.
        iou_threshold: as :class:`BoxTarget`.
        indices: as :class:`BoxTarget`.
        mask: None, or (H, W) bool (or 0/1) in the pixels of the model's input.
        threshold: the probability from which a cell is in the predicted mask.

    Raises (on a call):
        TypeError/ValueError: as BoxTarget; ValueError if the candidates carry no masks
            (the model is not an instance-segmentation model: use BoxTarget).
    """

    def __init__(
        self,
        box: Union[Sequence[float], torch.Tensor],
        label: int,
        iou_threshold: float = 0.5,
        *,
        mask: Optional[torch.Tensor] = None,
        threshold: float = 0.5,
        indices: Optional[Union[Sequence[int], torch.Tensor]] = None,
    ) -> None:
        super().__init__(box, label, iou_threshold, indices=indices)
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.ndim != 2:
                raise ValueError(f"mask must be (H, W) in input pixels, got shape {tuple(mask.shape)}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        self.mask = None if mask is None else mask.to(torch.float32)
        self.threshold = float(threshold)

    def __call__(self, output: object) -> torch.Tensor:
        if isinstance(output, Candidates) and output.masks is None:
            raise ValueError(
                "MaskTarget needs candidates with masks (Mask R-CNN); this model gives none: use BoxTarget"
            )
        return super().__call__(output)  # its checks and no-match rules, then matched_score

    def matched_score(self, output: Candidates, matched: torch.Tensor) -> torch.Tensor:
        """The matched candidates' mean mask probability over their region (see the class)."""
        probability = torch.sigmoid(output.class_masks(matched, self.label))
        region = self._region(output.boxes_of(self.label)[matched].detach(), probability.detach())
        return (probability * region).mean(dim=(1, 2)).mean()

    def _region(self, boxes: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
        """(M, h, w) 0/1: the region in each matched candidate's mask grid."""
        if self.mask is None:
            return (probability >= self.threshold).to(probability.dtype)
        mask = self.mask.to(boxes.device)[None, None]
        rois = torch.cat([torch.zeros(len(boxes), 1, device=boxes.device), boxes.float()], dim=1)
        resampled = roi_align(mask, rois, output_size=tuple(probability.shape[1:]), aligned=True)
        return (resampled[:, 0] >= 0.5).to(probability.dtype)

    def __repr__(self) -> str:
        return "Mask" + super().__repr__() + ("" if self.mask is None else " (with a given mask)")
