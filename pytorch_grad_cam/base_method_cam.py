"""BaseMethodCAM: a method that computes its maps with another method (the *base
method*) inside this method's own pipeline (FinerCAM, RefineCAM).

The wrapper owns the call (its targets, its layer aggregation); each layer's map is the
base method's ``get_cam_image`` on the activations and gradients this call recorded.
"""
from __future__ import annotations

from typing import Type

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM


class BaseMethodCAM(BaseCAM):
    """Compute each layer's map with ``base_method`` (built on the same model, layers
    and ``reshape_transform``; extra keywords such as ``batch_size`` go to it).

    The wrapper takes the base method's needs: gradients, targets, the input gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform,
        base_method: Type[BaseCAM],
        **kwargs,
    ) -> None:
        own = {k: kwargs.pop(k) for k in ("target_layer", "use_cuda") if k in kwargs}
        super().__init__(model, target_layers, reshape_transform, **own)
        self.base = base_method(model, self.target_layers or None, reshape_transform, **kwargs)
        self.uses_gradients = self.base.uses_gradients
        self.needs_targets = self.base.needs_targets
        self.compute_input_gradient = self.base.compute_input_gradient

    def release(self) -> None:
        super().release()
        if getattr(self, "base", None) is not None:
            self.base.release()

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False) -> torch.Tensor:
        # The base method reads this call's layer outputs (AblationCAM does) and must not
        # keep them: they hold the call's activations, and through them its graph.
        self.base._layer_outputs = self._layer_outputs
        try:
            return self.base.get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
        finally:
            self.base._layer_outputs = {}
