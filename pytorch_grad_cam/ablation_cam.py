"""AblationCAM (Desai & Ramaswamy, 2020): a channel's weight is the relative drop
of the target score when that channel is ablated.

Only the network after the target layer is recomputed for the K ablated copies of
the cached activation (a ``torch.fx`` tail), once the tail has been checked against
the whole model; where the model cannot be traced, or the tail does not give the
whole model's scores, the whole model is re-run with the layer's output replaced,
after a warning. How a channel is ablated, and which channels are, is the ablation
layer's business (``pytorch_grad_cam.ablation_layer``).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

# ABLATION_OFFSET stays importable from here, as before the ablation layers existed.
from pytorch_grad_cam.ablation_layer import ABLATION_OFFSET, AblationLayer, ablation_value  # noqa: F401
from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import weighted_map
from pytorch_grad_cam.checks import layer_grid
from pytorch_grad_cam.layers import LayerSpec, layer_name
from pytorch_grad_cam.perturbation_cam import PerturbationCAM
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.scoring import Target, per_image_outputs, perturbed, score
from pytorch_grad_cam.utils.messages import warn_user
from pytorch_grad_cam.utils.network_tail import NetworkTail, extract_tail
from pytorch_grad_cam.utils.structures import first_tensor, map_tensors, tensors_in
from pytorch_grad_cam.utils.whole_model import replaced_output_runner

#: The tail's scores must equal the whole model's within this fraction of their magnitude.
_TRUST_TOLERANCE = {torch.float16: 5e-2, torch.bfloat16: 5e-2}
_TRUST_TOLERANCE_DEFAULT = 1e-3

_FALLBACK = "AblationCAM re-runs the whole model for each ablated chunk: "

LayerOutput = Union[torch.Tensor, Mapping, tuple, list]


@dataclass
class _LayerTail:
    """What AblationCAM knows about the network after one target layer."""

    structure: Tuple[Tuple[str, object], ...]  # the model's modules/parameters/buffers when traced
    tail: Optional[NetworkTail]  # the traced tail (its analysis holds even when it is not run)
    reason: str  # why there is no tail
    trusted: Optional[bool] = None  # the tail's scores equal the whole model's (None: not yet checked)
    reads: Optional[bool] = None  # the model's output reads the layer's output (None: not yet known)
    warned: bool = False  # the fallback warning was shown for this tail (once per tail)


def _image_output(output: LayerOutput, index: int) -> LayerOutput:
    """Image ``index`` of a raw layer output (a tensor, or a dict/tuple of them), batch 1."""
    return map_tensors(output, lambda value: value[index : index + 1])


def _cloned(output: LayerOutput) -> LayerOutput:
    return map_tensors(output, torch.Tensor.clone)


def _tf32_enabled() -> bool:
    """Whether CUDA float32 convolutions or matmuls may run in TF32 (compared with the
    half-precision tolerance then: batch-1 and batch-B passes may pick other kernels)."""
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def _difference(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> str:
    """'' where ``actual`` equals ``expected`` within the tail tolerance for ``dtype``
    (scaled to their magnitude, the same finite entries), else the difference and scale."""
    if dtype == torch.float32 and actual.is_cuda and _tf32_enabled():
        dtype = torch.float16  # TF32 convolutions and matmuls keep float16's 10-bit mantissa
    actual, expected = actual.double(), expected.double()
    finite = torch.isfinite(expected) & torch.isfinite(actual)
    scale = torch.cat([expected[finite].abs(), actual[finite].abs()]).max() if finite.any() else 0.0
    difference = (actual - expected)[finite].abs().max() if finite.any() else 0.0
    tolerance = _TRUST_TOLERANCE.get(dtype, _TRUST_TOLERANCE_DEFAULT)
    if torch.equal(torch.isfinite(expected), torch.isfinite(actual)) and float(difference) <= tolerance * float(scale):
        return ""
    return f"difference {float(difference):.3g} at scale {float(scale):.3g}"


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

    A zero original score s gives w_k = -s_k (the division is skipped), never inf/NaN.

    Args (besides those of every method):
        ablation_layer: how a channel is ablated and which channels are
            (``pytorch_grad_cam.ablation_layer``): None gives each AblationCAM object
            its own ``AblationLayer()`` (the rule above, on tensor outputs);
            ``AblationLayerVit()`` for token outputs; ``AblationLayerFasterRCNN()`` for
            a Faster R-CNN FPN backbone's dict output (with
            ``fasterrcnn_reshape_transform``), where a channel is set to -1000.
        batch_size: ablated copies per pass through the tail.
        ratio_channels_to_ablate: 1.0 ablates every channel; below 1, only the
            ⌊K·ratio⌋ most and the ⌊K·ratio⌋ least object-like channels (unique; see
            ``AblationLayer.activations_to_be_ablated``), fewer passes; the channels
            not ablated keep the original score, so their weight is 0.
        tail_only: recompute only the network after the layer (default); False
            re-runs the whole model for every chunk of ablated copies.

    Raises (on a call):
        ValueError: if the model's output does not depend on a target layer's output
            (a branch the output never reads); also where the reshape_transform
            computes new values instead of rearranging them (except with an ablation
            layer that maps channels itself, as AblationLayerFasterRCNN).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        ablation_layer: Optional[AblationLayer] = None,
        batch_size: int = 32,
        ratio_channels_to_ablate: float = 1.0,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
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
        if ablation_layer is not None and not isinstance(ablation_layer, AblationLayer):
            raise TypeError(
                "ablation_layer must be an AblationLayer (AblationLayer(), AblationLayerVit(), "
                f"AblationLayerFasterRCNN() or a subclass), not {type(ablation_layer).__name__}"
            )
        if isinstance(ratio_channels_to_ablate, bool) or not 0 < ratio_channels_to_ablate <= 1:
            raise ValueError(f"ratio_channels_to_ablate must be in (0, 1], got {ratio_channels_to_ablate!r}")
        # Never a default instance shared between objects: each gets its own.
        self.ablation_layer = ablation_layer if ablation_layer is not None else AblationLayer()
        self.ratio_channels_to_ablate = float(ratio_channels_to_ablate)
        self.tail_only = tail_only
        self._tails: Dict[nn.Module, _LayerTail] = {}

    def layer_map(self, record: Record, index: int, eigen_smooth: bool) -> torch.Tensor:
        """Σ_k w_k·A_k with the ablation weights of ``record.layers[index]``."""
        activations = layer_grid(record, index, self.reshape_transform)
        return weighted_map(self.ablation_weights(record, index, activations), activations, eigen_smooth)

    def ablation_weights(self, record: Record, index: int, activations: torch.Tensor) -> torch.Tensor:
        """w (B, K) of ``record.layers[index]``, whose reshaped ``activations`` are (B, K, ...).

        Raises:
            ValueError: if the model's output does not read the layer's output, or the
                reshape_transform computes new values.
        """
        layer, layer_output = record.layers[index], record.layer_outputs[index]
        batch, channels = activations.shape[:2]
        positions = self._channel_positions(layer_output, channels)
        known = self._layer_tail(layer)
        self._check_reads_layer(known, record, index)
        chosen = [self._channels_to_ablate(activations[image]) for image in range(batch)]
        weights = activations.new_zeros((batch, channels))
        with self.progress_bar(sum(len(c) for c in chosen), "AblationCAM") as bar:
            for image in range(batch):
                known = self._tails.get(layer, known)  # a tail found stale on an image was replaced there
                weights[image, chosen[image]] = self._image_weights(
                    record, index, image, known, chosen[image], positions, activations[image], bar
                ).to(weights.dtype)
        return weights

    def _image_weights(
        self,
        record: Record,
        index: int,
        image: int,
        known: _LayerTail,
        channels: torch.Tensor,
        positions: Optional[torch.Tensor],
        activations: torch.Tensor,
        bar: object,
    ) -> torch.Tensor:
        """(s - s_k) / s for the ``channels`` of one image (s = 0: -s_k)."""
        target = record.targets[image]
        original = _image_output(record.layer_outputs[index], image)
        switched_off = known.tail.switched_off if known.tail is not None else None
        value = self.ablation_layer.ablation_value(activations, first_tensor(original).dtype, switched_off)
        run, unablated = self._current_runner(record, index, image, known, channels, positions, value)
        score = self.score([target], unablated)
        if len(channels) == 0:
            return score.new_zeros(0)
        chunk = self.ablation_layer.ablated_copies(original, channels, value, positions, self.batch_size)
        ablated_scores = self.batched_scores(len(channels), lambda start, stop: run(chunk(start, stop)), target, bar)
        # A zero score is not divided by (the reference's 0/0): w_k = -s_k.
        denominator = torch.where(score == 0, torch.ones_like(score), score)
        return (score - ablated_scores) / denominator

    def _current_runner(
        self,
        record: Record,
        index: int,
        image: int,
        known: _LayerTail,
        channels: torch.Tensor,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
    ) -> Tuple[Callable, object]:
        """The runner for one image and its output on the unablated layer output.

        A traced tail is checked against the model on every call: run on the recorded
        activation it must reproduce the recorded model output. A tail that does not
        (the model changed in a way its modules do not show: a flag or attribute that
        forward reads) is traced again once, and if that one fails too, the whole model
        runs, after a one-line warning. The check sees the unablated activation only: a
        change that acts on ablated values alone is not caught."""
        layer, target = record.layers[index], record.targets[image]
        input_image = record.input_tensor[image : image + 1]
        original = _image_output(record.layer_outputs[index], image)
        for attempt in range(2):
            run, is_tail = self._runner(known, layer, input_image, original, channels, positions, value, target)
            with torch.no_grad():
                # A copy: the network after the layer may work in place (ReLU(inplace=True),
                # `out += identity`) and must not change the activations being ablated.
                unablated = run(_cloned(original))
            mismatch = self._reproduces(unablated, record, image, first_tensor(original).dtype) if is_tail else ""
            if not mismatch:
                return run, unablated
            if attempt == 0:
                self._tails.pop(layer, None)
                known = self._layer_tail(layer)
        known.trusted = False
        self._warn_fallback(
            known, f"its torch.fx tail does not reproduce the model's output ({mismatch}), also traced anew"
        )
        whole = replaced_output_runner(self.model, layer, input_image)
        with torch.no_grad():
            return whole, whole(_cloned(original))

    @staticmethod
    def _reproduces(unablated: object, record: Record, image: int, dtype: torch.dtype) -> str:
        """'' where the tail's output on the unablated activation equals the recorded
        output of ``image`` (whole tensors where both are tensors, else the target's
        score), else why not."""
        recorded = record.outputs
        if torch.is_tensor(unablated) and torch.is_tensor(recorded) and unablated.shape[1:] == recorded.shape[1:]:
            return _difference(unablated, recorded[image : image + 1], dtype)
        target = record.targets[image]
        expected = score([target], [per_image_outputs(recorded, len(record.targets), record.targets)[image]])
        return _difference(score([target], unablated), expected, dtype)

    def _check_reads_layer(self, known: _LayerTail, record: Record, index: int) -> None:
        """Raises ValueError when the model's output is computed without the layer's
        output: read from the traced graph, or, where the model cannot be traced, from
        autograd (whether the first image's score has a gradient path to the layer's
        output; a model that builds no graph there cannot be told and is not refused)."""
        if known.reads is None:
            if known.tail is not None:
                known.reads = known.tail.reads_layer
            else:
                known.reads = self._reads_by_autograd(record, index)
        if known.reads is False:
            raise ValueError(
                f"the target's score does not depend on target layer {layer_name(self.model, record.layers[index])}: "
                "the model's output is computed without that layer's output (it feeds a branch the "
                "output never reads); choose a layer on the path to the output"
            )

    def _reads_by_autograd(self, record: Record, index: int) -> Optional[bool]:
        layer = record.layers[index]
        leaf = map_tensors(
            _image_output(record.layer_outputs[index], 0),
            lambda value: value.detach().clone().requires_grad_(value.is_floating_point()),
        )
        wanted = [tensor for tensor in tensors_in(leaf) if tensor.requires_grad]
        with torch.enable_grad():
            outputs = replaced_output_runner(self.model, layer, record.input_tensor[:1])(leaf)
            scored = score(record.targets[:1], outputs).sum()
            if not scored.requires_grad or not wanted:
                return None
            grads = torch.autograd.grad(scored, wanted, allow_unused=True)
        return any(grad is not None for grad in grads)

    def release(self) -> None:
        """Drop what the last call kept, the ablation layer's per-call state too (its
        chosen ``indices``, replayed ``activations`` and ``value``)."""
        super().release()
        layer = getattr(self, "ablation_layer", None)
        if layer is not None:
            layer.indices = layer.activations = layer.value = None

    def _channels_to_ablate(self, activations: torch.Tensor) -> torch.Tensor:
        """The channels of one image's activations (K, h, w) to ablate, as an int64
        tensor on their device: all K, or the ablation layer's choice for the ratio."""
        channels = activations.shape[0]
        if self.ratio_channels_to_ablate == 1.0:
            return torch.arange(channels, device=activations.device)
        chosen = self.ablation_layer.activations_to_be_ablated(activations, self.ratio_channels_to_ablate)
        chosen = torch.as_tensor(chosen).to(device=activations.device, dtype=torch.long).reshape(-1)
        if len(chosen) == 0:
            warn_user(
                f"AblationCAM: ratio_channels_to_ablate={self.ratio_channels_to_ablate} selects no "
                f"channel of {channels}; every weight is 0 (raise the ratio)"
            )
        elif len(chosen.unique()) != len(chosen):
            raise ValueError(f"{type(self.ablation_layer).__name__} chose some channels twice: {chosen.tolist()}")
        return chosen

    @staticmethod
    def _ablation_value(
        activations: torch.Tensor, dtype: torch.dtype, switched_off: Optional[bool] = None
    ) -> torch.Tensor:
        """AblationLayer's value rule (see ``pytorch_grad_cam.ablation_layer.ablation_value``)."""
        return ablation_value(activations, dtype, switched_off)

    # ----------------------------------------------------------------- the tail
    def _structure(self) -> Tuple[Tuple[str, object], ...]:
        """The model's modules, parameters and buffers by name (identity compared): a
        traced tail holds references to them, so replacing one makes it stale."""
        model = self.model
        return tuple(model.named_modules()) + tuple(model.named_parameters()) + tuple(model.named_buffers())

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
                self._warn_fallback(known, reason)
        return known

    @staticmethod
    def _warn_fallback(known: _LayerTail, reason: str) -> None:
        """The one-line fallback warning, once per traced tail (not per image or call)."""
        if not known.warned:
            known.warned = True
            warn_user(_FALLBACK + reason)

    def _runner(
        self,
        known: _LayerTail,
        layer: nn.Module,
        image: torch.Tensor,
        original: LayerOutput,
        channels: torch.Tensor,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
        target: Target,
    ) -> Tuple[Callable, bool]:
        """(the function from ablated layer outputs of ``image`` to model outputs, whether
        it is the traced tail): the tail where there is one and it is trusted, else the
        whole model with the layer's output replaced."""
        if not self.tail_only or known.tail is None or known.trusted is False:
            return replaced_output_runner(self.model, layer, image), False
        run = known.tail.bind(image)
        if run is None:
            self._warn_fallback(
                known, "a tensor from before the layer that the network after it reads has no batch dimension"
            )
            return replaced_output_runner(self.model, layer, image), False
        if known.trusted is None and len(channels):
            whole = replaced_output_runner(self.model, layer, image)
            mismatch = self._compare_with_whole_model(run, whole, original, positions, value, target, channels)
            known.trusted = not mismatch
            if mismatch:
                self._warn_fallback(known, mismatch)
                return whole, False
        return run, True

    def _compare_with_whole_model(
        self,
        tail: Callable,
        whole: Callable,
        original: LayerOutput,
        positions: Optional[torch.Tensor],
        value: torch.Tensor,
        target: Target,
        channels: Optional[torch.Tensor] = None,
    ) -> str:
        """'' where the tail's scores on two ablated copies equal the whole model's
        (within a tolerance scaled to the scores), else why not. The tail failing is a
        mismatch; the model or the target failing is the caller's error and propagates.
        ``channels``: those to be ablated (None: all, in order); the first two are tried."""
        if channels is None:
            channels = torch.arange(first_tensor(original).shape[1], device=first_tensor(original).device)
        count = min(2, len(channels))
        copies = self.ablation_layer.ablated_copies(original, channels[:count], value, positions, count)(0, count)
        with torch.no_grad(), perturbed():
            expected = self.score([target] * count, whole(_cloned(copies)))
            try:
                outputs = tail(_cloned(copies))
            except Exception as error:  # noqa: BLE001 - any failure of the tail means "do not use it"
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                return f"its torch.fx tail fails on ablated copies ({type(error).__name__}: {message})"
            scores = self.score([target] * count, outputs)
        mismatch = _difference(scores, expected, first_tensor(original).dtype)
        if mismatch:
            return f"its torch.fx tail gives other scores than the whole model on ablated copies ({mismatch})"
        return ""

    def _channel_positions(self, layer_output: LayerOutput, channels: int) -> Optional[torch.Tensor]:
        """For each reshaped channel k, the flat positions in one image's raw layer
        output that make it up (None when there is no reshape_transform: the ablation
        layer's channel axis; and for a dict/tuple output, whose ablation layer maps
        channels itself, as AblationLayerFasterRCNN).

        Raises:
            ValueError: if the reshape_transform does more than rearrange elements.
        """
        if self.reshape_transform is None or not torch.is_tensor(layer_output):
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
