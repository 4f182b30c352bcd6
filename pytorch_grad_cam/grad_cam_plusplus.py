"""GradCAM++ (Chattopadhyay et al., 2018): positive gradients weighted by the
closed-form second/third-order coefficients α."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target


def plusplus_weights(
    activations: torch.Tensor, first: torch.Tensor, second: torch.Tensor, third: torch.Tensor
) -> torch.Tensor:
    """GradCAM++'s channel weights (B, K) from the gradient's powers D¹, D², D³ (each
    shaped as ``activations``, (B, K, *spatial)): α = D² / (2D² + (Σ_ij A)·D³ + 1e-6)
    (0 where D² = 0), w_k = Σ_ij relu(D¹)·α. GradCAM++ passes G, G², G³;
    SmoothGradCAM++ their means over noisy copies."""
    spatial_dims = tuple(range(2, activations.ndim))
    sum_activations = activations.sum(dim=spatial_dims, keepdim=True)
    alpha = second / (2 * second + sum_activations * third + 1e-6)
    alpha = torch.where(second != 0, alpha, torch.zeros_like(alpha))
    return (torch.relu(first) * alpha).sum(dim=spatial_dims)


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
        return plusplus_weights(activations, grads, grads_power_2, grads_power_2 * grads)
