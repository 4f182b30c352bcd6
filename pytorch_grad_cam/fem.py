"""FEM, the Feature Explanation Method: a channel counts as much as the share of its
positions that stand out from the rest of that channel. Class-agnostic: no
gradients, no backward pass, targets never called."""

from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ReshapeTransform
from pytorch_grad_cam.base_cam import BaseCAM, LayerSpec, Target


class FEM(BaseCAM):
    """w_k = fraction of positions where A_k > μ_k + k·σ_k (μ, σ the channel's spatial
    mean and population standard deviation; strictly greater); map = Σ_k w_k·A_k.

    Args (besides those of :class:`BaseCAM`):
        k: how many standard deviations above the mean a position must lie (default 2).

    ``eigen_smooth`` is ignored: the map is not a weighted sum that a principal
    component could replace (as in the reference).
    """

    uses_gradients = False
    needs_targets = False  # docs/decisions.md, D1: never builds or calls targets

    def __init__(
        self,
        model: nn.Module,
        target_layers: Union[LayerSpec, Sequence[LayerSpec], None] = None,
        reshape_transform: Optional[ReshapeTransform] = None,
        k: float = 2,
        *,
        target_layer: Optional[LayerSpec] = None,
        use_cuda: bool = False,
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise TypeError(f"k must be a number of standard deviations, not {type(k).__name__}")
        super().__init__(model, target_layers, reshape_transform, target_layer=target_layer, use_cuda=use_cuda)
        self.k = k

    def get_cam_image(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
        eigen_smooth: bool = False,
    ) -> torch.Tensor:
        flat = activations.flatten(2)  # (B, K, positions)
        mean = flat.mean(dim=2, keepdim=True)
        std = flat.std(dim=2, correction=0, keepdim=True)
        salient = (flat > mean + self.k * std).float()
        weights = salient.mean(dim=2)
        return (weights.reshape(*weights.shape, *[1] * (activations.ndim - 2)) * activations).sum(dim=1)
