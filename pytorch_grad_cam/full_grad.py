"""FullGrad (Srinivas & Fleuret, 2019): the input-gradient term plus, for every layer
with a bias, |bias x gradient of its output|, each scaled per (image, channel) and
resized to the input, all summed. The target layers are every bias layer."""
from __future__ import annotations

import warnings
from typing import List, Optional

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, Target
from pytorch_grad_cam.utils.image import min_max_scale, resize_maps
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


def effective_bias(layer: nn.Module) -> Optional[torch.Tensor]:
    """The per-channel bias a layer adds in eval mode: a convolution's bias; a batch
    norm's bias − running_mean·weight/sqrt(running_var + eps). None: no bias."""
    if isinstance(layer, nn.Conv2d):
        return None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.BatchNorm2d) and layer.bias is not None and layer.running_mean is not None:
        scale = layer.weight.detach() / torch.sqrt(layer.running_var + layer.eps)
        return layer.bias.detach() - layer.running_mean * scale
    return None


def _scale_channels(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W): min-max per (image, channel), then resized."""
    batch, channels = maps.shape[:2]
    scaled = min_max_scale(maps.reshape(batch * channels, *maps.shape[2:]))
    return resize_maps(scaled, size).reshape(batch, channels, *size)


class FullGrad(BaseCAM):
    """map = minmax(Σ_c s(|∇X ⊙ X|_c) + Σ_l Σ_c s(|b_l,c · G_l,c|)), s = per-(image,
    channel) min-max and resize; no ReLU. Bias layers (Conv2d with a bias, BatchNorm2d)
    are the ones the forward pass runs, each paired with its own gradient, so the
    modules' registration order does not matter and models without BatchNorm work."""

    compute_input_gradient = True
    allow_unreached_layers = True

    def __init__(self, model: nn.Module, target_layers=None, reshape_transform=None, **kwargs) -> None:
        if target_layers:
            warnings.warn("FullGrad uses every layer with a bias; target_layers is ignored", stacklevel=2)
        layers = [m for m in model.modules() if effective_bias(m) is not None]
        if not layers:
            raise ValueError("FullGrad needs Conv2d/BatchNorm2d layers with a bias; the model has none")
        super().__init__(model, layers, reshape_transform, **kwargs)

    def _check_layers_ran(self, recorder) -> None:
        # Bias layers the forward pass never runs add nothing (they are dropped).
        ran = [(l, o) for l, o in zip(self.target_layers, recorder.layer_outputs) if o is not None]
        self._ran = {id(layer) for layer, _ in ran}

    def compute_cam_per_layer(self, input_tensor, targets, recorded, eigen_smooth) -> List[torch.Tensor]:
        size = tuple(input_tensor.shape[2:])
        gradient = self._input_gradient.float()
        terms = [_scale_channels((gradient * input_tensor.float()).abs(), size)]
        for layer, (activations, grads) in zip(self.target_layers, recorded):
            if id(layer) not in self._ran or grads is None:
                continue
            bias = effective_bias(layer).float().reshape(1, -1, 1, 1)
            terms.append(_scale_channels((bias * grads.float()).abs(), size).sum(1, keepdim=True))
        terms = torch.cat(terms, dim=1)
        if not eigen_smooth:
            return [terms.sum(1)]
        small = (max(size[0] // 8, 1), max(size[1] // 8, 1))
        projected = get_2d_projection(_scale_channels(terms, small))
        return [_scale_channels(projected[:, None], size)[:, 0]]

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        return min_max_scale(cams[0])
