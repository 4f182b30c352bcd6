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
            ``nn.Linear`` the forward pass runs with ``in_features`` equal to the target
            layer's channels and ``out_features`` equal to the model's outputs (found at
            the first call, then kept).

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
        # the Linear layers the running call's forward pass ran (forward_context's hooks)
        self._ran: List[nn.Linear] = []

    @contextmanager
    def forward_context(self) -> Iterator[None]:
        """Without ``fc_layer``: note the ``nn.Linear`` layers the forward pass runs, in
        order (hooks on them for this pass only)."""
        if self.fc_layer is not None or all(layer in self._found for layer in self.target_layers):
            yield
            return
        ran: List[nn.Linear] = []
        self._ran = ran
        linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        handles = [m.register_forward_hook(lambda module, inputs, output: ran.append(module)) for m in linears]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def record(self, input_tensor: torch.Tensor, targets: Optional[List[Target]], copies: int = 1) -> Record:
        """:meth:`BaseCAM.record`, and (first call, no ``fc_layer``) each target layer's
        classifier: the first ``nn.Linear`` the forward pass ran whose ``in_features`` is
        the layer's channels and ``out_features`` the model's number of outputs."""
        record = super().record(input_tensor, targets, copies)
        outputs = record.outputs
        classes = outputs.shape[-1] if torch.is_tensor(outputs) and outputs.ndim > 1 else None
        for layer, activations in zip(record.layers, record.activations):
            if layer in self._found or self.fc_layer is not None:
                continue
            channels = activations.shape[1] if torch.is_tensor(activations) and activations.ndim > 1 else None
            fits = [fc for fc in self._ran if fc.in_features == channels and fc.out_features == classes]
            self._found[layer] = fits[0] if fits else None
        self._ran = []
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
                f"no nn.Linear with in_features={channels} and the model's number of outputs ran for "
                f"target layer {name}; use GradCAM (which needs no such head), or pass fc_layer=..."
            )
        if fc.in_features != channels:
            raise ValueError(
                f"fc_layer {layer_name(self.model, fc)} has in_features={fc.in_features}, but target layer "
                f"{name} has {channels} channels; choose the layer whose pooled output the classifier reads"
            )
        rows = torch.tensor([target.category for target in targets], device=fc.weight.device)
        return fc.weight.detach()[rows].to(activations.device, activations.dtype)
