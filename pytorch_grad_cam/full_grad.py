"""FullGrad (Srinivas & Fleuret, 2019): the input-gradient term plus, for every layer
with a bias, |bias x gradient of its output|, each scaled per (image, channel) and
resized to the input, all summed. The target layers are every bias layer."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from pytorch_grad_cam.base_cam import BaseCAM, resolve_target_layers, unwrap_parallel
from pytorch_grad_cam.utils.image import min_max_scale, resize_maps
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection


_CONVOLUTIONS = (nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


def effective_bias(layer: nn.Module) -> Optional[torch.Tensor]:
    """The per-channel bias a layer adds in eval mode: a convolution's bias; a batch
    norm's bias − running_mean·weight/sqrt(running_var + eps). None: no bias.
    Convolutions and batch norms of every spatial rank count (Conv3d/BatchNorm3d for
    volumes), by the same rule."""
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


def _bias_term(
    bias: torch.Tensor, grads: torch.Tensor, scratch: Optional[torch.Tensor] = None
) -> torch.Tensor:
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
                "(Conv2d/3d, BatchNorm2d/3d); the model has none"
            )
        super().__init__(model, layers, None, **kwargs)
        self._scratch: Optional[torch.Tensor] = None  # |G| of each layer in turn (reduce_gradient)

    def _check_layers_ran(self, recorder) -> None:
        # Bias layers the forward pass never runs add nothing (they are dropped).
        ran = [(l, o) for l, o in zip(self.target_layers, recorder.layer_outputs) if o is not None]
        self._ran = {id(layer) for layer, _ in ran}

    def reduce_gradient(self, input_tensor, target_layer, grads) -> Optional[torch.Tensor]:
        """The layer's bias term Σ_c s(|b_c · G_c|) (B, *spatial) at the layer's
        resolution, computed as its gradient arrives (the gradient is then freed); None
        for a layer whose output is not a grid of the input's rank (a Conv1d over
        channels, as in ECA attention): it has no map at the input's size.

        |G| goes to one scratch buffer reused by every layer of the call (grown as the
        backward pass reaches larger layers, dropped when the maps are done), not to 53
        fresh tensors, each of whose memory pages the system would have to supply."""
        if grads.ndim != input_tensor.ndim:
            return None
        scratch = self._scratch
        if scratch is None or scratch.numel() < grads.numel() or scratch.device != grads.device:
            grown = 0 if scratch is None else 2 * scratch.numel()
            scratch = torch.empty(max(grads.numel(), grown), dtype=torch.float32, device=grads.device)
            self._scratch = scratch
        return _bias_term(effective_bias(target_layer), grads, scratch)

    def compute_cam_per_layer(self, input_tensor, targets, recorded, eigen_smooth) -> List[torch.Tensor]:
        self._scratch = None  # the backward pass is over
        size = tuple(input_tensor.shape[2:])
        gradient = self._input_gradient.float()
        input_term = _scale_channels((gradient * input_tensor.float()).abs(), size)
        # Each layer's term is already summed over its channels at the layer's resolution
        # (Σ_c resize(s_c) = resize(Σ_c s_c): resizing is linear), see reduce_gradient.
        bias_terms = [
            term
            for layer, (_, term) in zip(self.target_layers, recorded)
            if id(layer) in self._ran and term is not None
        ]
        if not eigen_smooth:
            # For the same reason the layers of one resolution are summed there, and one
            # map per resolution is resized (a handful of maps at the input size, not 53).
            by_size = {}
            for term in bias_terms:
                key = tuple(term.shape[1:])
                by_size[key] = term if key not in by_size else by_size[key] + term
            total = input_term.sum(1)
            for summed in by_size.values():
                total += resize_maps(summed, size)
            return [total]
        terms = torch.cat([input_term] + [resize_maps(t, size)[:, None] for t in bias_terms], dim=1)
        # The reference projects at 1/8 of the input size. Below 64 pixels a side that
        # leaves a grid of a few cells (a 1x1x1 grid has no principal component at all),
        # so the grid keeps up to 8 cells a side there; at 64 pixels and up it is 1/8.
        small = tuple(max(side // 8, min(side, 8)) for side in size)
        projected = get_2d_projection(_scale_channels(terms, small))
        return [_scale_channels(projected[:, None], size)[:, 0]]

    def aggregate_multi_layers(self, cams: List[torch.Tensor]) -> torch.Tensor:
        return min_max_scale(cams[0])

    def release(self) -> None:
        """Drop what the last call kept, the scratch buffer of a call that raised too."""
        self._scratch = None
        super().release()


def _empty_list(layers: object) -> bool:
    """``[]`` / ``()``: what grad-cam 1.5.x users pass to FullGrad for "no layers"."""
    return isinstance(layers, (list, tuple)) and not layers
