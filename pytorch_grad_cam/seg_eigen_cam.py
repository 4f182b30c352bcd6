"""SegEigenCAM: the first principal component of |gradient| x activation, signed so
that its largest magnitude is positive (made for segmentation targets)."""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction


class SegEigenCAM(BaseCAM):
    """map = sign-corrected projection of |G|·A on its first principal component.
    ``eigen_smooth`` is ignored: the map is a projection already."""

    #: Why ``differentiable`` refuses it (pytorch_grad_cam.differentiable).
    not_differentiable = (
        "it projects on a principal component, whose derivative is unbounded where the two largest eigenvalues meet"
    )

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        return get_2d_projection_with_sign_correction(grads.abs() * activations)
