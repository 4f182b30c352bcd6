"""EigenGradCAM: the first principal component of gradient x activation, a
class-discriminative EigenCAM."""
import torch

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


class EigenGradCAM(BaseCAM):
    """map = projection of G·A on its first principal component."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth=False) -> torch.Tensor:
        return get_2d_projection(grads * activations)
