"""RefineCAM: the element-wise product of a base method's maps at several layers, so
the coarse deep map gates the fine shallow one; then min-max."""

from __future__ import annotations

from typing import List, Type

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.base_method_cam import BaseMethodCAM
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.utils.image import min_max_scale


class RefineCAM(BaseMethodCAM):
    """map = minmax(Π_l M_l), M_l the base method's (GradCAM++ by default) map of layer
    l alone, in [0, 1] at input size. One forward and backward serve every layer.
    ``eigen_smooth`` is eigen smoothing of each layer's map (docs/decisions.md, D6)."""

    def __init__(
        self,
        model: nn.Module,
        target_layers=None,
        reshape_transform=None,
        base_method: Type[BaseCAM] = GradCAMPlusPlus,
        **kwargs,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, base_method, **kwargs)

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        product = min_max_scale(cams[0])
        for cam in cams[1:]:
            product = product * min_max_scale(cam)
        return min_max_scale(product)
