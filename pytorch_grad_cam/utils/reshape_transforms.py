"""Adapters that turn transformer token activations into CNN-like (B, C, h, w) maps,
for the ``reshape_transform`` argument of every CAM method.

A ViT's tokens start with ``num_prefix_tokens`` tokens that belong to no patch (the
class token; DeiT-distilled adds a distillation token, register models add register
tokens), followed by the h·w patch tokens in row-major order.
:func:`vit_reshape_transform_for` reads both numbers from a timm model, so nothing has
to be counted by hand.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

_PREFIX_HINT = (
    "if the model has more tokens before the patches (DeiT-distilled: 2, register models: "
    "1 + registers), pass num_prefix_tokens=, or use vit_reshape_transform_for(model), "
    "which reads it and the grid from a timm model"
)


def _grid(
    tokens: int, height: Optional[int], width: Optional[int], num_prefix_tokens: Optional[int] = None
) -> Tuple[int, int]:
    """The (h, w) grid of ``tokens`` patch tokens. ``num_prefix_tokens`` (the ViT
    transform's; None for Swin, which has none) only words the errors."""
    dropped = (
        ""
        if num_prefix_tokens is None
        else (f" (counted after dropping num_prefix_tokens={num_prefix_tokens} leading tokens)")
    )
    hint = "" if num_prefix_tokens is None else f"; {_PREFIX_HINT}"
    if height is None and width is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"{tokens} tokens do not form a square grid; pass height= and width= "
                f"(for example functools.partial(vit_reshape_transform, height=14, width=16)) "
                f"for a non-square grid{dropped}{hint}"
            )
        return side, side
    if height is None:
        height = tokens // width
    if width is None:
        width = tokens // height
    if height * width != tokens:
        message = (
            f"a {height}x{width} grid holds {height * width} tokens, but the layer has {tokens}{dropped}; "
            "pass the grid size of the patch tokens"
        )
        if num_prefix_tokens is not None:
            extra = tokens - height * width
            if extra > 0:
                message += (
                    f", or num_prefix_tokens={num_prefix_tokens + extra} if the model has {extra} more "
                    f"non-patch token{'s' if extra > 1 else ''} (vit_reshape_transform_for(model) reads it "
                    "from a timm model)"
                )
        raise ValueError(message)
    return height, width


def vit_reshape_transform(
    tensor: torch.Tensor,
    height: Optional[int] = None,
    width: Optional[int] = None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """ViT tokens (B, num_prefix_tokens + h*w, C) -> (B, C, h, w), dropping the prefix tokens.

    Called with a tensor alone it drops one class token and infers a square grid, which
    fits ViT and DeiT. For other models bind the keywords, e.g.
    ``vit_reshape_transform_for(model)`` or
    ``functools.partial(vit_reshape_transform, num_prefix_tokens=2)``.

    Args:
        tensor: token activations or gradients of a ViT block, (B, tokens, C).
        height, width: the patch grid; inferred as a square when neither is given, and
            one from the other when only one is.
        num_prefix_tokens: leading tokens that are not patches: 1 for ViT/DeiT's class
            token, 2 for distilled DeiT (class + distillation), 1 + R for a model with
            R register tokens (timm: ``model.num_prefix_tokens``).

    Returns:
        A (B, C, h, w) tensor on the same device.

    Raises:
        ValueError: if ``tensor`` is not 3D, or the tokens left after the prefix do not
            fill the grid (the message says what to pass).
    """
    if tensor.ndim != 3:
        raise ValueError(f"vit_reshape_transform expects (B, tokens, C), got shape {tuple(tensor.shape)}")
    if not 0 <= num_prefix_tokens < tensor.shape[1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} leaves no patch tokens of the layer's "
            f"{tensor.shape[1]}; pass the number of class/distillation/register tokens (timm: model.num_prefix_tokens)"
        )
    patches = tensor[:, num_prefix_tokens:, :]
    grid_h, grid_w = _grid(patches.shape[1], height, width, num_prefix_tokens)
    return patches.reshape(tensor.shape[0], grid_h, grid_w, tensor.shape[2]).permute(0, 3, 1, 2)


def vit_reshape_transform_for(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`vit_reshape_transform` bound to a timm Vision Transformer: its number of
    prefix tokens (``model.num_prefix_tokens``: class, distillation and register tokens)
    and, unless the model takes any image size (``dynamic_img_size``), its patch grid
    (``model.patch_embed.grid_size``, so non-square inputs work too).

    Example::

        model = timm.create_model("deit_tiny_distilled_patch16_224")
        cam = GradCAM(model, [model.blocks[-1].norm1],
                      reshape_transform=vit_reshape_transform_for(model))

    Returns:
        A ``functools.partial`` of :func:`vit_reshape_transform`.

    Raises:
        ValueError: if ``model`` has no ``num_prefix_tokens`` (not a timm ViT); bind the
            keywords yourself then, e.g. ``functools.partial(vit_reshape_transform,
            num_prefix_tokens=1, height=14, width=14)``.
    """
    num_prefix_tokens = getattr(model, "num_prefix_tokens", None)
    if not isinstance(num_prefix_tokens, int):
        raise ValueError(
            f"{type(model).__name__} has no integer num_prefix_tokens attribute (timm's ViTs have one); "
            "bind the keywords yourself: functools.partial(vit_reshape_transform, num_prefix_tokens=N, "
            "height=H, width=W)"
        )
    keywords = {"num_prefix_tokens": num_prefix_tokens}
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None and not getattr(model, "dynamic_img_size", False):
        keywords["height"], keywords["width"] = (int(size) for size in grid)
    return functools.partial(vit_reshape_transform, **keywords)


def _looks_channels_first(shape: Tuple[int, ...]) -> bool:
    """(B, C, h, w) rather than Swin's (B, h, w, C): the last two sizes are equal and
    the second differs from them. (A square Swin grid gives shape[1] == shape[2], so it
    never matches; a square map with C == h cannot be told apart and passes as Swin's.)"""
    return shape[2] == shape[3] and shape[1] != shape[2]


def swin_reshape_transform(
    tensor: torch.Tensor, height: Optional[int] = None, width: Optional[int] = None
) -> torch.Tensor:
    """Swin activations (B, h, w, C) or tokens (B, h*w, C) -> (B, C, h, w).

    timm's Swin blocks output (B, h, w, C); other implementations give (B, h*w, C), whose
    grid is inferred as a square unless ``height``/``width`` are given. A layer that is
    already channels-first (B, C, h, w) needs no transform: passing one here is an
    error rather than a silent permutation into a wrong map.

    Returns:
        A (B, C, h, w) tensor on the same device.

    Raises:
        ValueError: if ``tensor`` is neither 3D nor 4D, is a 4D (B, C, h, w) map with
            h == w != C, or its tokens do not fill the grid.
    """
    if tensor.ndim == 4:
        if _looks_channels_first(tuple(tensor.shape)):
            raise ValueError(
                f"swin_reshape_transform got shape {tuple(tensor.shape)}, which looks like (B, C, h, w); "
                "it expects (B, h, w, C) or (B, h*w, C). A (B, C, h, w) layer needs no "
                "reshape_transform: pass reshape_transform=None"
            )
        return tensor.permute(0, 3, 1, 2)
    if tensor.ndim != 3:
        raise ValueError(
            f"swin_reshape_transform expects (B, h, w, C) or (B, tokens, C), got shape {tuple(tensor.shape)}"
        )
    grid_h, grid_w = _grid(tensor.shape[1], height, width)
    return tensor.reshape(tensor.shape[0], grid_h, grid_w, tensor.shape[2]).permute(0, 3, 1, 2)


def fasterrcnn_reshape_transform(x: "dict") -> torch.Tensor:
    """A Faster R-CNN FPN backbone's dict of feature maps ('0', '1', ..., 'pool', each
    (B, 256, h_i, w_i)) -> (B, levels*256, h_pool, w_pool): every level's absolute value
    resized bilinearly to the 'pool' level's size, concatenated on channels in dict order.
    Applied to a dict of gradients with the same keys it reshapes them the same way."""
    target_size = x["pool"].shape[-2:]
    levels = [torch.nn.functional.interpolate(value.abs(), size=target_size, mode="bilinear") for value in x.values()]
    return torch.cat(levels, dim=1)


def swinT_reshape_transform(tensor: torch.Tensor, height: int = 7, width: int = 7) -> torch.Tensor:
    """grad-cam 1.5.x's name and defaults for :func:`swin_reshape_transform`: Swin
    tokens (B, 49, C) -> (B, C, 7, 7) (a 224x224 Swin's last stage). Other grids:
    pass ``height``/``width``; a (B, h, w, C) activation is permuted as it is."""
    return swin_reshape_transform(tensor, height=height, width=width)
