"""LayerCAM (Jiang et al., 2021): every position weighted by its own positive gradient."""
import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class LayerCAM(BaseCAM):
    """map = Σ_k relu(G)·A, element-wise (no channel weights)."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False) -> torch.Tensor:
        weighted = torch.relu(grads) * activations
        return get_2d_projection(weighted) if eigen_smooth else weighted.sum(dim=1)
