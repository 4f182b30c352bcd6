"""RefineCAM: the element-wise product of a base method's maps at several layers, so
the coarse deep map gates the fine shallow one; then min-max."""
from __future__ import annotations

from typing import List, Type

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.utils.image import min_max_scale


class RefineCAM(BaseCAM):
    """map = minmax(Π_l M_l), M_l the base method's (GradCAM++ by default) map of layer
    l alone, in [0, 1] at input size. One forward and backward serve every layer.
    ``eigen_smooth`` is eigen smoothing of each layer's map (COMPAT decision 6)."""

    def __init__(
        self,
        model: nn.Module,
        target_layers=None,
        reshape_transform=None,
        base_method: Type[BaseCAM] = GradCAMPlusPlus,
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

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False):
        # The base method reads this call's layer outputs (AblationCAM does) and must not
        # keep them: they hold the call's activations, and through them its graph.
        self.base._layer_outputs = self._layer_outputs
        try:
            return self.base.get_cam_image(input_tensor, target_layer, targets, activations, grads, eigen_smooth)
        finally:
            self.base._layer_outputs = {}

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        product = min_max_scale(cams[0])
        for cam in cams[1:]:
            product = product * min_max_scale(cam)
        return min_max_scale(product)
