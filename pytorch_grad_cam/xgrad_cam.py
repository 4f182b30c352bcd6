"""XGradCAM (Fu et al., 2020): gradients weighted by the normalised activations."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target


class XGradCAM(BaseCAM):
    """w_k = Σ_ij G·A / (Σ_ij A + 1e-7)."""

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        spatial_dims = tuple(range(2, activations.ndim))
        sum_activations = activations.sum(dim=spatial_dims)
        return (grads * activations).sum(dim=spatial_dims) / (sum_activations + 1e-7)
