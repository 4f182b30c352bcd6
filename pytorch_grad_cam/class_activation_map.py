"""CAM (Zhou et al., 2016), the original class activation map: for a network that ends
in global average pooling and one fully connected layer, class c's score is
y_c = Σ_k w^c_k · mean_ij A_k(i, j) + b_c, and its map is

    M_c(i, j) = Σ_k w^c_k · A_k(i, j),

w^c the fully connected layer's row for class c and A the last convolutional features
(the layer before the pooling). No backward pass: the weights are read off the layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.layers import LayerSpec, layer_name, resolve_target_layers
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.utils.messages import warn_user
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)

__all__ = ["CAM"]

#: The targets CAM can explain: each names one class of the classifier.
CLASS_TARGETS = (ClassifierOutputTarget, ClassifierOutputSoftmaxTarget, ClassifierOutputReST)


class CAM(BaseCAM):
    """M_c = Σ_k w^c_k·A_k with w^c = ``fc_layer.weight[c]``.

    Args (besides those of :class:`BaseCAM`):
        fc_layer: the classifier (an ``nn.Linear``, or its dotted name) whose input is the
            target layer's globally pooled channels (ResNet's ``fc``). None: the first
            ``nn.Linear`` that runs after each target layer with ``in_features`` equal to
            the layer's channels and ``out_features`` equal to the model's outputs; the
            first call finds it and warns which.

    Raises:
        TypeError: if ``fc_layer`` is not an ``nn.Linear`` (module or name); at a call, if
            a target is not a class's (``ClassifierOutputTarget`` and its softmax and ReST
            forms).
        ValueError: if ``fc_layer`` is not inside the model; at a call, if no fully
            connected layer fits a target layer (a model without global pooling and one
            Linear head, such as VGG's or MobileNet-v3's MLP), or ``fc_layer``'s
            ``in_features`` is not the layer's channels.
    """

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        *,
        fc_layer: Optional[LayerSpec] = None,
        tta_transforms: Optional[object] = None,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            tta_transforms=tta_transforms,
            target_layer=target_layer,
            use_cuda=use_cuda,
        )
        #: The classifier given as ``fc_layer`` (None: found per target layer at a call).
        self.fc_layer: Optional[nn.Linear] = None
        if fc_layer is not None:
            (self.fc_layer,) = resolve_target_layers(self.model, fc_layer)
            if not isinstance(self.fc_layer, nn.Linear):
                raise TypeError(f"fc_layer must be an nn.Linear, not {type(self.fc_layer).__name__}")
        self._found: Dict[nn.Module, Optional[nn.Linear]] = {}
        # what the running call's forward pass found (filled by forward_context's hooks)
        self._found_now: Dict[nn.Module, nn.Linear] = {}

    @contextmanager
    def forward_context(self) -> Iterator[None]:
        """Without ``fc_layer``: watch the forward pass for the first ``nn.Linear`` run
        after each target layer whose ``in_features`` is the layer's channels."""
        if self.fc_layer is not None or all(layer in self._found for layer in self.target_layers):
            yield
            return
        after: Dict[nn.Module, Optional[int]] = {}  # target layer -> its channels, until found
        found: Dict[nn.Module, nn.Linear] = {}

        def layer_ran(module: nn.Module, inputs: tuple, output: object) -> None:
            after[module] = output.shape[1] if torch.is_tensor(output) and output.ndim > 1 else None
            found.pop(module, None)  # explain the layer's last call: its classifier runs after it

        def linear_ran(module: nn.Module, inputs: tuple, output: object) -> None:
            for layer, channels in after.items():
                if layer not in found and channels == module.in_features:
                    found[layer] = module

        self._found_now = found
        handles = [layer.register_forward_hook(layer_ran) for layer in self.target_layers]
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        handles += [m.register_forward_hook(linear_ran) for m in linears]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def record(self, input_tensor: torch.Tensor, targets: Optional[List[Target]], copies: int = 1) -> Record:
        """:meth:`BaseCAM.record`, and (first call, no ``fc_layer``) the classifier found
        for each target layer, kept only if its outputs are the model's; warns which."""
        record = super().record(input_tensor, targets, copies)
        outputs = record.outputs
        classes = outputs.shape[-1] if torch.is_tensor(outputs) and outputs.ndim > 1 else None
        for layer in self.target_layers:
            if layer in self._found or self.fc_layer is not None:
                continue
            fc = self._found_now.get(layer)
            self._found[layer] = fc if fc is not None and fc.out_features == classes else None
            if self._found[layer] is not None:
                warn_user(
                    f"CAM: fc_layer not given; using {layer_name(self.model, fc)} ({fc}) as the classifier of "
                    f"target layer {layer_name(self.model, layer)}; pass fc_layer=... to choose"
                )
        self._found_now = {}
        return record

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        """The classifier's rows (B, K) for the targets' classes."""
        for target in targets:
            if not isinstance(target, CLASS_TARGETS):
                raise TypeError(
                    f"CAM weights the channels by the classifier's row of a class, so each target must name "
                    f"a class (ClassifierOutputTarget(c)); got {type(target).__name__}"
                )
        fc = self.fc_layer if self.fc_layer is not None else self._found.get(target_layer)
        channels = activations.shape[1]
        name = layer_name(self.model, target_layer)
        if fc is None:
            raise ValueError(
                f"CAM needs global average pooling and one nn.Linear classifier after the target layer, and "
                f"no nn.Linear with in_features={channels} and the model's number of outputs ran after "
                f"target layer {name}; use GradCAM (which needs no such head), or pass fc_layer=..."
            )
        if fc.in_features != channels:
            raise ValueError(
                f"fc_layer {layer_name(self.model, fc)} has in_features={fc.in_features}, but target layer "
                f"{name} has {channels} channels; choose the layer whose pooled output the classifier reads"
            )
        rows = torch.tensor([target.category for target in targets], device=fc.weight.device)
        return fc.weight.detach()[rows].to(activations.device, activations.dtype)
