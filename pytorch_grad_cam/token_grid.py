"""Where a vision transformer keeps its patch grid, read from one dry forward pass.

A transformer's layers hold the image as tokens, not as a (B, C, h, w) grid. The grid is
read from the model itself, by duck typing, whatever library built it (timm, torchvision,
HuggingFace, open_clip: none of them is imported here):

- the *patch grid* (h, w) is the output grid of the first patchify convolution
  (kernel == stride > 1) run on the input image itself: timm's ``patch_embed.proj``,
  torchvision's ``conv_proj``, HuggingFace's ``patch_embeddings.projection`` /
  ``patch_embedding``, open_clip's ``conv1``;
- a (B, N, D) output is a token sequence on that grid when N - h·w is a small count
  of leading tokens that belong to no patch (class, distillation, register tokens);
  (N, B, D) is the same sequence-first; a (B, h', w', C) output is a channels-last grid
  (Swin) when (h', w') is the patch grid or a halving of it (patch merging);
- a *transformer block* is an element of an ``nn.Sequential``/``nn.ModuleList`` whose
  output is such a token layout and that holds a normalization layer whose output is
  one too; the blocks taken are the innermost ones (a Swin stage holds blocks).

The conventional layer to explain is the last block's first normalization (timm's
``blocks[-1].norm1``, torchvision's ``encoder.layers[-1].ln_1``, HuggingFace's
``layernorm_before`` / ``layer_norm1``, open_clip's ``resblocks[-1].ln_1``): the input of
the last attention, which is the last place where every patch token still reaches the
class token (after it, only the class token is read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

__all__ = [
    "Entry",
    "TokenLayout",
    "leading_tensor",
    "is_norm",
    "is_patchify",
    "patch_grid",
    "grid_sizes",
    "token_layout",
    "last_block_norms",
]

#: The most leading non-patch tokens a sequence may have (class + distillation +
#: registers); more is read as "not a token sequence of this grid".
MAX_PREFIX_TOKENS = 32

_CONTAINERS = (nn.Sequential, nn.ModuleList)


@dataclass
class Entry:
    """One finished module call of the dry forward pass."""

    name: str
    module: nn.Module
    input_shape: Optional[Tuple[int, ...]]
    output: object


@dataclass(frozen=True)
class TokenLayout:
    """How a layer's output holds the patch grid.

    Attributes:
        kind: ``"tokens"`` (B, prefix + h·w, D), ``"seq_first"`` (prefix + h·w, B, D) or
            ``"channels_last"`` (B, h, w, C).
        prefix: leading non-patch tokens (0 for channels-last).
        height, width: the grid.
    """

    kind: str
    prefix: int
    height: int
    width: int


def leading_tensor(output: object) -> Optional[torch.Tensor]:
    """``output`` if a tensor, else the first element of a tuple/list or the first value
    of a mapping (a HuggingFace ``ModelOutput``'s hidden states) if that is a tensor;
    None otherwise."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, Mapping):
        output = next(iter(output.values()), None)
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if torch.is_tensor(output) else None


def is_patchify(module: nn.Module) -> bool:
    """Whether ``module`` is a patchify convolution: a Conv2d whose kernel equals its
    stride, larger than 1 (each output position sees one patch)."""
    return (
        isinstance(module, nn.Conv2d) and tuple(module.stride) == tuple(module.kernel_size) and max(module.stride) > 1
    )


def patch_grid(entries: Sequence[Entry], input_tensor: torch.Tensor) -> Optional[Tuple[int, int]]:
    """The (h, w) output grid of the first patchify convolution run on the input image
    (same spatial size), or None when the model has none (a CNN)."""
    for entry in entries:
        output = entry.output
        if (
            is_patchify(entry.module)
            and entry.input_shape is not None
            and tuple(entry.input_shape[-2:]) == tuple(input_tensor.shape[-2:])
            and torch.is_tensor(output)
            and output.ndim == 4
        ):
            return int(output.shape[2]), int(output.shape[3])
    return None


def grid_sizes(grid: Tuple[int, int]) -> Set[Tuple[int, int]]:
    """The patch grid and its halvings (Swin's patch merging, rounding either way),
    keeping only grids of more than one position."""
    height, width = grid
    sizes = {grid}
    for step in (2, 4, 8, 16, 32):
        sizes.add((-(-height // step), -(-width // step)))
        sizes.add((height // step, width // step))
    return {size for size in sizes if size[0] * size[1] > 1}


def token_layout(output: object, grids: Set[Tuple[int, int]], batch: int) -> Optional[TokenLayout]:
    """The :class:`TokenLayout` of ``output`` (its leading tensor) on one of ``grids``
    for a batch of ``batch`` images, or None if it is not one (a channels-first map, a
    vector, attention weights)."""
    tensor = leading_tensor(output)
    if tensor is None or not tensor.is_floating_point():
        return None
    shape = tuple(tensor.shape)
    if len(shape) == 4 and shape[0] == batch and shape[1:3] in grids and shape[2:4] not in grids:
        return TokenLayout("channels_last", 0, shape[1], shape[2])
    if len(shape) != 3:
        return None
    if shape[0] == batch:
        kind, count = "tokens", shape[1]
    elif shape[1] == batch:
        kind, count = "seq_first", shape[0]
    else:
        return None
    fits = [
        (count - h * w, h, w) for h, w in grids if 0 <= count - h * w <= MAX_PREFIX_TOKENS and count - h * w < h * w
    ]
    if not fits:
        return None
    prefix, height, width = min(fits)
    return TokenLayout(kind, prefix, height, width)


def is_norm(module: nn.Module) -> bool:
    """A normalization layer, by type or by name (LayerNorm, RMSNorm, their subclasses
    and look-alikes in timm, HuggingFace and open_clip); never an Identity placeholder."""
    if isinstance(module, nn.Identity):
        return False
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def last_block_norms(
    entries: Sequence[Entry], layouts: Dict[int, TokenLayout], model: nn.Module
) -> List[Tuple[Entry, TokenLayout]]:
    """Per transformer block (module docstring), last block first: the entry of its
    first-called normalization layer whose output is a token layout, and that layout.
    ``layouts`` maps an entry's index to its layout. Returns [] for a model with no
    transformer blocks."""
    modules = dict(model.named_modules())
    first_norm: Dict[str, int] = {}
    last_finish: Dict[str, int] = {}
    for index, entry in enumerate(entries):
        if index in layouts:
            last_finish[entry.name] = index
            if is_norm(entry.module) and entry.name not in first_norm:
                first_norm[entry.name] = index

    def norms_in(name: str) -> List[int]:
        return sorted(index for norm, index in first_norm.items() if norm.startswith(name + "."))

    blocks = []
    for name in last_finish:
        parent = modules.get(name.rpartition(".")[0]) if "." in name else None
        if isinstance(parent, _CONTAINERS) and norms_in(name):
            blocks.append(name)
    innermost = [name for name in blocks if not any(other.startswith(name + ".") for other in blocks)]
    innermost.sort(key=lambda name: last_finish[name], reverse=True)
    chosen = []
    for name in innermost:
        index = norms_in(name)[0]
        chosen.append((entries[index], layouts[index]))
    return chosen
