"""PerturbationCAM: the base of the gradient-free methods that score perturbed copies
of each image (ScoreCAM, SS-CAM, IS-CAM, AblationCAM): the copies run in chunks of
``batch_size`` under ``no_grad`` with a progress bar, and their scores stay on the device.

The masked-copy methods (ScoreCAM, SS-CAM, IS-CAM) share one loop,
:meth:`PerturbationCAM.get_cam_weights`: each activation map, upsampled and min-max
normalised, masks the image in the method's recipe (:meth:`PerturbationCAM.copy_recipe`)
once per draw (:meth:`PerturbationCAM.draws_per_mask`); the draws' scores are reduced
per mask (:meth:`PerturbationCAM.reduce_draws`) and their softmax over the channels is
the weights. Each method file states only its recipe, draws and reduction. AblationCAM
ablates activations instead, in its own :meth:`~pytorch_grad_cam.base_cam.BaseCAM.layer_map`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.layers import LayerSpec
from pytorch_grad_cam.precision import callers_precision
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.scoring import Target, perturbed, score
from pytorch_grad_cam.utils.image import ChannelsLastCalls, resize_maps

__all__ = [
    "PerturbationCAM",
    "CopyRecipe",
    "MaskPlan",
    "MASKED_BATCH_BYTES",
    "same_rows",
    "normalised_masks",
    "distinct_masks",
    "every_mask",
    "masked_chunk_size",
]

#: Bytes of masked input images per forward pass at most (``batch_size`` stays the upper
#: limit): the batch of masked copies, and the activations the model makes of it, is the
#: masked-copy methods' peak memory. 16 MiB is 27 images of 3 x 224 x 224 in float32; on
#: a CPU smaller batches run as fast per image (benchmarks/).
MASKED_BATCH_BYTES = 16 * 2**20

#: A method's recipe for one call: ``recipe(row, masks, draws)`` is the (n, C, *spatial)
#: batch of perturbed copies of image ``row`` of the call's input, copy i made with mask
#: ``masks[i]`` (n, *spatial), in the input's dtype, at draw ``draws[i]`` (n,).
CopyRecipe = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]

#: Which masks of an image are scored: ``channels`` (G,) scored, in order; ``group``
#: (K,) each channel's index into the G scores (G: the all-zero mask); ``has_zero``.
MaskPlan = Tuple[torch.Tensor, torch.Tensor, bool]


class PerturbationCAM(BaseCAM):
    """A gradient-free method that scores perturbed copies of each image.

    The masked-copy methods' weights (:meth:`get_cam_weights`): M_k = min-max(upsample(A_k));
    s_k = reduce_d(target(model(copy(X, M_k, d)))) over the draws d; w = softmax_k(s).
    Where :attr:`shares_masks`, each distinct mask is scored once: channels with equal
    activation maps, and the constant channels (whose masks are all zero; every draw of
    the zero mask is the zero image, scored once), share one score, exactly as if each
    were scored. A batch that holds one image several times (one per target:
    ``explain_targets``) masks it once and scores each target on the same copies
    (:meth:`row_groups`). The copies are made per chunk of at most ``batch_size`` (fewer
    where the masked images would exceed :data:`MASKED_BATCH_BYTES`), so memory is one
    forward pass of that chunk plus the activations, never all the masked inputs.

    Args (besides those of :class:`BaseCAM`):
        batch_size: copies per extra forward pass (also settable as ``cam.batch_size``).
        progress: show a tqdm progress bar over the extra forward passes.

    Raises:
        ValueError: if ``batch_size`` is not a positive integer.
    """

    uses_gradients = False
    #: Hand the masked images to the model in ``channels_last`` memory format (4-D
    #: inputs on the CPU; :class:`~pytorch_grad_cam.utils.image.ChannelsLastCalls`):
    #: torch's CPU convolutions run them faster (the README's Performance section), and
    #: the maps equal the contiguous ones to float rounding, not bit for bit
    #: (docs/decisions.md, G11). A model that cannot take them (``.view`` of a
    #: non-contiguous tensor) gets contiguous images for the rest of the call. The model
    #: itself is not converted.
    channels_last: bool = True
    #: Score each distinct mask once (:func:`distinct_masks`); False: every channel's
    #: mask is scored (:func:`every_mask`), for recipes whose copies of equal masks differ.
    shares_masks: bool = True
    #: The order of an image's copies: False, mask by mask (each mask's draws in a row);
    #: True, draw by draw (each over every scored mask in channel order).
    draws_outer: bool = False
    #: The progress bar's title.
    title: str = "PerturbationCAM"

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
        batch_size: int = 32,
        progress: bool = True,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, target_layer=target_layer, use_cuda=use_cuda)
        self.batch_size = batch_size
        self.progress = progress

    @property
    def batch_size(self) -> int:
        """How many perturbed copies go through the network at once."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"batch_size must be a positive integer, got {value!r}")
        self._batch_size = int(value)

    def compute_cam_per_layer(self, record: Record, eigen_smooth: bool) -> List[torch.Tensor]:
        """The template's maps per layer, with the perturbed copies run as the caller runs
        the model: under the caller's ``torch.autocast``, if any (the template computes
        maps with autocast off; see :mod:`pytorch_grad_cam.precision`). The scores are
        float32 either way, and the projections switch autocast off for themselves."""
        with callers_precision():
            return super().compute_cam_per_layer(record, eigen_smooth)

    def progress_bar(self, total: int, description: str) -> object:
        """A tqdm bar over ``total`` perturbed copies (disabled when ``progress`` is off)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, unit="copy", disable=not self.progress, leave=False)

    def batched_scores(
        self,
        count: int,
        run_chunk: Callable[[int, int], object],
        target: Union[Target, Sequence[Target]],
        bar: object,
        chunk: Optional[int] = None,
    ) -> torch.Tensor:
        """Scores (count,) of ``target`` on ``run_chunk(start, stop)``'s outputs, computed
        ``chunk`` (default ``batch_size``) copies at a time under ``no_grad`` and
        :func:`~pytorch_grad_cam.scoring.perturbed`; they stay on the device. A list of
        T targets (of the same image) scores every output once per target: (T, count)."""
        several = isinstance(target, (list, tuple))
        targets = list(target) if several else [target]
        chunk = chunk or self.batch_size
        chunks = []
        with torch.no_grad(), perturbed():
            for start in range(0, count, chunk):
                stop = min(start + chunk, count)
                outputs = run_chunk(start, stop)
                chunks.append(torch.stack([score([each] * (stop - start), outputs) for each in targets]))
                bar.update(stop - start)
        scores = torch.cat(chunks, dim=1)
        return scores if several else scores[0]

    # ------------------------------------------------------------ the masked-copy methods
    def copy_recipe(self, input_tensor: torch.Tensor) -> CopyRecipe:
        """The method's :data:`CopyRecipe` for this call's ``input_tensor``.

        Raises:
            NotImplementedError: in PerturbationCAM itself (a masked-copy method states
                its recipe; AblationCAM overrides ``layer_map`` instead).
        """
        raise NotImplementedError(f"{type(self).__name__} must define copy_recipe or layer_map")

    def draws_per_mask(self) -> int:
        """How many copies each mask gets (the recipe's draws 0..D-1): 1."""
        return 1

    def reduce_draws(self, scores: torch.Tensor) -> torch.Tensor:
        """Each mask's score (T, G) from its draws' (T, G, D): their mean."""
        return scores.mean(dim=-1)

    def row_groups(self, input_tensor: torch.Tensor, activations: torch.Tensor) -> List[List[int]]:
        """The rows whose images are masked once and share the copies: :func:`same_rows`."""
        return same_rows(input_tensor, activations)

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        """w (B, K) = softmax_k of each mask's reduced scores (see the class).

        Raises:
            NotImplementedError: where the method states no :meth:`copy_recipe`.
        """
        size = tuple(input_tensor.shape[2:])
        recipe = self.copy_recipe(input_tensor)
        draws = self.draws_per_mask()
        groups = self.row_groups(input_tensor, activations)
        plan_masks = distinct_masks if self.shares_masks else every_mask
        plans = {group[0]: plan_masks(activations[group[0]], size) for group in groups}
        total = sum(len(kept) * draws + int(has_zero) for kept, _, has_zero in plans.values())
        chunk = masked_chunk_size(self.batch_size, input_tensor)
        run_model = ChannelsLastCalls(self.channels_last)  # a fallback lasts for this call
        weights: List[torch.Tensor] = [activations.new_empty(0)] * activations.shape[0]
        with self.progress_bar(total, self.title) as bar:
            for group in groups:
                kept, channel_group, has_zero = plans[group[0]]
                scored = len(kept) * draws  # then the all-zero mask, once, if any
                make = self.copies_maker(recipe, activations[group[0]], group[0], kept, draws, input_tensor)
                scores = self.batched_scores(
                    scored + int(has_zero),
                    lambda start, stop, make=make: run_model(self.model, make(start, stop)),
                    [targets[row] for row in group],
                    bar,
                    chunk,
                )
                by_draw = scores[:, :scored]
                if self.draws_outer:
                    by_draw = by_draw.reshape(len(group), draws, len(kept)).transpose(1, 2)
                by_draw = by_draw.reshape(len(group), len(kept), draws)
                per_mask = torch.cat([self.reduce_draws(by_draw), scores[:, scored:]], dim=1)
                for row, row_scores in zip(group, per_mask):
                    weights[row] = torch.softmax(row_scores[channel_group], dim=0)
        return torch.stack(weights)

    def copies_maker(
        self,
        recipe: CopyRecipe,
        maps: torch.Tensor,
        row: int,
        kept: torch.Tensor,
        draws: int,
        like: torch.Tensor,
    ) -> Callable[[int, int], torch.Tensor]:
        """``make(start, stop)``: the copies [start, stop) of image ``row``, whose
        activation maps are ``maps`` (K, *s): copy q < len(kept) x draws is mask
        ``kept[m]`` at draw d, in :attr:`draws_outer`'s order; the copy after them the
        all-zero mask (draw 0). Only the masks of the chunk are built, in ``like``'s dtype
        at its spatial size."""
        size = tuple(like.shape[2:])
        scored = len(kept) * draws
        count = max(len(kept), 1)

        def make(start: int, stop: int) -> torch.Tensor:
            entries = torch.arange(start, min(stop, scored), device=maps.device)
            masks, steps = entries // draws, entries % draws
            if self.draws_outer:
                masks, steps = entries % count, entries // count
            parts = []
            if entries.numel():
                unique, where = torch.unique(masks, return_inverse=True)
                parts.append(normalised_masks(maps[kept[unique]], size)[where])
            if stop > scored:  # the last copy: the all-zero mask
                parts.append(maps.new_zeros((1, *size)))
                steps = torch.cat([steps, steps.new_zeros(1)])
            built = torch.cat(parts) if len(parts) > 1 else parts[0]
            return recipe(row, built.to(like.dtype), steps)

        return make


def same_rows(*tensors: torch.Tensor) -> List[List[int]]:
    """The rows of a batch grouped by equality (every tensor's row bit for bit equal):
    an image repeated once per target (``explain_targets``) is perturbed once, and its
    targets score the same copies."""
    groups: List[List[int]] = []
    for row in range(tensors[0].shape[0]):
        for group in groups:
            if all(torch.equal(tensor[group[0]], tensor[row]) for tensor in tensors):
                group.append(row)
                break
        else:
            groups.append([row])
    return groups


def normalised_masks(maps: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """M_k = (U_k - min U_k) / (max U_k - min U_k + 1e-8) with U = ``maps`` (K, *s)
    upsampled to ``size`` (bilinear, ``align_corners=True``); returns (K, *size)."""
    upsampled = resize_maps(maps, size, align_corners=True)
    flat = upsampled.flatten(1)
    low = flat.amin(dim=1)
    high = flat.amax(dim=1)
    shape = (-1,) + (1,) * (upsampled.ndim - 1)
    return (upsampled - low.view(shape)) / (high - low + 1e-8).view(shape)


def distinct_masks(maps: torch.Tensor, size: Tuple[int, ...], chunk: int = 256) -> MaskPlan:
    """The channels whose masks must be scored, and which score each channel takes.

    Channels with equal low-resolution maps (bit for bit) have equal masks; constant
    channels whose upsampled mask is all zero (min-max of a constant map) share the
    score of the all-zero mask. Both are exact: the scores are those of scoring every
    channel's mask.

    Returns:
        ``channels`` (G,): one channel per distinct non-zero mask, in channel order;
        ``group`` (K,): for each channel, its index into the G scores, or G for the
        all-zero mask; ``has_zero``: whether some channel's mask is all zero.
    """
    count = maps.shape[0]
    flat = maps.flatten(1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    groups = int(inverse.max()) + 1
    first = torch.full((groups,), count, dtype=torch.long, device=maps.device)
    first.scatter_reduce_(0, inverse, torch.arange(count, device=maps.device), reduce="amin")
    # A group is zero when its (constant) map's normalised mask is exactly all zero.
    zero = torch.zeros(groups, dtype=torch.bool, device=maps.device)
    constant = torch.nonzero(flat[first].amin(dim=1) == flat[first].amax(dim=1)).flatten()
    for start in range(0, constant.numel(), chunk):
        part = constant[start : start + chunk]
        masks = normalised_masks(maps[first[part]], size)
        zero[part] = masks.flatten(1).amax(dim=1) == 0
    kept = torch.nonzero(~zero).flatten()
    order = torch.argsort(first[kept])
    kept = kept[order]
    # group index -> position among the scored masks (G for the zero mask)
    position = torch.full((groups,), kept.numel(), dtype=torch.long, device=maps.device)
    position[kept] = torch.arange(kept.numel(), device=maps.device)
    return first[kept], position[inverse], bool(zero.any())


def masked_chunk_size(batch_size: int, image: torch.Tensor) -> int:
    """Masked copies per forward pass: ``batch_size``, or fewer so that the batch of
    masked images stays within :data:`MASKED_BATCH_BYTES`."""
    per_image = image[0].numel() * image.element_size()
    return max(1, min(batch_size, MASKED_BATCH_BYTES // max(per_image, 1)))


def every_mask(maps: torch.Tensor, size: Tuple[int, ...]) -> MaskPlan:
    """The plan that scores every channel's mask, each its own (no all-zero mask)."""
    channels = torch.arange(maps.shape[0], device=maps.device)
    return channels, channels, False
