"""KPCA-CAM (Karmani et al., 2024): EigenCAM with kernel PCA, the first kernel
principal component of the activations. Class-agnostic: no gradients, no backward
pass, targets never called."""

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM, LayerSpec, Target
from pytorch_grad_cam.utils.svd_on_activations import KERNELS, get_2d_projection_kernel


class KPCA_CAM(BaseCAM):  # noqa: N801 - the reference's public name
    """map = projection of A on its first kernel principal component
    (:func:`~pytorch_grad_cam.utils.svd_on_activations.get_2d_projection_kernel`).

    Args (besides those of :class:`BaseCAM`):
        kernel: ``linear``, ``poly``, ``rbf``, ``sigmoid`` (default) or ``cosine``.
        gamma: the kernel coefficient; None means 1 / channels.

    ``eigen_smooth`` is ignored: the map is a projection already. Cost grows as the
    cube of the layer's positions: fine up to about 28 x 28.

    Raises:
        ValueError: on an unknown ``kernel``.
    """

    uses_gradients = False
    needs_targets = False  # docs/decisions.md, D1: never builds or calls targets

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        kernel: str = "sigmoid",
        gamma: Optional[float] = None,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        super().__init__(model, target_layers, reshape_transform, target_layer=target_layer, use_cuda=use_cuda)
        self.kernel = kernel
        self.gamma = gamma

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        return get_2d_projection_kernel(activations, self.kernel, self.gamma)
