"""Find a target layer when none is given, by one dry forward pass of the user's first
input.

A vision transformer (a model with a patch grid and transformer blocks, read from the
model as :mod:`pytorch_grad_cam.token_grid` describes, whatever library built it) gets
its last block's first normalization, with a reshape transform read from the model too
(:class:`~pytorch_grad_cam.utils.reshape_transforms.TokenGridTransform`) unless one is
given; for gradient methods, the last block whose normalization a non-zero gradient of
the target's score reaches. A transformer whose blocks are not elements of a
``Sequential``/``ModuleList`` (a hand-written one) gets the last normalization over the
token sequence (for gradient methods, the last one a gradient reaches: the last block's
first one in a class-token ViT).

Any other model (a CNN; MaxViT, whose blocks are already channels-first) gets the last
module whose output is a spatial grid; the rule, in order:

1. Candidates are the modules (never the model itself) whose output is a 4D/5D tensor
   (5D for a (B, C, T, H, W) clip, 3D for a (B, C, L) signal input) of the input's
   batch size, with more than one spatial position (an ``AdaptiveAvgPool2d(1)``'s 1x1
   output is not a grid); with a ``reshape_transform``, those whose output the
   transform turns into one (a ViT block's tokens).
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
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from pytorch_grad_cam.token_grid import (
    Entry,
    grid_sizes,
    is_norm,
    is_patchify,
    last_block_norms,
    patch_grid,
    token_layout,
)
from pytorch_grad_cam.utils.hooks import Hooks
from pytorch_grad_cam.utils.messages import warn_user
from pytorch_grad_cam.utils.reshape_transforms import TokenGridTransform

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _grid_shape(
    output: object, reshape_transform: Optional[Callable], ranks: Tuple[int, ...] = (4, 5), batch: Optional[int] = None
) -> bool:
    if reshape_transform is None and not torch.is_tensor(output):
        return False
    try:
        with torch.no_grad():
            shaped = output if reshape_transform is None else reshape_transform(output)
    except Exception:  # noqa: BLE001 - the transform does not fit this layer's output
        return False
    if not (torch.is_tensor(shaped) and shaped.ndim in ranks and math.prod(shaped.shape[2:]) > 1):
        return False
    # One map per input: a module run on heads or patches folded into the batch (MViT's
    # attention pooling, (B * heads, ...)) is no grid of the input.
    return batch is None or shaped.shape[0] == batch


@dataclass
class LayerChoice:
    """The automatic choice: the layer's dotted name and module, the reshape transform
    to use with it (the user's, one read from the model, or None) and, in words, why
    this layer and what the transform does (the warning's text)."""

    name: str
    layer: nn.Module
    reshape_transform: Optional[Callable]
    reason: str
    transform_text: str


def choose_target_layer(
    model: nn.Module,
    input_tensor: torch.Tensor,
    reshape_transform: Optional[Callable] = None,
    score: Optional[Callable[[object], torch.Tensor]] = None,
) -> LayerChoice:
    """The automatic target layer (and transform) for ``model`` on ``input_tensor``.

    A model with a patch grid and transformer blocks (see
    :mod:`pytorch_grad_cam.token_grid`) gets its last block's first normalization
    (the last block whose one a gradient of ``score`` reaches, for gradient methods),
    with ``reshape_transform`` if given and fitting, else a
    :class:`~pytorch_grad_cam.utils.reshape_transforms.TokenGridTransform` read from
    the model; blocks outside a container, the last normalization over the token
    sequence. Any other model gets the last module with a spatial-grid output (the
    rule of the module docstring) and ``reshape_transform`` as given.

    Returns:
        A :class:`LayerChoice`.

    Raises:
        ValueError: as :func:`find_target_layer`.
    """
    entries, outputs = _dry_forward(model, input_tensor, score is not None)
    grid = patch_grid(entries, input_tensor)
    if grid is not None:
        choice = _transformer_choice(model, entries, outputs, grid, input_tensor.shape[0], reshape_transform, score)
        if choice is not None:
            return choice
    # A clip's map needs a (t, h, w) grid: a 4D output inside a video model (MViT's
    # attention heads, (B, heads, N, d)) is no such grid.
    ranks = {3: (3,), 5: (5,)}.get(input_tensor.ndim, (4, 5))
    name, module = _last_grid(entries, outputs, reshape_transform, score, ranks, input_tensor.shape[0])
    text = "" if reshape_transform is None else "the one given"
    return LayerChoice(name, module, reshape_transform, "the last module whose output is a spatial grid", text)


def find_target_layer(
    model: nn.Module,
    input_tensor: torch.Tensor,
    reshape_transform: Optional[Callable] = None,
    score: Optional[Callable[[object], torch.Tensor]] = None,
) -> Tuple[str, nn.Module]:
    """(dotted name, module) of :func:`choose_target_layer`'s choice: for a CNN the last
    module with a spatial-grid output (see the module docstring). ``score(outputs)``
    gives the scalar to differentiate for the gradient check (None: no check).

    Raises:
        ValueError: if no module's output is a spatial grid, or (with ``score``) none of
            those gets a non-zero gradient of the score.
    """
    choice = choose_target_layer(model, input_tensor, reshape_transform, score)
    return choice.name, choice.layer


def token_transform(model: nn.Module, input_tensor: torch.Tensor, layers: Sequence[nn.Module]) -> Optional[Callable]:
    """The :class:`~pytorch_grad_cam.utils.reshape_transforms.TokenGridTransform` for
    explicitly given ``layers`` whose outputs (on one dry forward of the first image,
    without gradients) are all tokens of the model's patch grid in the same layout.

    Returns:
        The transform, or None when the layers' outputs are not such tokens (a CNN's
        layers need no transform) or the model has no patchify convolution; then no
        forward pass is run at all.
    """
    if not any(is_patchify(module) for module in model.modules()):
        return None
    watched = [module for module in model.modules() if is_patchify(module)] + list(layers)
    entries, _ = _dry_forward(model, input_tensor[:1], False, watched)
    grid = patch_grid(entries, input_tensor)
    if grid is None:
        return None
    grids = grid_sizes(grid)
    found = set()
    for layer in layers:
        calls = [entry for entry in entries if entry.module is layer]
        if not calls:
            return None
        found.add(token_layout(calls[-1].output, grids, 1))
    if len(found) != 1 or None in found:
        return None
    layout = found.pop()
    return TokenGridTransform(layout.kind, layout.prefix, layout.height, layout.width)


def _dry_forward(
    model: nn.Module, input_tensor: torch.Tensor, with_grad: bool, watched: Optional[Sequence[nn.Module]] = None
) -> Tuple[List[Entry], object]:
    """Every call of the ``watched`` modules (None: of every module) in one forward
    pass, in the order they finish, and the model's output."""
    entries: List[Entry] = []
    names = {module: name for name, module in model.named_modules()}
    if watched is not None:
        names = {module: name for module, name in names.items() if any(module is other for other in watched)}

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        first = inputs[0] if inputs and torch.is_tensor(inputs[0]) else None
        shape = tuple(first.shape) if first is not None else None
        entries.append(Entry(names[module], module, shape, output))

    # Hooks of this thread only: another thread running the model meanwhile is not seen.
    with Hooks() as hooks:
        for module in names:
            # A TorchScript module cannot take hooks (nor can its children): not a candidate.
            if module is not model and not isinstance(module, torch.jit.ScriptModule):
                hooks.forward(module, hook)
        with torch.set_grad_enabled(with_grad):
            outputs = model(input_tensor)
    return entries, outputs


def _transformer_choice(
    model: nn.Module,
    entries: List[Entry],
    outputs: object,
    grid: Tuple[int, int],
    batch: int,
    reshape_transform: Optional[Callable],
    score: Optional[Callable[[object], torch.Tensor]],
) -> Optional[LayerChoice]:
    """The last transformer block's first normalization that fits (module docstring of
    :mod:`pytorch_grad_cam.token_grid`); None when the model has no such block, or no
    gradient reaches any."""
    grids = grid_sizes(grid)
    layouts = {}
    for index, entry in enumerate(entries):
        layout = token_layout(entry.output, grids, batch)
        if layout is not None:
            layouts[index] = layout
    pairs = last_block_norms(entries, layouts, model)
    reason = "the first normalization of the last transformer block"
    if not pairs:
        # Blocks that are not elements of a Sequential/ModuleList (a hand-written ViT's
        # attributes): the norms over token sequences, last first; the gradient check
        # then skips those after the last attention. Channels-last norms are left out: a
        # ConvNeXt's blocks normalise channels-last inside and keep the CNN rule.
        pairs = [
            (entries[index], layouts[index])
            for index in sorted(layouts, reverse=True)
            if is_norm(entries[index].module) and layouts[index].kind != "channels_last"
        ]
        reason = "the last normalization of the token sequence"
    candidates, transforms = [], []
    for entry, layout in pairs:
        transform = reshape_transform or TokenGridTransform(layout.kind, layout.prefix, layout.height, layout.width)
        if _grid_shape(entry.output, transform):
            candidates.append((entry.name, entry.module, entry.output))
            transforms.append(transform)
    if not candidates:
        return None
    reached = _gradient_reached(candidates, outputs, transforms, score, retain_graph=True)
    for index, (name, module, _) in enumerate(candidates):
        if reached is None or reached[index]:
            transform = transforms[index]
            text = "the one given" if reshape_transform is not None else transform.describe()
            return LayerChoice(name, module, transform, reason, text)
    return None


def _last_grid(
    entries: List[Entry],
    outputs: object,
    reshape_transform: Optional[Callable],
    score: Optional[Callable[[object], torch.Tensor]],
    ranks: Tuple[int, ...] = (4, 5),
    batch: Optional[int] = None,
) -> Tuple[str, nn.Module]:
    """The rule of the module docstring: the last module with a grid output (of one of
    ``ranks``: a (B, C, L) signal's grids are (B, C, l), Conv1d outputs, transposed tokens)."""
    candidates = [
        (entry.name, entry.module, entry.output)
        for entry in entries
        if _grid_shape(entry.output, reshape_transform, ranks, batch)
    ]
    if not candidates:
        raise ValueError(
            "target_layers not given and no module's output is a (B, C, h, w) grid; pass "
            "target_layers=[...] (and a reshape_transform for token outputs)"
        )
    reached = _gradient_reached(candidates, outputs, [reshape_transform] * len(candidates), score)
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
    transforms: Sequence[Optional[Callable]],
    score: Optional[Callable[[object], torch.Tensor]],
    retain_graph: bool = False,
) -> Optional[List[bool]]:
    """Per candidate, whether a non-zero gradient of ``score`` reaches its grid (through
    its transform); None when that cannot be told (no score, or nothing differentiable)."""
    if score is None:
        return None
    tensors = [out if torch.is_tensor(out) and out.requires_grad else None for _, _, out in candidates]
    inputs = [t for t in tensors if t is not None]
    if not inputs:
        return None
    loss = score(outputs)
    if not loss.requires_grad:
        return None
    grads = iter(torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=retain_graph))
    reached = []
    for tensor, transform in zip(tensors, transforms):
        if tensor is None:
            reached.append(True)
            continue
        grad = next(grads)
        if grad is not None and transform is not None:
            grad = transform(grad)
        reached.append(grad is not None and bool(grad.abs().max() > 0))
    return reached


def prepare_layers(cam: Any, input_tensor: torch.Tensor, targets: Optional[List[object]]) -> None:
    """Ready ``cam`` (a BaseCAM) for a call on ``input_tensor``, and warn what was chosen
    (shown once by default, where a user who omitted something looks):

    - no target layers given: :func:`choose_target_layer` on one dry forward of the first
      image (and, for gradient methods, a backward of its target) sets the layer and,
      for a transformer, its reshape transform;
    - layers given without a ``reshape_transform``: if they output tokens of the model's
      patch grid (:func:`token_transform`, read on the first call only), that transform.
    """
    if not cam.target_layers:
        score_of = None
        if cam.uses_gradients and (targets is not None or cam.needs_targets):

            def score_of(outputs: object) -> torch.Tensor:
                chosen = targets[:1] if targets is not None else cam.default_targets(outputs, 1)
                return cam.score(chosen, outputs).sum()

        choice = choose_target_layer(cam.model, input_tensor[:1], cam.reshape_transform, score_of)
        cam.target_layers = [choice.layer]
        cam.reshape_transform = choice.reshape_transform
        transform = f"; reshape_transform: {choice.transform_text}" if choice.transform_text else ""
        warn_user(
            f"{type(cam).__name__}: target_layers not given; using {choice.name!r} ({type(choice.layer).__name__}), "
            f"{choice.reason}{transform}; pass target_layers=['{choice.name}'] (or another layer) to choose"
        )
    elif cam.reshape_transform is None and not getattr(cam, "token_grid_read", False) and not cam.needs_attention:
        cam.token_grid_read = True  # once per CAM object: the dry forward is not repeated
        transform = token_transform(cam.model, input_tensor, cam.target_layers)
        if transform is not None:
            cam.reshape_transform = transform
            warn_user(
                f"{type(cam).__name__}: the target layers output tokens of the model's patch grid and no "
                f"reshape_transform was given; using {transform!r} ({transform.describe()}); pass "
                "reshape_transform=... to choose"
            )
