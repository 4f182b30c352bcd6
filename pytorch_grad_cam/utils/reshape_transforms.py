"""Adapters that turn transformer token activations into CNN-like (B, C, h, w) maps,
for the ``reshape_transform`` argument of every CAM method."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def _grid(tokens: int, height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    if height is None and width is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"{tokens} tokens do not form a square grid; pass height= and width= "
                "(for example functools.partial(vit_reshape_transform, height=14, width=16))"
            )
        return side, side
    if height is None:
        height = tokens // width
    if width is None:
        width = tokens // height
    if height * width != tokens:
        raise ValueError(
            f"a {height}x{width} grid holds {height * width} tokens, but the layer has "
            f"{tokens}; pass the grid size of the patch tokens"
        )
    return height, width


def vit_reshape_transform(
    tensor: torch.Tensor,
    height: Optional[int] = None,
    width: Optional[int] = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """ViT tokens (B, prefix + h*w, C) -> (B, C, h, w), dropping the class token(s).

    Args:
        tensor: token activations or gradients of a ViT block.
        height, width: the patch grid; inferred as a square when not given.
        num_prefix_tokens: leading non-patch tokens (1 for ViT/DeiT's class token,
            2 for distilled DeiT).

    Returns:
        A (B, C, h, w) view-like tensor on the same device.

    Raises:
        ValueError: if ``tensor`` is not 3D or its tokens do not fill the grid.
    """
    if tensor.ndim != 3:
        raise ValueError(
            f"vit_reshape_transform expects (B, tokens, C), got shape {tuple(tensor.shape)}"
        )
    patches = tensor[:, num_prefix_tokens:, :]
    grid_h, grid_w = _grid(patches.shape[1], height, width)
    return patches.reshape(tensor.shape[0], grid_h, grid_w, tensor.shape[2]).permute(0, 3, 1, 2)


def swin_reshape_transform(
    tensor: torch.Tensor, height: Optional[int] = None, width: Optional[int] = None
) -> torch.Tensor:
    """Swin activations (B, h, w, C) or tokens (B, h*w, C) -> (B, C, h, w).

    Returns:
        A (B, C, h, w) tensor on the same device.

    Raises:
        ValueError: if ``tensor`` is neither 3D nor 4D, or its tokens do not fill the grid.
    """
    if tensor.ndim == 4:
        return tensor.permute(0, 3, 1, 2)
    if tensor.ndim != 3:
        raise ValueError(
            "swin_reshape_transform expects (B, h, w, C) or (B, tokens, C), "
            f"got shape {tuple(tensor.shape)}"
        )
    grid_h, grid_w = _grid(tensor.shape[1], height, width)
    return tensor.reshape(tensor.shape[0], grid_h, grid_w, tensor.shape[2]).permute(0, 3, 1, 2)


def fasterrcnn_reshape_transform(x: "dict") -> torch.Tensor:
    """A Faster R-CNN FPN backbone's dict of feature maps ('0', '1', ..., 'pool', each
    (B, 256, h_i, w_i)) -> (B, levels*256, h_pool, w_pool): every level's absolute value
    resized bilinearly to the 'pool' level's size, concatenated on channels in dict order.
    Applied to a dict of gradients with the same keys it reshapes them the same way."""
    target_size = x["pool"].shape[-2:]
    levels = [
        torch.nn.functional.interpolate(value.abs(), size=target_size, mode="bilinear")
        for value in x.values()
    ]
    return torch.cat(levels, dim=1)
