"""Confidence change when the input is multiplied by the CAM (everything the map calls
irrelevant fades to 0): the "Average Drop" and "Increase in Confidence" metrics."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics.cams import CamsLike
from pytorch_grad_cam.metrics.perturbation_confidence import (
    DEFAULT_BATCH_SIZE,
    BatchedPerturbation,
    PerturbationConfidenceMetric,
    Targets,
)

Scores = Union[np.ndarray, Tuple[np.ndarray, torch.Tensor]]


def multiply_tensor_with_cam(input_tensor: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """``input_tensor · cam``, broadcast over channels: (C, H, W) × (H, W), or a batch
    (B, C, H, W) × (B, H, W).

    Returns:
        The product (a new tensor).
    """
    cam = torch.as_tensor(cam, device=input_tensor.device)
    if input_tensor.ndim == 4 and cam.ndim == 3:
        cam = cam[:, None]
    return input_tensor * cam


class _MultiplyByCam(BatchedPerturbation):
    def perturb_batch(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        return multiply_tensor_with_cam(images, maps.to(images.dtype))


class CamMultImageConfidenceChange(PerturbationConfidenceMetric):
    """score(input · cam) − score(input) per image (``return_diff=False``: the first term)."""

    def __init__(self) -> None:
        super().__init__(_MultiplyByCam())


class _SummarisedConfidenceChange(CamMultImageConfidenceChange):
    """A per-image summary of the confidence change score(input · cam) − score(input)."""

    def summarise(self, changes: np.ndarray) -> np.ndarray:
        """The summary (B,) of the changes (B,); subclasses state it."""
        raise NotImplementedError

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: CamsLike,
        targets: Targets,
        model: nn.Module,
        return_visualization: bool = False,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Scores:
        """Args as :class:`PerturbationConfidenceMetric`.

        Returns:
            numpy float32 (B,), or ``(summary, input · cam)`` with ``return_visualization``.

        Raises:
            ValueError: on cams or targets that do not match the batch.
        """
        result = super().__call__(input_tensor, cams, targets, model, return_visualization, batch_size=batch_size)
        changes, visualization = result if return_visualization else (result, None)
        summary = self.summarise(changes)
        return (summary, visualization) if return_visualization else summary


class DropInConfidence(_SummarisedConfidenceChange):
    """max(score(input) − score(input · cam), 0) per image (lower is better)."""

    def summarise(self, changes: np.ndarray) -> np.ndarray:
        return np.maximum(-changes, 0).astype(np.float32)


class IncreaseInConfidence(_SummarisedConfidenceChange):
    """1.0 where score(input · cam) > score(input), else 0.0, per image; its mean over a
    data set is the "Increase in Confidence" (higher is better)."""

    def summarise(self, changes: np.ndarray) -> np.ndarray:
        return np.float32(changes > 0)
