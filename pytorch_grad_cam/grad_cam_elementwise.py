"""GradCAMElementWise: like HiResCAM, but each position's gradient x activation is
clipped at zero before the channel sum, so negative evidence cannot cancel positive."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class GradCAMElementWise(BaseCAM):
    """map = Σ_k relu(G_k·A_k); with ``eigen_smooth`` the first principal component of
    relu(G·A) instead of the sum."""

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        elementwise = torch.relu(grads * activations)
        return get_2d_projection(elementwise) if eigen_smooth else elementwise.sum(dim=1)
