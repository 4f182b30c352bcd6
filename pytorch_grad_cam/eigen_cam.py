"""EigenCAM (Muhammad & Yeasin, 2020): the first principal component of the
activations. Class-agnostic: no gradients, no backward pass."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class EigenCAM(BaseCAM):
    """map = projection of A on its first principal component."""

    uses_gradients = False
    needs_targets = False

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        return get_2d_projection(activations)
