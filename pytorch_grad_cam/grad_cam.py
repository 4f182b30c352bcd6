"""GradCAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients."""
import torch

from pytorch_grad_cam.base_cam import BaseCAM


class GradCAM(BaseCAM):
    """w_k = mean over positions of dL/dA_k; map = Σ_k w_k·A_k."""

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> torch.Tensor:
        return grads.flatten(2).mean(dim=2)
