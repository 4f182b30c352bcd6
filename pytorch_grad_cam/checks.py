"""The checks a CAM call makes on what it is given and what it records, each raising
an error that names the bad value and says what to pass instead."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

import torch
from torch import nn

from pytorch_grad_cam.model_state import compute_dtype

if TYPE_CHECKING:  # recording imports the scoring this module's users import first
    from pytorch_grad_cam.recording import Record

__all__ = ["check_input", "takes_signals", "check_outputs", "check_layers_ran", "grid_activations", "layer_grid"]


def check_input(input_tensor: object, model: Optional[nn.Module] = None) -> torch.Tensor:
    """``input_tensor`` if it is a finite (B, C, H, W) or (B, C, D, H, W) float tensor
    with at least one image, or a (B, C, L) batch of 1D signals for a ``model`` that
    takes them (see :func:`takes_signals`).

    Raises:
        TypeError: if it is not a float tensor.
        ValueError: on another rank, an empty batch, NaN or Inf.
    """
    if not isinstance(input_tensor, torch.Tensor):
        raise TypeError(
            f"input_tensor must be a torch.Tensor, not {type(input_tensor).__name__}; "
            "use pytorch_grad_cam.utils.image.preprocess_image(img)"
        )
    if input_tensor.ndim not in (4, 5) and not (input_tensor.ndim == 3 and takes_signals(model)):
        raise ValueError(
            f"input_tensor must be (B, C, H, W) (or (B, C, D, H, W)), got shape "
            f"{tuple(input_tensor.shape)}; add the batch dimension with input_tensor[None] "
            "((B, C, L) 1D signals go to models with Conv1d layers or no convolutions)"
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


def takes_signals(model: Optional[nn.Module]) -> bool:
    """Whether a 3D input to ``model`` is a batch of (B, C, L) 1D signals rather than an
    image without its batch dimension: the model has a Conv1d, or no 2D/3D convolution
    (a transformer over a signal's patches)."""
    if model is None:
        return False
    kinds = {type(module) for module in model.modules()}
    has_1d = any(issubclass(kind, nn.Conv1d) for kind in kinds)
    return has_1d or not any(issubclass(kind, (nn.Conv2d, nn.Conv3d)) for kind in kinds)


def grid_activations(
    activations: torch.Tensor, layer: nn.Module, has_transform: object, input_ndim: int = 4
) -> torch.Tensor:
    """``activations`` in the dtype maps are computed in, if they are a grid of the
    input's kind: (B, C, L) for a (B, C, L) input (``input_ndim`` 3), 5D for a clip, else 4D/5D.
    ``has_transform`` is truthy when a reshape_transform is given (the transform itself).

    Raises:
        ValueError: otherwise, saying which reshape_transform would fix it.
    """
    if input_ndim == 3 and activations.ndim != 3:
        raise ValueError(
            f"target layer {type(layer).__name__} gives activations of shape {tuple(activations.shape)} "
            "for a (B, C, L) signal; choose a layer whose output is (B, C, l) (a Conv1d), or pass a "
            "reshape_transform that returns (B, C, l) (tokens (B, T, D): x.transpose(1, 2))"
        )
    if input_ndim == 5 and activations.ndim != 5:
        raise ValueError(
            f"target layer {type(layer).__name__} gives activations of shape {tuple(activations.shape)} "
            "for a (B, C, T, H, W) clip; choose a layer whose output is (B, C, t, h, w) (a Conv3d), or pass "
            "a reshape_transform that returns it (video tokens (B, 1 + t*h*w, D): drop the class token, reshape)"
        )
    if input_ndim != 3 and activations.ndim not in (4, 5):
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


def layer_grid(record: "Record", index: int, reshape_transform: object) -> torch.Tensor:
    """:func:`grid_activations` of ``record``'s ``index``-th layer, for its input's kind
    (``reshape_transform``: the CAM's, or None).

    Raises:
        ValueError: as :func:`grid_activations`; if the layer's rows are not the input's
            images (a layer that runs on attention heads folded into the batch).
    """
    layer = record.layers[index]
    activations = grid_activations(record.activations[index], layer, reshape_transform, record.input_tensor.ndim)
    if activations.shape[0] != record.input_tensor.shape[0]:
        raise ValueError(
            f"target layer {type(layer).__name__} gives {activations.shape[0]} rows for "
            f"{record.input_tensor.shape[0]} input image(s): its batch is not the images' (heads or "
            "windows folded into it); choose a layer whose output has one row per image"
        )
    return activations


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
