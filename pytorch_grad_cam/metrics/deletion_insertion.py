"""Deletion and Insertion (Petsiuk et al. 2018, the RISE paper): the model's score as
the pixels are removed from the image, or inserted into a blank one, in the order of
the map, most relevant first.

A faithful map makes the score fall fast under deletion (a low area under the curve)
and rise fast under insertion (a high area). Every step of every image goes through
the model in chunks of ``batch_size`` images, built on the input's device only when
their chunk is scored.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam.checks import check_input
from pytorch_grad_cam.metrics.cams import CamsLike, as_cam_batch
from pytorch_grad_cam.model_state import model_device
from pytorch_grad_cam.scoring import ROW_WISE_TARGETS, Target, check_targets, score
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

__all__ = ["DeletionMetric", "InsertionMetric", "gaussian_blur"]

Baseline = Union[str, float, torch.Tensor]


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) images with a Gaussian of standard deviation ``sigma`` pixels.

    Two 1D convolutions (the kernel is separable), truncated at ``ceil(3 sigma)`` pixels,
    edges padded by repeating the border pixel (``scipy.ndimage.gaussian_filter`` with
    ``mode="nearest"``).

    Returns:
        A new tensor of the images' shape, dtype and device.

    Raises:
        ValueError: if ``images`` is not 4D or ``sigma`` is not a positive number.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    radius = int(math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * float(sigma) ** 2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, kernel.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, kernel.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


class _OneNumber:
    """A target that must give one number per image (Deletion and Insertion draw one
    curve per image): Python and numpy numbers are accepted as tensors, and a target
    returning several values is an error that names it and says what to do."""

    def __init__(self, target: Target, metric: str) -> None:
        self.target = target
        self.metric = metric

    def __call__(self, output: object) -> torch.Tensor:
        value = self.target(output)
        if isinstance(value, (numbers.Real, np.number)) and not isinstance(value, bool):
            return torch.tensor(float(value))
        if torch.is_tensor(value) and value.numel() == 1:
            return value
        shape = (
            f"shape {tuple(value.shape)}"
            if torch.is_tensor(value) or isinstance(value, np.ndarray)
            else type(value).__name__
        )
        raise ValueError(
            f"target {self.target!r} returned {shape} for one image; {self.metric} draws one score "
            "curve per image, so each target must return one number: choose one value (e.g. "
            "ClassifierOutputTarget(k) or lambda output: output[k]) or reduce them (e.g. lambda output: "
            "output[:3].sum()). CamMultImageConfidenceChange and the ROAD metrics score each value of a "
            "vector-valued target, returning (B, K)."
        )


def _curve_scores(targets: Sequence[Target], outputs: torch.Tensor, metric: str) -> torch.Tensor:
    """(N,) float32 scores ``targets[i](outputs[i])``; raises ValueError (naming the target)
    when one returns more than one number."""
    if type(targets[0]) in ROW_WISE_TARGETS and all(target is targets[0] for target in targets):
        return score(targets, outputs)  # one indexing operation for the whole chunk
    return score([_OneNumber(target, metric) for target in targets], outputs)


class _PixelOrderMetric:
    """Deletion and Insertion share everything but the direction; see their docstrings."""

    #: True: pixels go from the image to the baseline (deletion); False: the reverse.
    removes: bool = True
    default_baseline: Baseline = "constant"

    def __init__(
        self,
        steps: int = 20,
        baseline: Optional[Baseline] = None,
        *,
        sigma: float = 5.0,
        value: float = 0.0,
        batch_size: int = 64,
    ) -> None:
        for name, number in (("steps", steps), ("batch_size", batch_size)):
            if isinstance(number, bool) or not isinstance(number, numbers.Integral) or number < 1:
                raise ValueError(f"{name} must be a positive integer, got {number!r}")
        baseline = self.default_baseline if baseline is None else baseline
        if isinstance(baseline, str):
            if baseline not in ("blur", "constant"):
                raise ValueError(
                    f'baseline must be "blur", "constant" or a tensor of the input\'s shape, not {baseline!r}'
                )
            if baseline == "blur" and (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0):
                raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
        elif not torch.is_tensor(baseline):
            raise TypeError(f'baseline must be "blur", "constant" or a torch tensor, not {type(baseline).__name__}')
        self.steps = int(steps)
        self.baseline = baseline
        self.sigma = sigma
        self.value = float(value)
        self.batch_size = int(batch_size)

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: CamsLike,
        targets: Optional[Sequence[Target]],
        model: nn.Module,
        return_curve: bool = False,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Score every step of every image and integrate the curves.

        Args:
            input_tensor: (B, C, H, W) float images, as the model takes them, or (B, C, L)
                signals (whose samples are removed or inserted along time).
            cams: (B, H, W) maps ((B, L) for signals) (numpy, torch or a list of (H, W) maps; float, bool or
                uint8); only their order matters, ties broken by position (row-major).
            targets: one callable per image mapping that image's output to one number
                (a one-element tensor or a Python/numpy number), usually
                ``ClassifierOutputSoftmaxTarget(category)``; None scores the softmax
                probability of each image's top class on the intact image. A target
                returning several values is an error (reduce it to one number first).
            model: the network, called as it is (its mode is not changed) under no_grad.
            return_curve: also return the curves.

        Returns:
            The areas under the curves, numpy float32 (B,) (trapezoid rule over the
            fraction of pixels changed, x in [0, 1]); with ``return_curve`` also the
            curves, numpy float32 (B, steps + 1): the scores after 0, 1, ..., steps
            steps, step k having changed ``k * H * W // steps`` pixels.

        Raises:
            TypeError/ValueError: on an input that is not a finite (B, C, H, W) float
                tensor, maps not (B, H, W) of the input's size, targets whose number is
                not B, a baseline that does not broadcast to the input, or a target that
                does not return one number (the message names it and how to reduce it).
        """
        input_tensor, maps, model = _as_images(input_tensor, cams, model)
        batch, _, height, width = input_tensor.shape
        if model.training:
            warnings.warn(
                "the model is in training mode: BatchNorm statistics will update and dropout "
                "is random; call model.eval() first for a faithful score",
                stacklevel=2,
            )
        device = model_device(model)
        with torch.no_grad():
            targets = self._targets(targets, batch, input_tensor, model, device)
            baseline = self._baseline_images(input_tensor)
            pixels = height * width
            order = maps.flatten(1).sort(dim=1, descending=True, stable=True).indices
            ranks = torch.empty_like(order).scatter_(
                1, order, torch.arange(pixels, device=order.device).expand(batch, -1)
            )
            counts = torch.arange(self.steps + 1, device=input_tensor.device) * pixels // self.steps
            per_image = self.steps + 1
            scores = []
            for start in range(0, batch * per_image, self.batch_size):
                index = torch.arange(start, min(start + self.batch_size, batch * per_image))
                image, step = index // per_image, index % per_image
                image_d, step_d = image.to(input_tensor.device), step.to(input_tensor.device)
                changed = (ranks[image_d] < counts[step_d][:, None]).reshape(-1, 1, height, width)
                source, fill = input_tensor[image_d], baseline[image_d]
                if self.removes:
                    perturbed = torch.where(changed, fill, source)
                else:
                    perturbed = torch.where(changed, source, fill)
                outputs = model(perturbed.to(device))
                chunk_scores = _curve_scores([targets[i] for i in image.tolist()], outputs, type(self).__name__)
                scores.append(chunk_scores.to(input_tensor.device).reshape(-1))
            curves = torch.cat(scores).reshape(batch, per_image)
            fractions = counts.float() / pixels
            areas = torch.trapezoid(curves, fractions, dim=1)
        areas_np = areas.cpu().numpy().astype(np.float32)
        if return_curve:
            return areas_np, curves.cpu().numpy().astype(np.float32)
        return areas_np

    # ----------------------------------------------------------------- helpers
    def _baseline_images(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """The baseline (B, C, H, W) that removed pixels take (or inserted ones leave)."""
        if isinstance(self.baseline, str):
            if self.baseline == "blur":
                return gaussian_blur(input_tensor, self.sigma)
            return torch.full_like(input_tensor, self.value)
        baseline = self.baseline.to(device=input_tensor.device, dtype=input_tensor.dtype)
        if input_tensor.shape[-2] == 1 and baseline.ndim in (2, 3):
            baseline = baseline.unsqueeze(-2)  # a signal's (C, L) / (B, C, L), as signals are held
        try:
            return baseline.expand_as(input_tensor)
        except RuntimeError:
            raise ValueError(
                f"the baseline tensor {tuple(baseline.shape)} does not broadcast to the input "
                f"{tuple(input_tensor.shape)}; pass (C, H, W) or (B, C, H, W)"
            ) from None

    @staticmethod
    def _targets(
        targets: Optional[Sequence[Target]],
        batch: int,
        input_tensor: torch.Tensor,
        model: nn.Module,
        device: torch.device,
    ) -> List[Target]:
        checked = check_targets(targets, None, batch)
        if checked is not None:
            return checked
        outputs = model(input_tensor.to(device))
        if not torch.is_tensor(outputs) or outputs.ndim != 2:
            raise ValueError(
                "targets=None scores the top class of a (B, classes) output; this model "
                "returns something else, so pass targets=[...] explicitly"
            )
        return [ClassifierOutputSoftmaxTarget(c) for c in outputs.argmax(dim=1).tolist()]


class _SignalModel(nn.Module):
    """A model of (B, C, L) signals called with them held as (B, C, 1, L) images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training  # the flag only: the model's own modules are not touched

    def forward(self, images: torch.Tensor) -> object:
        return self.model(images.squeeze(2))


def _as_images(input_tensor: object, cams: CamsLike, model: nn.Module) -> Tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """(images (B, C, H, W), maps (B, H, W), model): signals (B, C, L) and their (B, L)
    maps become one-row images and maps, so that removing pixels removes samples.

    Raises:
        TypeError/ValueError: as ``check_input`` and ``as_cam_batch``, and on another rank.
    """
    input_tensor = check_input(input_tensor, model)
    if input_tensor.ndim == 3:
        rows = torch.as_tensor(np.asarray(cams) if not torch.is_tensor(cams) else cams)
        if rows.ndim != 2:
            raise ValueError(f"cams of (B, C, L) signals must be (B, L), got shape {tuple(rows.shape)}")
        images = input_tensor.unsqueeze(2)
        return images, as_cam_batch(rows[:, None], images), _SignalModel(model)
    if input_tensor.ndim != 4:
        raise ValueError(f"input_tensor must be (B, C, H, W), got shape {tuple(input_tensor.shape)}")
    return input_tensor, as_cam_batch(cams, input_tensor), model


class DeletionMetric(_PixelOrderMetric):
    """Deletion: the score as the most relevant pixels are removed first (lower area
    is better: the map found what the score depends on).

    Args:
        steps: the number of steps; each removes 1/``steps`` of the pixels (all channels
            of a pixel together).
        baseline: what removed pixels become: ``"constant"`` (the default, as in the
            paper: ``value`` in every channel, in the input's own scale, so 0 is the
            dataset mean for normalised inputs), ``"blur"`` (a Gaussian blur of the image,
            standard deviation ``sigma`` pixels) or a tensor (C, H, W) / (B, C, H, W).
        sigma: the blur's standard deviation in pixels.
        value: the constant.
        batch_size: images per forward pass.

    Raises:
        ValueError/TypeError: on a non-positive ``steps``/``batch_size``/``sigma`` or an
            unknown baseline.
    """

    removes = True
    default_baseline = "constant"


class InsertionMetric(_PixelOrderMetric):
    """Insertion: the score as the most relevant pixels are put back first into the
    baseline (higher area is better).

    Args:
        steps: the number of steps; each inserts 1/``steps`` of the pixels.
        baseline: the image the pixels are inserted into: ``"blur"`` (the default, as in
            the paper: a Gaussian blur of the image, standard deviation ``sigma`` pixels),
            ``"constant"`` (``value`` everywhere) or a tensor (C, H, W) / (B, C, H, W).
        sigma: the blur's standard deviation in pixels.
        value: the constant.
        batch_size: images per forward pass.

    Raises:
        ValueError/TypeError: on a non-positive ``steps``/``batch_size``/``sigma`` or an
            unknown baseline.
    """

    removes = False
    default_baseline = "blur"
