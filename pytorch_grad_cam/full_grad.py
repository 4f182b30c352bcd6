"""FullGrad (Srinivas & Fleuret, 2019): the input-gradient term plus, for every layer
with a bias, |bias x gradient of its output|, each scaled per (image, channel) and
resized to the input, all summed. The target layers are every bias layer."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.layers import resolve_target_layers, unwrap_parallel
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.utils.image import min_max_scale, resize_maps
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def effective_bias(layer: nn.Module) -> Optional[torch.Tensor]:
    """The per-channel bias a layer adds in eval mode: a convolution's bias; a batch
    norm's bias − running_mean·weight/sqrt(running_var + eps). None: no bias.
    Convolutions and batch norms of every spatial rank count (Conv1d/BatchNorm1d for
    signals, Conv3d/BatchNorm3d for volumes), by the same rule."""
    if isinstance(layer, _CONVOLUTIONS):
        return None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, _BATCH_NORMS) and layer.bias is not None and layer.running_mean is not None:
        scale = layer.weight.detach() / torch.sqrt(layer.running_var + layer.eps)
        return layer.bias.detach() - layer.running_mean * scale
    return None


def _scale_channels(maps: torch.Tensor, size) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, *size): min-max per (image, channel), then resized."""
    batch, channels = maps.shape[:2]
    scaled = min_max_scale(maps.reshape(batch * channels, *maps.shape[2:]))
    return resize_maps(scaled, size).reshape(batch, channels, *size)


def _bias_term(bias: torch.Tensor, grads: torch.Tensor, scratch: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ_c minmax(|b_c · G_c|) (B, *spatial), minmax per (image, channel) as
    :func:`min_max_scale` (eps 1e-7): |b_c·G_c| = |b_c|·|G_c|, so each channel's scaled
    map is (|G_c| − min|G_c|)·|b_c| / (|b_c|·(max|G_c| − min|G_c|) + 1e-7), and the
    channel sum is one weighted reduction over |G| (four passes over the gradient
    instead of seven). ``scratch``: a float32 tensor of at least ``grads.numel()``
    elements on its device that |G| is written to (else a fresh tensor)."""
    flat = grads.flatten(2)
    if flat.dtype == torch.float32 and scratch is not None:
        magnitude = torch.abs(flat, out=scratch[: flat.numel()].view(flat.shape))
    else:
        magnitude = flat.float().abs()  # (B, C, N), a fresh tensor
    low, high = magnitude.amin(dim=2), magnitude.amax(dim=2)  # (torch.aminmax is ~10x slower on the CPU)
    weight = bias.float().abs()
    scale = weight / (weight * (high - low) + 1e-7)  # (B, C)
    summed = torch.bmm(scale.unsqueeze(1), magnitude.sub_(low.unsqueeze(2)))[:, 0]
    return summed.reshape(grads.shape[0], *grads.shape[2:])


class FullGrad(BaseCAM):
    """map = minmax(Σ_c s(|∇X ⊙ X|_c) + Σ_l Σ_c s(|b_l,c · G_l,c|)), s = per-(image,
    channel) min-max and resize; no ReLU. Bias layers (convolutions with a bias, batch
    norms; 2-D and 3-D alike) are the ones the forward pass runs, each paired with its
    own gradient, so the modules' registration order does not matter and models without
    BatchNorm work. Every term is computed in float32 from the model's gradients.

    ``target_layers`` and ``reshape_transform`` are accepted, so that every registered
    method takes the same arguments, and ignored: the layers are by definition every
    bias layer, whose outputs are already grids. A given layer must still be inside the
    model (a foreign one is an error, as for every method). The reference warns that it
    ignores them; here it is documented instead of a warning on every construction by
    the command line, the benchmark and any code that treats the methods alike.
    """

    #: Why ``differentiable`` refuses it (pytorch_grad_cam.differentiable).
    not_differentiable = "its bias terms are reduced inside the backward pass, outside autograd"
    compute_input_gradient = True
    allow_unreached_layers = True
    record_activations = False  # only the gradients are read

    def __init__(self, model: nn.Module, target_layers=None, reshape_transform=None, **kwargs) -> None:
        given = kwargs.pop("target_layer", None)
        if given is not None or (target_layers is not None and not _empty_list(target_layers)):
            resolve_target_layers(model, target_layers, given)  # only validated
        layers = [m for m in unwrap_parallel(model).modules() if effective_bias(m) is not None]
        if not layers:
            raise ValueError(
                "FullGrad needs convolution or batch-norm layers with a bias "
                "(Conv1d/2d/3d, BatchNorm1d/2d/3d); the model has none"
            )
        super().__init__(model, layers, None, **kwargs)

    def reduce_gradient(self, record: Record, target_layer: nn.Module, grads: torch.Tensor) -> Optional[torch.Tensor]:
        """The layer's bias term Σ_c s(|b_c · G_c|) (B, *spatial) at the layer's
        resolution, computed as its gradient arrives (the gradient is then freed); None
        for a layer whose output is not a grid of the input's rank (a Conv1d over
        channels, as in ECA attention): it has no map at the input's size.

        |G| goes to one scratch buffer of the call (``record.extras["scratch"]``), grown
        as the backward pass reaches larger layers, not to a fresh tensor per layer."""
        if grads.ndim != record.input_tensor.ndim:
            return None
        scratch = record.extras.get("scratch")
        if scratch is None or scratch.numel() < grads.numel() or scratch.device != grads.device:
            grown = 0 if scratch is None else 2 * scratch.numel()
            scratch = torch.empty(max(grads.numel(), grown), dtype=torch.float32, device=grads.device)
            record.extras["scratch"] = scratch
        return _bias_term(effective_bias(target_layer), grads, scratch)

    def compute_cam_per_layer(self, record: Record, eigen_smooth: bool) -> List[torch.Tensor]:
        """The one FullGrad map (before the final min-max): the input term plus every
        bias term. A bias layer applied several times in one forward pass (a detection
        head's convolution shared by the pyramid levels) adds one term per application,
        as the full-gradient decomposition counts its bias once per application; a bias
        layer the forward pass never runs adds nothing."""
        record.extras.pop("scratch", None)  # the backward pass is over
        input_tensor = record.input_tensor
        size = tuple(input_tensor.shape[2:])
        input_term = _scale_channels((record.input_gradient.float() * input_tensor.float()).abs(), size)
        bias_terms = [term for calls in record.call_gradients for term in calls if term is not None]
        if not eigen_smooth:
            # Each term is already summed over its channels at the layer's resolution
            # (resizing is linear), so the terms of one resolution are summed before one
            # resize: a handful of maps at the input size, not one per layer.
            by_size = {}
            for term in bias_terms:
                key = tuple(term.shape[1:])
                by_size[key] = term if key not in by_size else by_size[key] + term
            total = input_term.sum(1)
            for summed in by_size.values():
                total += resize_maps(summed, size)
            return [total]
        terms = torch.cat([input_term] + [resize_maps(t, size)[:, None] for t in bias_terms], dim=1)
        # The projection runs at 1/8 of the input size. Below 64 pixels a side that
        # leaves a grid of a few cells (a 1x1x1 grid has no principal component at all),
        # so the grid keeps up to 8 cells a side there; at 64 pixels and up it is 1/8.
        small = tuple(max(side // 8, min(side, 8)) for side in size)
        projected = get_2d_projection(_scale_channels(terms, small))
        return [_scale_channels(projected[:, None], size)[:, 0]]

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        return min_max_scale(cams[0])


def _empty_list(layers: object) -> bool:
    """``[]`` / ``()``: what grad-cam 1.5.x users pass to FullGrad for "no layers"."""
    return isinstance(layers, (list, tuple)) and not layers
