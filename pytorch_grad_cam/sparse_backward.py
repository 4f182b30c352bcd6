"""Backward passes that skip the parts of a concatenation a score does not read.

A detector scores one object from a few of its many candidates, and its candidates are
the concatenation of several heads' outputs (one per pyramid level). Autograd hands every
part of a concatenation its slice of the gradient, zeros included, and then runs the
whole head of each level backwards on them. :func:`cat` is ``torch.cat`` whose backward
pass gives ``None`` (no gradient: autograd skips that branch) to each part whose slice
is all zero, inside :func:`skipping_zero_parts` only; elsewhere it is ``torch.cat``.

The one thing this changes is that a target layer a score does not read through any
non-zero path gets no gradient (``None``) instead of zeros: the code that turns it on
(:mod:`pytorch_grad_cam.several_targets`) takes such a layer's gradient as zeros when the
layer is in the score's graph, and as an error when it is not.
"""

from __future__ import annotations

from typing import ContextManager, Sequence, Set

import torch

from pytorch_grad_cam.utils.thread_flag import ThreadFlag

__all__ = ["cat", "in_graph", "skipping", "skipping_zero_parts"]

_SKIPPING = ThreadFlag()


def skipping_zero_parts() -> ContextManager[None]:
    """Within it (this thread), :func:`cat` skips the parts no gradient reaches."""
    return _SKIPPING.on()


def skipping() -> bool:
    """Whether :func:`skipping_zero_parts` is on for this thread."""
    return _SKIPPING.is_on()


class _ZeroSkippingCat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dim: int, *tensors: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.dim = dim
        ctx.sizes = [tensor.shape[dim] for tensor in tensors]
        return torch.cat(tensors, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        parts = grad.split(ctx.sizes, ctx.dim)
        return (None, *[part if bool(part.any()) else None for part in parts])


def cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat(tensors, dim)``; inside :func:`skipping_zero_parts`, one whose
    backward pass gives no gradient to a part whose gradient is all zero."""
    if skipping() and torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors):
        return _ZeroSkippingCat.apply(dim, *tensors)
    return torch.cat(list(tensors), dim)


def in_graph(root: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (which requires grad) is in the graph that computed ``root``:
    a path of autograd nodes leads from ``root`` back to it, whatever flows along it."""
    wanted = torch.autograd.graph.get_gradient_edge(tensor).node
    seen: Set[int] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        if node is wanted:
            return True
        seen.add(id(node))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
