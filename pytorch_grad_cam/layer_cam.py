"""LayerCAM (Jiang et al., 2021): every position weighted by its own positive gradient."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class LayerCAM(BaseCAM):
    """map = Σ_k relu(G)·A, element-wise (no channel weights)."""

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        weighted = torch.relu(grads) * activations
        return get_2d_projection(weighted) if eigen_smooth else weighted.sum(dim=1)
