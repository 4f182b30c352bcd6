"""The checks a CAM call makes on what it is given and what it records, each raising
an error that names the bad value and says what to pass instead."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from pytorch_grad_cam.model_state import compute_dtype

__all__ = ["check_input", "check_outputs", "check_layers_ran", "grid_activations"]


def check_input(input_tensor: object) -> torch.Tensor:
    """``input_tensor`` if it is a finite (B, C, H, W) or (B, C, D, H, W) float tensor
    with at least one image.

    Raises:
        TypeError: if it is not a float tensor.
        ValueError: on another rank, an empty batch, NaN or Inf.
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(
            f"input_tensor must be a torch.Tensor, not {type(input_tensor).__name__}; "
            "use pytorch_grad_cam.utils.image.preprocess_image(img)"
        )
    if input_tensor.ndim not in (4, 5):
        raise ValueError(
            f"input_tensor must be (B, C, H, W) (or (B, C, D, H, W)), got shape "
            f"{tuple(input_tensor.shape)}; add the batch dimension with input_tensor[None]"
        )
    if not input_tensor.is_floating_point():
        raise TypeError(
            f"input_tensor must be a float tensor, got {input_tensor.dtype}; convert it with input_tensor.float()"
        )
    if input_tensor.shape[0] == 0:
        raise ValueError("input_tensor holds no image (batch size 0)")
    if not torch.isfinite(input_tensor).all():
        raise ValueError("input_tensor contains NaN or Inf; clean the input first")
    return input_tensor


def grid_activations(activations: torch.Tensor, layer: nn.Module, has_transform: bool) -> torch.Tensor:
    """``activations`` in the dtype maps are computed in, if they are a 4D/5D grid.

    Raises:
        ValueError: otherwise, saying which reshape_transform would fix it.
    """
    if activations.ndim not in (4, 5):
        hint = (
            "the reshape_transform must return (B, C, h, w) or (B, C, d, h, w)"
            if has_transform
            else "pass reshape_transform=... that returns (B, C, h, w) (for ViT "
            "pytorch_grad_cam.utils.reshape_transforms.vit_reshape_transform, for Swin "
            "swin_reshape_transform)"
        )
        raise ValueError(
            f"target layer {type(layer).__name__} gives activations of shape "
            f"{tuple(activations.shape)}, not (B, C, h, w); {hint}"
        )
    return activations.to(compute_dtype(activations))


def check_outputs(outputs: object) -> None:
    """Raises ValueError, naming the images, if a tensor output holds NaN or Inf."""
    if torch.is_tensor(outputs) and outputs.is_floating_point() and outputs.ndim > 0:
        finite = torch.isfinite(outputs.detach().reshape(outputs.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(
                f"the model output contains NaN or Inf for image(s) {bad}; check the input and the "
                "model (a float16 model may overflow)"
            )


def check_layers_ran(layers: List[nn.Module], layer_outputs: List[object]) -> None:
    """Raises ValueError naming the first target layer the forward pass never called."""
    for layer, output in zip(layers, layer_outputs):
        if output is None:
            raise ValueError(
                f"target layer {type(layer).__name__} was not called during the forward pass; "
                "choose a module that the model's forward() uses"
            )
