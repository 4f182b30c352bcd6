"""The ablation layers: how AblationCAM ablates a channel of a target layer's output,
and which channels it ablates when only a ratio of them is wanted.

An ablation layer answers two questions for :class:`~pytorch_grad_cam.AblationCAM`:

- ``activations_to_be_ablated(A, ratio)``: which channels of one image's activations
  A (K, h, w) to ablate (all K, or the ⌊K·ratio⌋ most and least "objectlike" ones,
  never the same channel twice);
- ``ablated_copies(layer_output, channels, value, positions)``: given the *raw* output
  of the target layer for one image (a tensor, or Faster R-CNN's dict of FPN levels)
  and a list of channels, the batch of raw outputs with channel ``channels[i]``
  ablated in row i. AblationCAM feeds these through the network after the layer.

The layers are also ``nn.Module``\\s with grad-cam's replay protocol
(``set_next_batch`` then ``layer(x)``), for code that swaps one in for a target layer
itself. Where grad-cam 1.5 differs, the differences are fixed here: the ablation value
is computed once per image (it does not drift lower row by row), the channels chosen
by a ratio are unique, and a constant channel scores 0 instead of 0/0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, List, Optional, Union

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.structures import first_tensor, map_tensors
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

#: An ablated channel becomes min(A) - ABLATION_OFFSET where A has negative values and a
#: ReLU-like activation switches it off (see :func:`ablation_value`); else 0.
ABLATION_OFFSET = 1e7

#: The value AblationLayerFasterRCNN writes into an ablated FPN channel (as grad-cam).
FASTERRCNN_ABLATION_VALUE = -1000.0

ArrayLike = Union[torch.Tensor, np.ndarray]
LayerOutput = Union[torch.Tensor, Mapping]


def ablation_value(activations: torch.Tensor, dtype: torch.dtype, switched_off: Optional[bool] = None) -> torch.Tensor:
    """What an ablated channel becomes: 0, or min(A) - ABLATION_OFFSET where A has
    negative values and a ReLU-like activation switches it off (``switched_off``: True,
    or None where the uses of the layer's output are unknown: then the sign of A alone
    decides); clamped to stay finite in float16. A 0-d tensor on A's device (no value
    is copied back to the host)."""
    low = activations.min().to(torch.float64 if dtype == torch.float64 else torch.float32)
    if switched_off is False:
        return torch.zeros_like(low).to(dtype)
    shifted = (low - ABLATION_OFFSET).clamp(min=torch.finfo(dtype).min / 2)
    return torch.where(low >= 0, torch.zeros_like(low), shifted).to(dtype)


class AblatedCopies:
    """Chunks of copies of one image's layer output, copy i of chunk [start, stop)
    with channel ``channels[start + i]`` ablated, all in one reused buffer.

    A channel is dim ``channel_axis`` of the raw output (1, or -1 for token layouts),
    or, with ``positions`` (K, n), the n flat positions that a reshape_transform
    gathers into it. Between chunks only the channels ablated last time are restored
    (2·n channels written instead of n whole activations: 2048x less for ResNet-50's
    layer4), unless the buffer's version counter shows that something wrote into it in
    place (the network after the layer, such as ``ReLU(inplace=True)``, or a target);
    then it is refilled whole. A chunk is restored only when the next one is asked
    for, after the scores of its outputs (which may alias it) have been taken.
    """

    def __init__(
        self,
        buffer: torch.Tensor,
        original: torch.Tensor,
        channels: torch.Tensor,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
        channel_axis: int = 1,
    ) -> None:
        self.buffer = buffer
        self.original = original
        self.channels = channels
        self.positions = positions
        self.value = value
        self.channel_axis = channel_axis
        self.ablated: Optional[tuple] = None  # (start, stop) of the chunk in the buffer
        self.version: Optional[int] = None  # the buffer's version once that chunk was made

    def _index(self, tensor: torch.Tensor, rows: torch.Tensor, start: int, stop: int) -> tuple:
        """(view of ``tensor``, index) of channels[start:stop] in rows ``rows``."""
        channels = self.channels[start:stop]
        if self.positions is not None:
            return tensor.reshape(tensor.shape[0], -1), (rows[:, None], self.positions[channels])
        if self.channel_axis == 1:
            return tensor, (rows, channels)
        return tensor, (rows, Ellipsis, channels)

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        rows = torch.arange(stop - start, device=self.buffer.device)
        # Tensor._version is torch's in-place counter; it has no public spelling.
        if self.version is None or self.buffer._version != self.version:  # noqa: SLF001
            self.buffer.copy_(self.original.expand_as(self.buffer))
        elif self.ablated is not None:
            done_start, done_stop = self.ablated
            done_rows = torch.arange(done_stop - done_start, device=self.buffer.device)
            target, index = self._index(self.buffer, done_rows, done_start, done_stop)
            source, source_index = self._index(self.original, torch.zeros_like(done_rows), done_start, done_stop)
            target[index] = source[source_index]
        target, index = self._index(self.buffer, rows, start, stop)
        target[index] = self.value
        self.ablated = (start, stop)
        self.version = self.buffer._version  # noqa: SLF001
        return self.buffer[: stop - start]


def _as_torch(activations: ArrayLike) -> torch.Tensor:
    return torch.from_numpy(np.asarray(activations)) if not torch.is_tensor(activations) else activations


class AblationLayer(nn.Module):
    """Ablates channels of a tensor output (B, K, ...): dim 1, or the positions a
    reshape_transform gathers into each reshaped channel.

    The ablation value is AblationCAM's rule (:func:`ablation_value`): 0, or
    min(A) - 1e7 where A has negative values and the layer's output reaches a
    ReLU-like activation that switches it off. In the replay protocol
    (``set_next_batch`` / ``layer(x)``) the uses of the output are unknown, so the
    sign of the image's activations decides; the value is computed once per image.

    Attributes:
        indices: the channels chosen by the last ``activations_to_be_ablated``.
    """

    #: The raw output's channel axis where no reshape_transform maps the channels.
    channel_axis: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.indices: Optional[ArrayLike] = None
        self.activations: Optional[LayerOutput] = None  # set_next_batch's n copies
        self.value: Optional[torch.Tensor] = None

    # ------------------------------------------------------------- which channels
    def objectiveness_mask_from_svd(self, activations: ArrayLike, threshold: float = 0.01) -> torch.Tensor:
        """(h, w) bool: where |first-principal-component projection of A (K, h, w)|,
        min-max scaled, exceeds ``threshold`` (a constant projection: nowhere)."""
        projection = get_2d_projection(_as_torch(activations).double()[None])[0].abs()
        projection = projection - projection.min()
        peak = projection.max()
        return projection > threshold * peak if peak > 0 else torch.zeros_like(projection, dtype=torch.bool)

    def activations_to_be_ablated(self, activations: ArrayLike, ratio_channels_to_ablate: float = 1.0) -> ArrayLike:
        """The channels of one image's activations A (K, h, w) to ablate.

        ``ratio_channels_to_ablate == 1.0``: all K, in order. Otherwise each channel is
        scored by how much of it lies on the object: Σ(mask·n_c) / Σ n_c, with the mask
        of :meth:`objectiveness_mask_from_svd` and n_c = |A_c| min-max scaled (a
        constant channel scores 0); with the channels sorted by ascending score (ties
        in channel order), the top ⌊K·ratio⌋ followed by the bottom ⌊K·ratio⌋, each
        channel once (a ratio above 0.5 gives fewer than 2⌊K·ratio⌋ channels, never
        duplicates). Stored as ``self.indices``.

        Returns:
            int32 numpy array for numpy activations, else an int64 tensor on A's device.
        """
        is_numpy = not torch.is_tensor(activations)
        tensor = _as_torch(activations)
        channels = tensor.shape[0]
        if ratio_channels_to_ablate == 1.0:
            indices = torch.arange(channels, device=tensor.device)
        else:
            magnitudes = tensor.double().abs().reshape(channels, -1)
            magnitudes = magnitudes - magnitudes.min(dim=1, keepdim=True).values
            peaks = magnitudes.max(dim=1, keepdim=True).values
            normalised = torch.where(peaks > 0, magnitudes / torch.where(peaks > 0, peaks, 1.0), 0.0)
            mask = self.objectiveness_mask_from_svd(tensor).reshape(1, -1)
            totals = normalised.sum(dim=1)
            on_object = (normalised * mask).sum(dim=1)
            scores = torch.where(totals > 0, on_object / torch.where(totals > 0, totals, 1.0), 0.0)
            order = torch.sort(scores, stable=True).indices
            count = int(channels * ratio_channels_to_ablate)
            picked: List[int] = []
            seen = set()
            for channel in (order[channels - count :] if count else order[:0]).tolist() + order[:count].tolist():
                if channel not in seen:
                    seen.add(channel)
                    picked.append(channel)
            indices = torch.tensor(picked, dtype=torch.long, device=tensor.device)
        self.indices = indices.cpu().numpy().astype(np.int32) if is_numpy else indices
        return self.indices

    # ------------------------------------------------------------- AblationCAM's interface
    def ablation_value(
        self, activations: torch.Tensor, dtype: torch.dtype, switched_off: Optional[bool] = None
    ) -> torch.Tensor:
        """The value of an ablated element for one image's activations A (see
        :func:`ablation_value`); ``switched_off``: whether every use of the layer's
        output reaches a ReLU-like activation (None: unknown)."""
        return ablation_value(activations, dtype, switched_off)

    def ablated_copies(
        self,
        layer_output: LayerOutput,
        channels: torch.Tensor,
        value: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        batch_size: int = 32,
    ) -> Callable[[int, int], LayerOutput]:
        """For one image's raw layer output (batch 1), a function ``chunk(start, stop)``
        giving the batch of stop - start raw outputs whose row i has channel
        ``channels[start + i]`` set to ``value``. The rows share one reused buffer of
        ``batch_size`` copies: a chunk is valid until the next one is asked for.

        ``positions`` (K, n): the flat positions of one image's raw output that the
        reshape_transform gathers into each reshaped channel (None: no transform).
        """
        if not torch.is_tensor(layer_output):
            raise TypeError(
                f"{type(self).__name__} ablates a tensor layer output, but the target layer "
                f"returns a {type(layer_output).__name__}; for a Faster R-CNN FPN backbone pass "
                "ablation_layer=AblationLayerFasterRCNN() (or an ablation layer of your own)"
            )
        buffer = layer_output.new_empty((max(1, min(batch_size, len(channels))), *layer_output.shape[1:]))
        return AblatedCopies(buffer, layer_output, channels, positions, value, self.channel_axis).chunk

    # ------------------------------------------------------------- grad-cam's replay protocol
    def set_next_batch(self, input_batch_index: int, activations: LayerOutput, num_channels_to_ablate: int) -> None:
        """Keep ``num_channels_to_ablate`` copies of image ``input_batch_index`` of the raw
        layer ``activations`` (a batch), and the ablation value for that image."""
        image = self._image(activations, input_batch_index)
        self.activations = self._repeat(image, num_channels_to_ablate)
        first = first_tensor(image)
        self.value = self.ablation_value(first, first.dtype)

    def forward(self, x: object = None) -> LayerOutput:
        """The copies kept by ``set_next_batch``, row i with channel ``indices[i]``
        ablated (``x``, the input the replaced layer would get, is ignored)."""
        if self.activations is None or self.indices is None:
            raise RuntimeError("call activations_to_be_ablated and set_next_batch before the ablation layer")
        copies = self._batch_of(self.activations)
        image = self._image(self.activations, 0)
        channels = torch.as_tensor(self.indices[:copies])  # numpy or a tensor on any device
        device = first_tensor(image).device
        channels = channels.to(device=device, dtype=torch.long)
        if len(channels) < copies:
            raise ValueError(f"{copies} copies but only {len(channels)} indices left to ablate")
        return self.ablated_copies(image, channels, self.value, batch_size=copies)(0, copies)

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _image(activations: LayerOutput, index: int) -> LayerOutput:
        return map_tensors(activations, lambda value: value[index : index + 1])

    @staticmethod
    def _repeat(image: LayerOutput, copies: int) -> LayerOutput:
        return map_tensors(image, lambda value: value.clone().repeat(copies, *[1] * (value.ndim - 1)))

    @staticmethod
    def _batch_of(activations: LayerOutput) -> int:
        return first_tensor(activations).shape[0]


class AblationLayerVit(AblationLayer):
    """Ablates channels of token outputs ((B, tokens, C) or Swin's (B, h, w, C)).

    Without a reshape_transform (the replay protocol) channel k is feature k of every
    token, the class token included, as in grad-cam. In AblationCAM, whose ViT/Swin
    target layers always have a reshape_transform, channel k is what the transform
    gathers into reshaped channel k: for ``vit_reshape_transform`` feature k of the
    patch tokens only (the class token, which the map does not show, keeps its value),
    so that a channel's weight measures the activations it multiplies. The value is
    AblationCAM's rule: 0 before a LayerNorm or the attention's Linear layers (as at
    a ``norm1``), where grad-cam's min - 1e7 would swamp the normalisation.
    """

    channel_axis = -1


class AblationLayerFasterRCNN(AblationLayer):
    """Ablates channels of a Faster R-CNN FPN backbone's dict output ('0', '1', ...,
    'pool', each (B, 256, h, w)) by setting them to -1000, as grad-cam does.

    Channel k is numbered as ``fasterrcnn_reshape_transform`` concatenates the levels:
    in dict order, each level's channels after the previous levels' (grad-cam assumes
    five levels of 256, '0'-'3' and 'pool'; here any levels and widths work, such as
    MobileNet-v3's '0', '1', 'pool'). Use it with that reshape_transform.
    """

    def ablation_value(
        self, activations: torch.Tensor, dtype: torch.dtype, switched_off: Optional[bool] = None
    ) -> torch.Tensor:
        return torch.tensor(FASTERRCNN_ABLATION_VALUE, dtype=dtype, device=activations.device)

    @staticmethod
    def level_of(layer_output: Mapping, channel: int) -> tuple:
        """(key, channel within that level) of concatenated channel ``channel``."""
        offset = 0
        for key, value in layer_output.items():
            if channel < offset + value.shape[1]:
                return key, channel - offset
            offset += value.shape[1]
        raise IndexError(f"channel {channel} is beyond the {offset} channels of the FPN levels")

    def ablated_copies(
        self,
        layer_output: LayerOutput,
        channels: torch.Tensor,
        value: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        batch_size: int = 32,
    ) -> Callable[[int, int], LayerOutput]:
        if not isinstance(layer_output, Mapping):
            raise TypeError(
                "AblationLayerFasterRCNN ablates a dict of FPN levels (a Faster R-CNN "
                f"backbone's output), not a {type(layer_output).__name__}; use AblationLayer()"
            )
        levels = [self.level_of(layer_output, channel) for channel in channels.tolist()]

        def chunk(start: int, stop: int) -> LayerOutput:
            copies = self._repeat(layer_output, stop - start)
            for row, (key, channel) in enumerate(levels[start:stop]):
                copies[key][row, channel] = value
            return copies

        return chunk
