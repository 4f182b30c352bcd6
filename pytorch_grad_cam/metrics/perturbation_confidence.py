"""Perturbation metrics: perturb the input by the CAM, and compare the model's score on
the perturbed input with its score on the original.

Everything is batched: the perturbation is applied to the whole batch in torch on the
input's device, and the model runs on the perturbed batch ``batch_size`` images at a
time, under ``no_grad``. A user-supplied per-image perturbation ``f(img (C, H, W),
mask (H, W))`` (the reference's signature) still works: it is called image by image.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.metrics.cams import CamsLike, as_cam_batch
from pytorch_grad_cam.scoring import ROW_WISE_TARGETS, score
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

Target = Callable[[torch.Tensor], torch.Tensor]
Targets = Optional[Sequence[Target]]
Percentile = Union[float, str]
Imputer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Images per model call when scoring perturbed batches.
DEFAULT_BATCH_SIZE = 32


# --------------------------------------------------------------------------- scoring
def score_outputs(targets: Sequence[Target], outputs: torch.Tensor) -> torch.Tensor:
    """``targets[i](outputs[i])`` for every image, float32 on the outputs' device.

    Returns:
        (N,) when every target returns one number, (N, K) when each returns K numbers.

    Raises:
        ValueError: if the targets return different numbers of values.
    """
    shared = targets[0] if len(targets) else None
    if (
        type(shared) in ROW_WISE_TARGETS
        and all(target is shared for target in targets)
        and torch.is_tensor(outputs)
        and outputs.ndim == 2
    ):
        return score(targets, outputs)
    values = [torch.as_tensor(target(output)).float().reshape(-1) for target, output in zip(targets, outputs)]
    sizes = {value.numel() for value in values}
    if len(sizes) != 1:
        raise ValueError(f"targets returned different numbers of values per image: {sorted(sizes)}")
    stacked = torch.stack(values)
    return stacked[:, 0] if sizes == {1} else stacked


def model_scores(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[Target],
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """The targets' scores of ``model`` on ``images``, run ``batch_size`` images at a time
    under ``no_grad``.

    Returns:
        float32 tensor (B,) (or (B, K) for vector-valued targets) on the model outputs' device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            stop = min(start + batch_size, images.shape[0])
            chunks.append(score_outputs(targets[start:stop], model(images[start:stop])))
    return torch.cat(chunks)


def resolve_targets(targets: Targets, model: nn.Module, input_tensor: torch.Tensor, batch_size: int) -> List[Target]:
    """``targets`` as a list of one target per image; None means each image's top class
    (``ClassifierOutputTarget(argmax)`` of the model's output on the unperturbed input).

    Raises:
        ValueError: if the number of targets is not the batch size.
    """
    batch = input_tensor.shape[0]
    if targets is None:
        with torch.no_grad():
            classes = torch.cat(
                [model(input_tensor[i : i + batch_size]).argmax(-1) for i in range(0, batch, batch_size)]
            )
        return [ClassifierOutputTarget(int(c)) for c in classes.reshape(batch, -1)[:, 0]]
    targets = list(targets)
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} targets for a batch of {batch} images; pass one target per image")
    return targets


def _check_input(input_tensor: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(input_tensor) or input_tensor.ndim != 4:
        shape = tuple(input_tensor.shape) if torch.is_tensor(input_tensor) else type(input_tensor).__name__
        raise ValueError(f"input_tensor must be a (B, C, H, W) tensor, got {shape}")
    return input_tensor


# ----------------------------------------------------------------------- thresholds
def percentile_thresholds(maps: torch.Tensor, percentile: float) -> torch.Tensor:
    """Per-image ``np.percentile(map, percentile)`` (linear interpolation), as (B,) in the
    maps' dtype (numpy returns float32 for float32 maps)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100] or 'auto', got {percentile}")
    flat = maps.flatten(1).to(torch.float64)
    return torch.quantile(flat, percentile / 100, dim=1, interpolation="linear").to(maps.dtype)


def otsu_thresholds(levels: torch.Tensor) -> torch.Tensor:
    """Otsu's threshold of each image of integer ``levels`` (B, H, W) in [0, 255], as OpenCV's
    ``THRESH_OTSU`` picks it: the first t maximising the between-class variance of
    {≤ t} and {> t}; 0 if no split separates two non-empty classes.

    Returns:
        (B,) float64 thresholds.
    """
    batch = levels.shape[0]
    flat = levels.reshape(batch, -1).long()
    histogram = torch.zeros(batch, 256, dtype=torch.float64, device=levels.device)
    histogram.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float64))
    probability = histogram / flat.shape[1]
    grey = torch.arange(256, dtype=torch.float64, device=levels.device)
    below = probability.cumsum(1)  # weight of {≤ t}
    below_mean_sum = (probability * grey).cumsum(1)
    total_mean = below_mean_sum[:, -1:]
    above = 1 - below
    eps = float(torch.finfo(torch.float32).eps)
    valid = (torch.minimum(below, above) >= eps) & (torch.maximum(below, above) <= 1 - eps)
    variance = (total_mean * below - below_mean_sum) ** 2 / (below * above).clamp_min(eps)
    variance = torch.where(valid, variance, torch.zeros_like(variance))
    return variance.argmax(1).to(torch.float64)  # the first maximum, as OpenCV's strict >


def keep_least_relevant(maps: torch.Tensor, percentile: Percentile) -> torch.Tensor:
    """Which pixels survive removing the most relevant ones: (B, H, W) bool.

    A numeric ``percentile`` p keeps ``map < np.percentile(map, p)`` (the lowest p %);
    ``'auto'`` keeps ``uint8(255·map) <= t`` for Otsu's threshold t (removes the pixels
    OpenCV's Otsu calls foreground, the most relevant, like every numeric percentile; the
    reference keeps them instead).
    """
    if isinstance(percentile, str):
        if percentile != "auto":
            raise ValueError(f"percentile must be a number in [0, 100] or 'auto', got {percentile!r}")
        # np.uint8(255 * mask): truncation, wrapping modulo 256 as numpy's cast does.
        levels = torch.remainder(torch.trunc(maps.double() * 255), 256)
        return levels <= otsu_thresholds(levels)[:, None, None]
    return maps < percentile_thresholds(maps, float(percentile))[:, None, None]


# --------------------------------------------------------------------- perturbations
class BatchedPerturbation:
    """A perturbation with a batched form: ``perturb_batch(images (B, C, H, W),
    maps (B, H, W))``; calling it on one image ``(img (C, H, W), mask (H, W))`` uses that."""

    def perturb_batch(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Perturb one image ``input`` (C, H, W) by ``mask`` (H, W); returns (C, H, W)."""
        mask = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
        return self.perturb_batch(input[None], mask.to(device=input.device, dtype=torch.float32)[None])[0]


def _impute(imputer: Imputer, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Run ``imputer`` on a batch: its ``impute_batch`` if it has one, else image by image
    with the reference's signature ``imputer(img (C, H, W), mask (H, W) float32)``."""
    masks = keep.to(torch.float32)
    batched = getattr(imputer, "impute_batch", None)
    if batched is not None:
        return batched(images, masks)
    return torch.stack([torch.as_tensor(imputer(image, mask)).to(images.device) for image, mask in zip(images, masks)])


class RemoveMostRelevantFirst(BatchedPerturbation):
    """Impute the most relevant pixels: those at or above the map's ``percentile``-th
    percentile (the top (100 − p) %), keeping the rest; then ``imputer(input, keep)``.

    Args:
        percentile: in [0, 100], or ``'auto'`` for an Otsu threshold (removes the pixels
            above it, i.e. the most relevant ones too).
        imputer: fills in the removed pixels: a callable ``(img (C, H, W), mask (H, W)) ->
            (C, H, W)`` with mask 1 for kept and 0 for removed pixels; an
            ``impute_batch(images, masks)`` method, if it has one, is used instead.
    """

    def __init__(self, percentile: Percentile, imputer: Imputer) -> None:
        keep_least_relevant(torch.zeros(1, 1, 1), percentile)  # validate early
        self.percentile = percentile
        self.imputer = imputer

    def keep_mask(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool: the pixels kept for ``maps`` (B, H, W)."""
        return keep_least_relevant(maps, self.percentile)

    def perturb_batch(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Impute the removed pixels of ``images`` (B, C, H, W) given ``maps`` (B, H, W).

        Returns:
            The perturbed (B, C, H, W) tensor, on ``images``' device.
        """
        return _impute(self.imputer, images, self.keep_mask(maps))


class RemoveLeastRelevantFirst(RemoveMostRelevantFirst):
    """Impute the least relevant pixels, keeping the top ``percentile`` % (the reference:
    :class:`RemoveMostRelevantFirst` applied to ``1 − map``)."""

    def keep_mask(self, maps: torch.Tensor) -> torch.Tensor:
        return keep_least_relevant(1 - maps, self.percentile)


def _batched_form(perturbation: Callable) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``perturbation.perturb_batch`` unless the per-image ``__call__`` was overridden."""
    if isinstance(perturbation, BatchedPerturbation) and type(perturbation).__call__ is BatchedPerturbation.__call__:
        return perturbation.perturb_batch
    return None


def perturb(perturbation: Callable, input_tensor: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Apply ``perturbation`` to every image of ``input_tensor`` with its map of ``maps``.

    A library perturbation runs batched on the device. Any other callable is called as
    the reference does, image by image: ``perturbation(input_tensor[i].cpu(), map_i)``
    with ``map_i`` a float32 (H, W) CPU tensor; its results are moved back to the input's
    device.

    Returns:
        The perturbed (B, C, H, W) tensor on the input's device.
    """
    batched = _batched_form(perturbation)
    if batched is not None:
        return batched(input_tensor, maps)
    cpu_maps = maps.cpu()
    return torch.stack(
        [
            torch.as_tensor(perturbation(image.cpu(), cpu_map)).to(input_tensor.device)
            for image, cpu_map in zip(input_tensor, cpu_maps)
        ]
    )


# --------------------------------------------------------------------------- metrics
class PerturbationConfidenceMetric:
    """The change of the targets' scores when the input is perturbed by the CAM.

    Args:
        perturbation: ``(img (C, H, W), mask (H, W)) -> (C, H, W)``, e.g.
            ``RemoveMostRelevantFirst(90, imputer)``; the library's own perturbations run
            batched.
    """

    def __init__(self, perturbation: Callable) -> None:
        self.perturbation = perturbation

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: CamsLike,
        targets: Targets,
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Union[np.ndarray, Tuple[np.ndarray, torch.Tensor]]:
        """Score the perturbed batch.

        Args:
            input_tensor: (B, C, H, W) on the model's device.
            cams: (B, H, W) numpy/torch maps or a list of (H, W) maps (float, bool or uint8).
            targets: one target per image (``ClassifierOutputSoftmaxTarget(c)``); None for
                each image's top class.
            model: the network.
            return_visualization: also return the perturbed batch.
            return_diff: return score_after − score_before; False for score_after alone.
            batch_size: images per model call.

        Returns:
            numpy float32 (B,) ((B, K) for vector-valued targets), or with
            ``return_visualization`` the pair ``(scores, perturbed (B, C, H, W) tensor)``.

        Raises:
            ValueError: on cams whose number or size does not match the input, or a
                number of targets that is not B.
        """
        input_tensor = _check_input(input_tensor)
        maps = as_cam_batch(cams, input_tensor)
        targets = resolve_targets(targets, model, input_tensor, batch_size)
        perturbed = perturb(self.perturbation, input_tensor, maps)
        scores = model_scores(model, perturbed, targets, batch_size)
        if return_diff:
            scores = scores - model_scores(model, input_tensor, targets, batch_size)
        result = scores.cpu().numpy().astype(np.float32)
        return (result, perturbed) if return_visualization else result


class AveragerAcrossThresholds:
    """The mean of a perturbation metric over several percentiles.

    Args:
        imputer: a factory ``percentile -> metric`` (e.g. ``ROADMostRelevantFirst``), whose
            metric is called as ``(input_tensor, cams, targets, model)``.
        percentiles: the percentiles to average over.
    """

    def __init__(
        self,
        imputer: Callable[[Percentile], Callable],
        percentiles: Sequence[Percentile] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    ) -> None:
        self.imputer = imputer
        self.percentiles = tuple(percentiles)
        if not self.percentiles:
            raise ValueError("percentiles is empty; pass at least one percentile")

    def __call__(
        self,
        input_tensor: torch.Tensor,
        cams: CamsLike,
        targets: Targets,
        model: nn.Module,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> np.ndarray:
        """The mean over percentiles of each metric's per-image result.

        Library metrics share one forward pass of the unperturbed batch.

        Returns:
            numpy float32 (B,) (or (B, K)).

        Raises:
            ValueError: as :class:`PerturbationConfidenceMetric`.
        """
        input_tensor = _check_input(input_tensor)
        maps = as_cam_batch(cams, input_tensor)
        targets = resolve_targets(targets, model, input_tensor, batch_size)
        metrics = [self.imputer(percentile) for percentile in self.percentiles]
        results = []
        before = None
        for metric in metrics:
            if type(metric).__call__ is PerturbationConfidenceMetric.__call__:
                if before is None:
                    before = model_scores(model, input_tensor, targets, batch_size)
                perturbed = perturb(metric.perturbation, input_tensor, maps)
                after = model_scores(model, perturbed, targets, batch_size)
                results.append((after - before).cpu().numpy().astype(np.float32))
            else:
                results.append(np.float32(metric(input_tensor, cams, targets, model)))
        return np.mean(np.stack(results), axis=0).astype(np.float32)
