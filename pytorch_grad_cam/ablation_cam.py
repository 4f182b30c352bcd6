"""AblationCAM (Desai & Ramaswamy, 2020): a channel's weight is the relative drop
of the target score when that channel is ablated.

Only the network after the target layer is recomputed for the K ablated copies of
the cached activation (a ``torch.fx`` tail); where the model cannot be traced the
whole model is re-run with the layer's output replaced, after a warning.
"""
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import LayerSpec, PerturbationCAM, Target
from pytorch_grad_cam.utils.network_tail import NetworkTail, extract_tail, replaced_output_runner

#: An ablated channel becomes min(A) - ABLATION_OFFSET where A has negative values,
#: so a following ReLU zeroes it; 0 where A is non-negative.
ABLATION_OFFSET = 1e7


class AblationCAM(PerturbationCAM):
    """s = target score; s_k = the score with channel k ablated; w_k = (s - s_k) / s.

    Args (besides those of every method):
        batch_size: ablated copies per pass through the tail.
        tail_only: recompute only the network after the layer (default); False
            re-runs the whole model for every chunk of ablated copies.
    """

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
        tail_only: bool = True,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            target_layer=target_layer,
            use_cuda=use_cuda,
            batch_size=batch_size,
            progress=progress,
        )
        self.tail_only = tail_only
        self._tails: Dict[nn.Module, Optional[NetworkTail]] = {}

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        layer_output = self._layer_outputs[target_layer]
        positions = self._channel_positions(layer_output, activations.shape[1])
        tail = self._tail(target_layer)
        batch, channels = activations.shape[:2]
        weights = []
        buffer = layer_output.new_empty((min(self.batch_size, channels), *layer_output.shape[1:]))
        with self.progress_bar(batch * channels, "AblationCAM") as bar:
            for index in range(batch):
                image = input_tensor[index : index + 1]
                run = self._bind(tail, target_layer, image)
                original = layer_output[index : index + 1]
                value = self._ablation_value(activations[index], original.dtype)
                copies = _AblatedCopies(buffer, original, positions, value)

                def run_chunk(start: int, stop: int, copies=copies, run=run):
                    return run(copies.chunk(start, stop))

                with torch.no_grad():
                    # A copy: the network after the layer may work in place (ReLU(inplace=True),
                    # `out += identity`) and must not change the activations being ablated.
                    score = self.score([targets[index]], run(original.clone()))
                ablated_scores = self.batched_scores(channels, run_chunk, targets[index], bar)
                denominator = torch.where(score == 0, torch.ones_like(score), score)
                weights.append((score - ablated_scores) / denominator)
        return torch.stack(weights)

    @staticmethod
    def _ablation_value(activations: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """What an ablated channel becomes: 0, or min(A) - ABLATION_OFFSET where A has
        negative values (clamped to stay finite in float16). A tensor on A's device, so
        that no value is copied back to the host."""
        low = activations.min().to(torch.float32)
        shifted = (low - ABLATION_OFFSET).clamp(min=torch.finfo(dtype).min / 2)
        return torch.where(low >= 0, torch.zeros_like(low), shifted).to(dtype)

    def _tail(self, layer: nn.Module) -> Optional[NetworkTail]:
        if not self.tail_only:
            return None
        if layer not in self._tails:
            tail, reason = extract_tail(self.model, layer)
            if tail is None:
                warnings.warn(
                    f"AblationCAM re-runs the whole model for each ablated chunk: {reason}",
                    stacklevel=4,
                )
            self._tails[layer] = tail
        return self._tails[layer]

    def _bind(self, tail: Optional[NetworkTail], layer: nn.Module, image: torch.Tensor) -> Callable:
        """The function from ablated layer outputs of ``image`` to model outputs: the
        tail where there is one, else the whole model with the layer's output replaced."""
        run = tail.bind(image) if tail is not None else None
        if run is None and tail is not None:
            warnings.warn(
                "AblationCAM re-runs the whole model for each ablated chunk: a tensor from "
                "before the layer that the network after it reads has no batch dimension",
                stacklevel=5,
            )
        return run or replaced_output_runner(self.model, layer, image)

    def _channel_positions(self, layer_output: torch.Tensor, channels: int) -> Optional[torch.Tensor]:
        """For each reshaped channel k, the flat positions in one image's raw layer
        output that make it up (None when there is no reshape_transform: channel = dim 1).

        Raises:
            ValueError: if the reshape_transform does more than rearrange elements.
        """
        if self.reshape_transform is None:
            return None
        numel = layer_output[0].numel()
        index = torch.arange(numel, dtype=torch.float64, device=layer_output.device)
        mapped = self.reshape_transform(index.reshape(1, *layer_output.shape[1:]))
        mapped = mapped.reshape(channels, -1)
        if (
            mapped.dtype != torch.float64
            or not torch.equal(mapped, mapped.round())
            or mapped.min() < 0
            or mapped.max() >= numel
            or mapped.unique().numel() != mapped.numel()
        ):
            raise ValueError(
                "AblationCAM needs a reshape_transform that only selects and rearranges "
                "elements (like vit_reshape_transform / swin_reshape_transform); this one "
                "computes new values"
            )
        return mapped.long()


class _AblatedCopies:
    """Chunks of copies of one image's layer output, copy i of chunk [start, stop)
    with channel start + i ablated, all in one reused buffer.

    Between chunks only the channels ablated last time are restored (2·n channels
    written instead of n whole activations: 2048x less for ResNet-50's layer4), unless
    the buffer's version counter shows that something wrote into it in place (the
    network after the layer, such as ``ReLU(inplace=True)``, or a target); then it is
    refilled whole. A chunk is restored only when the next one is asked for, after the
    scores of its outputs (which may alias it) have been taken.
    """

    def __init__(
        self,
        buffer: torch.Tensor,
        original: torch.Tensor,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
    ) -> None:
        self.buffer = buffer
        self.original = original
        self.positions = positions
        self.value = value
        self.ablated: Optional[tuple] = None  # (start, stop) of the chunk in the buffer
        self.version: Optional[int] = None  # the buffer's version once that chunk was made

    def _channels(self, start: int, stop: int) -> tuple:
        """An index of channels start..stop-1 of copies 0..n-1 (the diagonal)."""
        rows = torch.arange(stop - start, device=self.buffer.device)
        if self.positions is None:
            return self.buffer, (rows, start + rows)
        flat = self.buffer.view(self.buffer.shape[0], -1)
        return flat, (rows[:, None], self.positions[start:stop])

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        if self.version is None or self.buffer._version != self.version:
            self.buffer.copy_(self.original.expand_as(self.buffer))
        elif self.ablated is not None:
            done_start, done_stop = self.ablated
            target, index = self._channels(done_start, done_stop)
            source = self.original if self.positions is None else self.original.reshape(1, -1)
            target[index] = source[(torch.zeros_like(index[0]), index[1])]
        target, index = self._channels(start, stop)
        target[index] = self.value
        self.ablated = (start, stop)
        self.version = self.buffer._version
        return self.buffer[: stop - start]
