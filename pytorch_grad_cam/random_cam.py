"""RandomCAM: channel weights drawn uniformly from [-1, 1], a baseline that any
faithful method must beat (the metrics compare against it).

The weights come from torch's global generator on the activations' device, so
``torch.manual_seed`` makes a run repeatable.
"""

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target


class RandomCAM(BaseCAM):
    """w_k ~ Uniform(-1, 1) per image and channel; map = Σ_k w_k·A_k."""

    #: Why ``differentiable`` refuses it (pytorch_grad_cam.differentiable).
    not_differentiable = "its weights are random, not a function of the model"

    def get_cam_weights(
        self,
        input_tensor: torch.Tensor,
        target_layer: nn.Module,
        targets: List[Target],
        activations: torch.Tensor,
        grads: torch.Tensor,
    ) -> torch.Tensor:
        batch, channels = activations.shape[:2]
        return torch.rand(batch, channels, device=activations.device) * 2 - 1
