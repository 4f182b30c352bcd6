"""AblationCAM (Desai & Ramaswamy, 2020): a channel's weight is the relative drop
of the target score when that channel is ablated.

Only the network after the target layer is recomputed for the K ablated copies of
the cached activation (a ``torch.fx`` tail), once the tail has been checked against
the whole model; where the model cannot be traced, or the tail does not give the
whole model's scores, the whole model is re-run with the layer's output replaced,
after a warning.
"""
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import LayerSpec, PerturbationCAM, Target
from pytorch_grad_cam.utils.network_tail import NetworkTail, extract_tail, replaced_output_runner

#: An ablated channel becomes min(A) - ABLATION_OFFSET where A has negative values and
#: the layer's output goes only into ReLU-like activations, which then zero it; else 0.
ABLATION_OFFSET = 1e7

#: The tail's scores must equal the whole model's within this fraction of their magnitude.
_TRUST_TOLERANCE = {torch.float16: 5e-2, torch.bfloat16: 5e-2}
_TRUST_TOLERANCE_DEFAULT = 1e-3

_FALLBACK = "AblationCAM re-runs the whole model for each ablated chunk: "


@dataclass
class _LayerTail:
    """What AblationCAM knows about the network after one target layer."""

    structure: Tuple[Tuple[str, object], ...]  # the model's modules/parameters/buffers when traced
    tail: Optional[NetworkTail]  # the traced tail (its analysis holds even when it is not run)
    reason: str  # why there is no tail
    trusted: Optional[bool] = None  # the tail's scores equal the whole model's (None: not yet checked)


class AblationCAM(PerturbationCAM):
    """s = target score; s_k = the score with channel k ablated; w_k = (s - s_k) / s.

    An ablated channel becomes ``min(A) - 1e7`` where the activations A have negative
    values and every use of the layer's output reaches a ReLU-like activation (ReLU,
    ReLU6, GELU, SiLU, Hardswish, Mish, Softplus, Sigmoid, Hardsigmoid: f(-inf) = 0)
    through element-wise steps only (adding a tensor, dropout, reshaping, pooling), so
    that the activation switches it off. Everywhere else it becomes 0: a layer whose
    output goes into a LayerNorm, Linear, convolution, BatchNorm, attention or the
    model output (a transformer's ``norm1``), where -1e7 would dominate the
    normalisation or overflow. Where torch.fx cannot trace the model the uses are
    unknown, and the sign of A alone decides.

    Args (besides those of every method):
        batch_size: ablated copies per pass through the tail.
        tail_only: recompute only the network after the layer (default); False
            re-runs the whole model for every chunk of ablated copies.

    Raises (on a call):
        ValueError: if the model's output does not depend on a target layer's output
            (a branch the output never reads); also where the reshape_transform
            computes new values instead of rearranging them.
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
        self._tails: Dict[nn.Module, _LayerTail] = {}

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
        known = self._layer_tail(target_layer)
        if known.tail is not None and not known.tail.reads_layer:
            raise ValueError(
                f"the target's score does not depend on target layer {self._layer_name(target_layer)!r}: "
                "the model's output is computed without that layer's output (it feeds a "
                "branch the output never reads); choose a layer on the path to the output"
            )
        switched_off = known.tail.switched_off if known.tail is not None else None
        batch, channels = activations.shape[:2]
        weights = []
        buffer = layer_output.new_empty((min(self.batch_size, channels), *layer_output.shape[1:]))
        with self.progress_bar(batch * channels, "AblationCAM") as bar:
            for index in range(batch):
                image = input_tensor[index : index + 1]
                original = layer_output[index : index + 1]
                value = self._ablation_value(activations[index], original.dtype, switched_off)
                run = self._runner(known, target_layer, image, original, positions, value, targets[index])
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
    def _ablation_value(
        activations: torch.Tensor, dtype: torch.dtype, switched_off: Optional[bool] = None
    ) -> torch.Tensor:
        """What an ablated channel becomes: 0, or min(A) - ABLATION_OFFSET where A has
        negative values and a ReLU-like activation switches it off (``switched_off``:
        True, or None where the uses of the layer's output are unknown); clamped to stay
        finite in float16. A tensor on A's device, so that no value is copied back to
        the host."""
        low = activations.min().to(torch.float32)
        if switched_off is False:
            return torch.zeros_like(low).to(dtype)
        shifted = (low - ABLATION_OFFSET).clamp(min=torch.finfo(dtype).min / 2)
        return torch.where(low >= 0, torch.zeros_like(low), shifted).to(dtype)

    # ----------------------------------------------------------------- the tail
    def _structure(self) -> Tuple[Tuple[str, object], ...]:
        """The model's modules, parameters and buffers by name (identity compared): a
        traced tail holds references to them, so replacing one makes it stale."""
        model = self.model
        return (
            tuple(model.named_modules())
            + tuple(model.named_parameters())
            + tuple(model.named_buffers())
        )

    @staticmethod
    def _same_structure(old: Sequence[Tuple[str, object]], new: Sequence[Tuple[str, object]]) -> bool:
        return len(old) == len(new) and all(
            old_name == new_name and old_item is new_item
            for (old_name, old_item), (new_name, new_item) in zip(old, new)
        )

    def _layer_tail(self, layer: nn.Module) -> _LayerTail:
        """The traced tail of ``layer``, traced again when the model's modules,
        parameters or buffers were replaced since (``model.fc = new_head``)."""
        structure = self._structure()
        known = self._tails.get(layer)
        if known is None or not self._same_structure(known.structure, structure):
            tail, reason = extract_tail(self.model, layer)
            known = self._tails[layer] = _LayerTail(structure, tail, reason)
            if tail is None and self.tail_only:
                self._warn_fallback(reason)
        return known

    def _layer_name(self, layer: nn.Module) -> str:
        for name, module in self.model.named_modules():
            if module is layer:
                return name
        return type(layer).__name__

    @staticmethod
    def _warn_fallback(reason: str) -> None:
        warnings.warn(_FALLBACK + reason, stacklevel=4)

    def _runner(
        self,
        known: _LayerTail,
        layer: nn.Module,
        image: torch.Tensor,
        original: torch.Tensor,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
        target: Target,
    ) -> Callable:
        """The function from ablated layer outputs of ``image`` to model outputs: the
        tail where there is one and it is trusted, else the whole model with the layer's
        output replaced."""
        if not self.tail_only or known.tail is None or known.trusted is False:
            return replaced_output_runner(self.model, layer, image)
        run = known.tail.bind(image)
        if run is None:
            self._warn_fallback(
                "a tensor from before the layer that the network after it reads has no "
                "batch dimension"
            )
            return replaced_output_runner(self.model, layer, image)
        if known.trusted is None:
            whole = replaced_output_runner(self.model, layer, image)
            mismatch = self._compare_with_whole_model(run, whole, original, positions, value, target)
            known.trusted = not mismatch
            if mismatch:
                self._warn_fallback(mismatch)
                return whole
        return run

    def _compare_with_whole_model(
        self,
        tail: Callable,
        whole: Callable,
        original: torch.Tensor,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
        target: Target,
    ) -> str:
        """'' where the tail's scores on two ablated copies equal the whole model's
        (within a tolerance scaled to the scores), else why not. The tail failing is a
        mismatch; the model or the target failing is the caller's error and propagates."""
        channels = original.shape[1] if positions is None else positions.shape[0]
        count = min(2, channels)
        copies = _AblatedCopies(
            original.new_empty((count, *original.shape[1:])), original, positions, value
        ).chunk(0, count)
        with torch.no_grad():
            expected = self.score([target] * count, whole(copies.clone()))
            try:
                outputs = tail(copies.clone())
            except Exception as error:  # noqa: BLE001 - any failure of the tail means "do not use it"
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                return f"its torch.fx tail fails on ablated copies ({type(error).__name__}: {message})"
            scores = self.score([target] * count, outputs)
        tolerance = _TRUST_TOLERANCE.get(original.dtype, _TRUST_TOLERANCE_DEFAULT)
        finite = torch.isfinite(expected) & torch.isfinite(scores)
        scale = torch.cat([expected[finite].abs(), scores[finite].abs()]).max() if finite.any() else 0.0
        difference = (scores - expected)[finite].abs().max() if finite.any() else 0.0
        same_finite = torch.equal(torch.isfinite(expected), torch.isfinite(scores))
        if not same_finite or float(difference) > tolerance * float(scale):
            return (
                "its torch.fx tail gives other scores than the whole model on ablated copies "
                f"(difference {float(difference):.3g} at scale {float(scale):.3g})"
            )
        return ""

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
