"""HiResCAM (Draelos & Carin, 2020): every position weighted by its own gradient, so
that the map is a faithful decomposition of the target score of a linear head."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.utils.messages import warn_user
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class HiResCAM(BaseCAM):
    """map = Σ_k G_k·A_k, element-wise (no ReLU before the sum; BaseCAM's comes after).

    With ``eigen_smooth`` the map is the first principal component of G·A instead,
    and a warning says that the faithfulness guarantee no longer holds.
    """

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        elementwise = grads * activations
        if eigen_smooth:
            warn_user(
                "HiResCAM with eigen_smooth=True: the principal-component projection is not "
                "a faithful decomposition of the target score any more"
            )
            return get_2d_projection(elementwise)
        return elementwise.sum(dim=1)
