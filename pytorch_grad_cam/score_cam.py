"""ScoreCAM (Wang et al., 2020): each activation map, upsampled and normalised, masks
the input; the softmax of the masked inputs' target scores weights the channels."""

from typing import List, Tuple

import torch
from torch import nn

from pytorch_grad_cam.base_cam import Target
from pytorch_grad_cam.perturbation_cam import PerturbationCAM, same_rows
from pytorch_grad_cam.utils.image import ChannelsLastCalls, resize_maps

#: Bytes of masked input images per forward pass at most (``batch_size`` stays the upper
#: limit): the batch of masked copies, and the activations the model makes of it, is
#: ScoreCAM's peak memory. 16 MiB is 27 images of 3 x 224 x 224 in float32; on a CPU
#: smaller batches run as fast per image (benchmarks/).
MASKED_BATCH_BYTES = 16 * 2**20


def normalised_masks(maps: torch.Tensor, size: Tuple[int, ...]) -> torch.Tensor:
    """M_k = (U_k - min U_k) / (max U_k - min U_k + 1e-8) with U = ``maps`` (K, *s)
    upsampled to ``size`` (bilinear, ``align_corners=True``); returns (K, *size)."""
    upsampled = resize_maps(maps, size, align_corners=True)
    flat = upsampled.flatten(1)
    low = flat.amin(dim=1)
    high = flat.amax(dim=1)
    shape = (-1,) + (1,) * (upsampled.ndim - 1)
    return (upsampled - low.view(shape)) / (high - low + 1e-8).view(shape)


def distinct_masks(
    maps: torch.Tensor, size: Tuple[int, ...], chunk: int = 256
) -> Tuple[torch.Tensor, torch.Tensor, bool]:
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


class ScoreCAM(PerturbationCAM):
    """M_k = min-max(upsample(A_k)); s_k = target(model(input·M_k)); w = softmax_k(s).

    Each distinct mask is scored once: channels with equal activation maps, and the
    constant channels (whose masks are all zero), share one score, exactly as if each
    were scored; a batch that holds one image several times (one per target:
    ``explain_targets``) masks it once and scores each target on the same copies. Masks
    are built per chunk of at most ``batch_size`` channels (fewer
    where the masked images would exceed :data:`MASKED_BATCH_BYTES`), so memory is
    one forward pass of that chunk plus the activations, never all K masked inputs.
    On the CPU the masked images go to the model in ``channels_last`` memory format
    (see :attr:`channels_last`).
    """

    #: Hand the masked images to the model in ``channels_last`` memory format (4-D
    #: inputs on the CPU; :class:`~pytorch_grad_cam.utils.image.ChannelsLastCalls`):
    #: torch's CPU convolutions run them faster (the README's Performance section), and
    #: the maps equal the contiguous ones to float rounding, not bit for bit
    #: (docs/decisions.md, G11). A model that cannot take them (``.view`` of a
    #: non-contiguous tensor) gets contiguous images for the rest of the call. The model
    #: itself is not converted.
    channels_last: bool = True

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        size = tuple(input_tensor.shape[2:])
        groups = same_rows(input_tensor, activations)  # an image repeated per target: masked once
        plans = {group[0]: distinct_masks(activations[group[0]], size) for group in groups}
        total = sum(len(kept) + int(has_zero) for kept, _, has_zero in plans.values())
        chunk = masked_chunk_size(self.batch_size, input_tensor)
        run_model = ChannelsLastCalls(self.channels_last)  # a fallback lasts for this call
        weights: List[torch.Tensor] = [activations.new_empty(0)] * activations.shape[0]
        with self.progress_bar(total, "ScoreCAM") as bar:
            for group in groups:
                index = group[0]
                kept, channel_group, has_zero = plans[index]
                image = input_tensor[index : index + 1]
                count = len(kept) + int(has_zero)

                def run_chunk(
                    start: int,
                    stop: int,
                    index: int = index,
                    image: torch.Tensor = image,
                    kept: torch.Tensor = kept,
                ) -> object:
                    parts = []
                    if start < len(kept):
                        parts.append(normalised_masks(activations[index, kept[start:stop]], size))
                    if stop > len(kept):  # the last entry: the all-zero mask
                        parts.append(activations.new_zeros((1, *size)))
                    masks = torch.cat(parts) if len(parts) > 1 else parts[0]
                    return run_model(self.model, image * masks.unsqueeze(1).to(image.dtype))

                scores = self.batched_scores(count, run_chunk, [targets[row] for row in group], bar, chunk)
                for row, row_scores in zip(group, scores):
                    weights[row] = torch.softmax(row_scores[channel_group], dim=0)
        return torch.stack(weights)
