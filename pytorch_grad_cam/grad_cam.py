"""GradCAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target


class GradCAM(BaseCAM):
    """w_k = mean over positions of dL/dA_k; map = Σ_k w_k·A_k."""

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        return grads.flatten(2).mean(dim=2)
