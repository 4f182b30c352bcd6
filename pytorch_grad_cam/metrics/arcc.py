"""ARCC: one score per explanation from Average drop-in-ROAD, Coherency and Complexity,
their harmonic mean (each in [0, 1], higher is better)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics.cams import CamsLike, as_cam_batch
from pytorch_grad_cam.metrics.perturbation_confidence import DEFAULT_BATCH_SIZE, Targets
from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADCombined

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_tensor_batch(maps: CamsLike) -> torch.Tensor:
    """``maps`` ((B, H, W) or a list of (H, W)) as float32 (B, H, W) on their own device
    (the CPU for numpy), through :func:`as_cam_batch`."""
    sample = maps[0] if isinstance(maps, (list, tuple)) and maps else maps
    if not hasattr(sample, "shape"):
        raise TypeError(f"maps must be (B, H, W) or a list of (H, W) maps, not {type(maps).__name__}")
    size = tuple(sample.shape) if sample is not maps else tuple(maps.shape)[1:]
    if len(size) != 2:
        raise ValueError(f"maps must be (B, H, W) or a list of (H, W) maps; got a map of shape {size}")
    device = sample.device if torch.is_tensor(sample) else torch.device("cpu")
    carrier = torch.empty((), device=device).expand(len(maps), 1, *size)
    return as_cam_batch(maps, carrier)


def batch_pearson_coherency(cams_a: ArrayLike, cams_b: ArrayLike) -> np.ndarray:
    """Pearson's correlation of each pair of maps: cov(a, b) / (σ_a·σ_b + 1e-8), with
    (n − 1) in the covariance and the standard deviations (computed in float64).

    Args:
        cams_a: (B, H, W) (or (B, ...)) numpy arrays or tensors.
        cams_b: the same shape as ``cams_a``.

    Returns:
        numpy float32 (B,).

    Raises:
        ValueError: if the two batches' shapes differ.
    """
    a = torch.as_tensor(np.asarray(cams_a) if not torch.is_tensor(cams_a) else cams_a.detach().cpu())
    b = torch.as_tensor(np.asarray(cams_b) if not torch.is_tensor(cams_b) else cams_b.detach().cpu())
    if a.shape != b.shape:
        raise ValueError(f"the two batches of maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    covariance = (a * b).sum(1) / (a.shape[1] - 1)
    correlation = covariance / (a.std(1, correction=1) * b.std(1, correction=1) + 1e-8)
    return correlation.numpy().astype(np.float32)


class Complexity:
    """The mean |map| per image: how much of the image the explanation lights up
    (lower is simpler)."""

    def __call__(self, grayscale_cams: CamsLike) -> np.ndarray:
        """Returns numpy float32 (B,) for (B, H, W) maps (numpy, torch or a list of (H, W))."""
        maps = _as_tensor_batch(grayscale_cams)
        return maps.abs().mean((1, 2)).cpu().numpy().astype(np.float32)


class Coherency:
    """How much the explanation of the input masked by its own map agrees with the map:
    (ρ(base_method(input · map), map) + 1) / 2, in [0, 1]."""

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: CamsLike,
        targets: Targets,
        model: nn.Module,
        base_method: Callable[..., np.ndarray],
    ) -> np.ndarray:
        """Args:
            input_tensor: (B, C, H, W).
            grayscale_cams: the maps (B, H, W) ``base_method`` gave for ``input_tensor``.
            targets: passed to ``base_method``.
            model: unused (``base_method`` holds the model); kept for the reference's order.
            base_method: the CAM object, called as ``base_method(input_tensor=mixed,
                targets=targets)``.

        Returns:
            numpy float32 (B,).

        Raises:
            ValueError: on maps that do not match the input.
        """
        maps = as_cam_batch(grayscale_cams, input_tensor)
        mixed = input_tensor * maps[:, None].to(input_tensor.dtype)
        mixed_cams = as_cam_batch(base_method(input_tensor=mixed, targets=targets), input_tensor)
        return ((batch_pearson_coherency(mixed_cams.cpu(), maps.cpu()) + 1) / 2).astype(np.float32)


class ARCC:
    """ARCC = 3 / (1/(coherency + 1e-8) + 1/((1 − complexity) + 1e-8) + 1/(road + 1e-8)):
    the **harmonic** mean of the three (as the reference computes it; its docstring says
    geometric), with road = clip(2 · ROADCombined(road_percentiles), 0, 1).

    Args:
        base_method: the CAM object whose maps are evaluated (used by Coherency).
        road_percentiles: percentiles of the ROAD part.
        imputer: the ROAD imputer (default ``NoisyLinearImputer()``).
    """

    def __init__(
        self,
        base_method: Callable[..., np.ndarray],
        road_percentiles: Sequence[float] = (20, 40, 60, 80),
        *,
        imputer: Optional[NoisyLinearImputer] = None,
    ) -> None:
        self.base_method = base_method
        self.road_percentiles = tuple(road_percentiles)
        self.road = ROADCombined(self.road_percentiles, imputer=imputer)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        grayscale_cams: CamsLike,
        targets: Targets,
        model: nn.Module,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """Returns numpy float32 (B,) in [0, 1] (higher is better).

        Raises:
            ValueError: on maps or targets that do not match the batch.
        """
        coherency = Coherency()(input_tensor, grayscale_cams, targets, model, self.base_method)
        complexity = Complexity()(as_cam_batch(grayscale_cams, input_tensor))
        road = np.clip(2 * self.road(input_tensor, grayscale_cams, targets, model, batch_size=batch_size), 0, 1)
        arcc = 3 / (1 / (coherency + 1e-8) + 1 / ((1 - complexity) + 1e-8) + 1 / (road + 1e-8))
        return arcc.astype(np.float32)
