"""Turn the many forms users pass CAMs in into one: a float32 torch tensor (B, H, W)
on the input's device."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

CamsLike = Union[np.ndarray, torch.Tensor, Sequence[Union[np.ndarray, torch.Tensor]]]


def as_cam_batch(cams: CamsLike, input_tensor: torch.Tensor) -> torch.Tensor:
    """The maps ``cams`` as float32 (B, H, W) on ``input_tensor``'s device.

    ``cams`` is a numpy array or torch tensor (B, H, W), or a list of B (H, W) maps;
    float, bool or uint8 (uint8 maps are divided by 255, bool maps become 0/1).

    Returns:
        A new tensor (the caller's maps are never modified).

    Raises:
        TypeError: if ``cams`` is not an array, a tensor or a list of them.
        ValueError: if the number of maps is not the batch size of ``input_tensor``,
            or a map's (H, W) is not the input's, or a map holds NaN/Inf.
    """
    if isinstance(cams, (list, tuple)):
        maps = [as_cam_batch(cam[None], input_tensor[:1]) if _rank(cam) == 2 else None for cam in cams]
        if any(m is None for m in maps):
            ranks = [_rank(cam) for cam in cams]
            raise ValueError(f"a list of cams must hold (H, W) maps; got maps of rank {ranks}")
        batch = torch.cat(maps) if maps else torch.empty(0, *input_tensor.shape[-2:])
    elif isinstance(cams, np.ndarray) or torch.is_tensor(cams):
        tensor = torch.as_tensor(cams).detach()
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255
        batch = tensor.to(device=input_tensor.device, dtype=torch.float32, copy=True)
        if batch.ndim == 2:
            batch = batch[None]
    else:
        raise TypeError(
            f"cams must be a numpy array, a torch tensor or a list of (H, W) maps, not {type(cams).__name__}"
        )
    if batch.ndim != 3:
        raise ValueError(f"cams must be (B, H, W), got shape {tuple(batch.shape)}")
    if batch.shape[0] != input_tensor.shape[0]:
        raise ValueError(f"{batch.shape[0]} cams for a batch of {input_tensor.shape[0]} images; pass one map per image")
    if tuple(batch.shape[1:]) != tuple(input_tensor.shape[-2:]):
        raise ValueError(
            f"cams are {tuple(batch.shape[1:])} but the input is "
            f"{tuple(input_tensor.shape[-2:])}; resize the maps to the input "
            "(pytorch_grad_cam.utils.image.scale_cam_image(cams, (W, H)))"
        )
    if not torch.isfinite(batch).all():
        raise ValueError("cams contain NaN or Inf")
    return batch


def _rank(cam: object) -> int:
    return int(np.ndim(cam)) if not torch.is_tensor(cam) else cam.ndim
