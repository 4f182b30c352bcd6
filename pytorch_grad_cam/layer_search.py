"""Find a target layer when none is given: the last module whose output is a spatial
grid, by one dry forward pass of the user's first input.

The rule, in order:
1. Candidates are the modules (never the model itself) whose output is a 4D/5D tensor
   (3D for a (B, C, L) signal input) with more than one spatial position (an ``AdaptiveAvgPool2d(1)``'s 1x1 output is
   not a grid); with a ``reshape_transform``, those whose output the transform turns
   into one (a ViT block's tokens).
2. They are ordered by when their forward *finishes*: the last one wins.
3. A container (``nn.Sequential``/``ModuleList``/``ModuleDict``) that passes on its
   child's very tensor is skipped in favour of that child (ResNet: ``layer4`` ->
   ``layer4.1``, the README's ``model.layer4[-1]``).
4. For gradient methods, a candidate whose (transformed) gradient is all zeros is
   skipped (a ViT's final norm: only the class token reaches the head), so the
   chosen layer never gives a blank map by construction; when every candidate's is,
   the search fails with a ValueError that says why.

Only the calling thread's forward pass is recorded; TorchScript modules, which cannot
take hooks, are never candidates.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from pytorch_grad_cam.utils.hooks import Hooks

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _grid_shape(output: object, reshape_transform: Optional[Callable], ranks: Tuple[int, ...] = (4, 5)) -> bool:
    if reshape_transform is None and not torch.is_tensor(output):
        return False
    try:
        with torch.no_grad():
            shaped = output if reshape_transform is None else reshape_transform(output)
    except Exception:  # noqa: BLE001 - the transform does not fit this layer's output
        return False
    return torch.is_tensor(shaped) and shaped.ndim in ranks and math.prod(shaped.shape[2:]) > 1


def find_target_layer(
    model: nn.Module,
    input_tensor: torch.Tensor,
    reshape_transform: Optional[Callable] = None,
    score: Optional[Callable[[object], torch.Tensor]] = None,
) -> Tuple[str, nn.Module]:
    """(dotted name, module) of the last module with a spatial-grid output (see the
    module docstring). ``score(outputs)`` gives the scalar to differentiate for the
    gradient check (None: no check).

    Raises:
        ValueError: if no module's output is a spatial grid, or (with ``score``) none of
            those gets a non-zero gradient of the score.
    """
    finished: List[Tuple[str, nn.Module, object]] = []

    def recorder(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            finished.append((name, module, output))

        return hook

    # Hooks of this thread only: another thread running the model meanwhile is not seen.
    with Hooks() as hooks:
        for name, module in model.named_modules():
            # A TorchScript module cannot take hooks (nor can its children): not a candidate.
            if module is not model and not isinstance(module, torch.jit.ScriptModule):
                hooks.forward(module, recorder(name))
        with torch.set_grad_enabled(score is not None):
            outputs = model(input_tensor)
    # A (B, C, L) signal's grids are (B, C, l) (Conv1d outputs, transposed tokens).
    ranks = (3,) if input_tensor.ndim == 3 else (4, 5)
    candidates = [entry for entry in finished if _grid_shape(entry[2], reshape_transform, ranks)]
    if not candidates:
        raise ValueError(
            "target_layers not given and no module's output is a (B, C, h, w) grid; pass "
            "target_layers=[...] (and a reshape_transform for token outputs)"
        )
    reached = _gradient_reached(candidates, outputs, reshape_transform, score)
    for index in range(len(candidates) - 1, -1, -1):
        name, module, output = candidates[index]
        if isinstance(module, _CONTAINERS) and any(
            other is output for _, child, other in candidates[:index] if child is not module
        ):
            continue
        if reached is not None and not reached[index]:
            continue
        return name, module
    names = ", ".join(repr(name) for name, _, _ in candidates[-3:])
    raise ValueError(
        f"target_layers not given, and no module with a grid output gets a non-zero gradient of "
        f"the target's score (the last ones: {names}): the score does not depend on them (a "
        "constant or detached output, a part run under torch.no_grad(), or a target that reads "
        "no class score); check the targets, or pass target_layers=[...]"
    )


def _gradient_reached(
    candidates: Sequence[tuple],
    outputs: object,
    reshape_transform: Optional[Callable],
    score: Optional[Callable[[object], torch.Tensor]],
) -> Optional[List[bool]]:
    """Per candidate, whether a non-zero gradient of ``score`` reaches its grid; None
    when that cannot be told (no score, or nothing differentiable)."""
    if score is None:
        return None
    tensors = [out if torch.is_tensor(out) and out.requires_grad else None for _, _, out in candidates]
    inputs = [t for t in tensors if t is not None]
    if not inputs:
        return None
    loss = score(outputs)
    if not loss.requires_grad:
        return None
    grads = iter(torch.autograd.grad(loss, inputs, allow_unused=True))
    reached = []
    for tensor in tensors:
        if tensor is None:
            reached.append(True)
            continue
        grad = next(grads)
        if grad is not None and reshape_transform is not None:
            grad = reshape_transform(grad)
        reached.append(grad is not None and bool(grad.abs().max() > 0))
    return reached
