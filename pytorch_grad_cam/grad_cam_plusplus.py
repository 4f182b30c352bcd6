"""GradCAM++ (Chattopadhyay et al., 2018): positive gradients weighted by the
closed-form second/third-order coefficients α."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target


class GradCAMPlusPlus(BaseCAM):
    """α = G² / (2G² + (Σ_ij A)·G³ + 1e-6) (0 where G = 0); w_k = Σ_ij relu(G)·α."""

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        grads_power_2 = grads**2
        grads_power_3 = grads_power_2 * grads
        spatial_dims = tuple(range(2, activations.ndim))
        sum_activations = activations.sum(dim=spatial_dims, keepdim=True)
        alpha = grads_power_2 / (2 * grads_power_2 + sum_activations * grads_power_3 + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (torch.relu(grads) * alpha).sum(dim=spatial_dims)
