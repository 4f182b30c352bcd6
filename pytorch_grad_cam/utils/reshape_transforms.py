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
from collections.abc import Mapping
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
        height: the patch grid's height; inferred as a square when neither is given,
            and one from the other when only one is.
        width: the patch grid's width (likewise).
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


class TokenGridTransform:
    """A ``reshape_transform`` read from the model (what the automatic choice of a
    transformer's layer passes): tokens (B, prefix + h·w, D) -> (B, D, h, w) dropping
    the prefix tokens, sequence-first tokens (prefix + h·w, B, D) likewise, or a
    channels-last grid (B, h, w, C) -> (B, C, h, w). A tuple/list or mapping output (a
    HuggingFace layer's) is read through its first element.

    On the grid it was read from it is exactly ``vit_reshape_transform`` with
    ``num_prefix_tokens``, ``height`` and ``width`` bound. A call with another number
    of tokens (another image size on a model that takes any size, ``aug_smooth``'s
    rescaled copies) folds them into the factorisation closest to the observed aspect
    ratio.

    Args:
        kind: ``"tokens"``, ``"seq_first"`` or ``"channels_last"``.
        num_prefix_tokens: leading non-patch tokens (class, distillation, registers).
        height: the grid's height observed.
        width: the grid's width observed.

    Raises:
        ValueError: on an unknown ``kind``.
    """

    KINDS = ("tokens", "seq_first", "channels_last")

    def __init__(self, kind: str, num_prefix_tokens: int, height: int, width: int) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, not {kind!r}")
        self.kind = kind
        self.num_prefix_tokens = num_prefix_tokens
        self.height = height
        self.width = width

    def __call__(self, tensor: object) -> torch.Tensor:
        """The (B, C, h, w) grid of ``tensor`` (see the class docstring).

        Raises:
            ValueError: if ``tensor`` does not have this layout, or its patch tokens
                fold into no grid near the observed aspect ratio.
        """
        tensor = _leading(tensor)
        expected = 4 if self.kind == "channels_last" else 3
        if tensor.ndim != expected:
            raise ValueError(f"{self!r} expects a {expected}D tensor, got shape {tuple(tensor.shape)}")
        if self.kind == "channels_last":
            return tensor.permute(0, 3, 1, 2)
        if self.kind == "seq_first":
            tensor = tensor.transpose(0, 1)
        patches = tensor[:, self.num_prefix_tokens :, :]
        height, width = self._grid(patches.shape[1])
        return patches.reshape(tensor.shape[0], height, width, tensor.shape[2]).permute(0, 3, 1, 2)

    def _grid(self, count: int) -> Tuple[int, int]:
        if count == self.height * self.width:
            return self.height, self.width
        ratio = math.log(self.height / self.width)
        # Distance of each factorisation's aspect ratio from the observed one; rounded so
        # that a mirrored pair (3x4 and 4x3 around a square) ties, and a tie is an error.
        pairs = sorted(
            (round(abs(math.log(rows / (count // rows)) - ratio), 9), rows, count // rows)
            for rows in range(1, count + 1)
            if count % rows == 0
        )
        unique = len(pairs) == 1 or pairs[0][0] < pairs[1][0]
        if pairs and unique and pairs[0][0] <= math.log(1.5):
            return pairs[0][1], pairs[0][2]
        raise ValueError(
            f"{count} patch tokens (after {self.num_prefix_tokens} prefix tokens) fold into no single grid "
            f"near the {self.height}x{self.width} one this transform was read from (another input size); "
            "create the CAM again for this size, or pass reshape_transform=functools.partial("
            "vit_reshape_transform, num_prefix_tokens=..., height=..., width=...)"
        )

    def describe(self) -> str:
        """In words, what the transform does (for the automatic choice's warning)."""
        grid = f"{self.height}x{self.width}"
        if self.kind == "channels_last":
            return f"channels-last (B, {grid}, C) permuted to (B, C, {grid})"
        order = "(tokens, B, D) transposed, " if self.kind == "seq_first" else ""
        return f"{order}{self.num_prefix_tokens} prefix token(s) dropped, the patch tokens folded into {grid}"

    def __repr__(self) -> str:
        return (
            f"TokenGridTransform(kind={self.kind!r}, num_prefix_tokens={self.num_prefix_tokens}, "
            f"height={self.height}, width={self.width})"
        )


def _leading(value: object) -> torch.Tensor:
    """``value`` or its first element / value (a HuggingFace layer's tuple output)."""
    if isinstance(value, Mapping):
        value = next(iter(value.values()), None)
    elif isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not torch.is_tensor(value):
        raise ValueError(f"expected a tensor (or a tuple whose first element is one), got {type(value).__name__}")
    return value
