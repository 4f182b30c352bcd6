"""Maps you can train with: ``cam.differentiable(input_tensor, targets)`` returns the
CAM as a torch tensor that carries gradients to the model's parameters (and to the
input, where it requires grad), for a loss such as attention-guided training's.

The map is the one a call returns (the same formula, ReLU, per-image min-max, resize
and layer aggregation), computed from activations that stay in the graph and from the
targets' gradients taken with ``create_graph=True``. ReLU and min-max are kept as they
are: both are differentiable almost everywhere (ReLU's derivative is 0 below 0; min-max
sends its derivative to the positions of the minimum and maximum), and a map that is all
zero has a zero derivative, never NaN.

It is a different contract from ``__call__`` (docs/decisions.md, G25): the model runs in
the mode it is in (a training step's map is computed in train mode, as its loss is), its
graph is the caller's to backpropagate and free, and nothing is kept on the CAM object.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from pytorch_grad_cam.checks import check_input, check_layers_ran, check_outputs
from pytorch_grad_cam.model_state import model_device, model_float_dtype
from pytorch_grad_cam.precision import full_precision
from pytorch_grad_cam.recording import Record, disconnected_error
from pytorch_grad_cam.scoring import Target, check_targets
from pytorch_grad_cam.utils.hooks import Hooks

__all__ = ["differentiable_maps", "unsupported_reason"]

#: Why a gradient-free method has no differentiable map.
GRADIENT_FREE = "it uses no gradient (its map comes from activations or from scores of perturbed copies)"


def unsupported_reason(cam: object) -> Optional[str]:
    """Why ``cam``'s method cannot give differentiable maps, or None if it can: a class
    states it in ``not_differentiable``; a method that wraps another (``cam.base``:
    FinerCAM, RefineCAM) inherits its base method's reason; a gradient-free method has
    :data:`GRADIENT_FREE`."""
    reason = getattr(cam, "not_differentiable", None)
    base = getattr(cam, "base", None)
    if reason is None and base is not None:
        reason = unsupported_reason(base)
    if reason is None and not getattr(cam, "uses_gradients", True):
        reason = GRADIENT_FREE
    return reason


def differentiable_maps(
    cam: object,
    input_tensor: torch.Tensor,
    targets: Optional[Sequence[Target]] = None,
    *,
    with_outputs: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, object]]:
    """The CAMs of a batch as a tensor that carries gradients to the model's parameters.

    Used as ``cam.differentiable(input_tensor, targets)`` on the gradient methods
    (GradCAM, HiResCAM, GradCAM++, XGradCAM, LayerCAM, GradCAMElementWise, and FinerCAM
    and RefineCAM over one of them). The model runs once, in the mode it is in (train
    mode too), with autograd on from the input; the targets' gradients at the target
    layers are taken with ``create_graph=True``; the map step is the template's, with
    autocast off (:mod:`pytorch_grad_cam.precision`). The input is moved to the model's
    device and dtype without leaving the graph: where it requires grad, the maps carry
    gradients to it too. Hooks live for the call; nothing is kept on ``cam``.

    Args:
        cam: a CAM object (the method's ``self``).
        input_tensor: (B, C, H, W) (or (B, C, D, H, W)) float tensor.
        targets: one target per image; None: each image's top class (its default targets).
        with_outputs: also return the model's output, in the graph (one forward pass for
            a loss that needs both, such as cross-entropy plus a map term).

    Returns:
        The maps (B, H, W) (or (B, D, H, W)), float32 (float64 for a float64 model), each
        in [0, 1], with a ``grad_fn``; with ``with_outputs``, ``(maps, outputs)``.

    Raises:
        TypeError: for a method without differentiable maps (the message says why and
            which to use), or one whose map leaves autograd (numpy inside its formula).
        ValueError: if the CAM has no target layers (pass ``target_layers``), and as
            ``__call__`` for the input, the targets, and a layer the score does not
            depend on.
    """
    reason = unsupported_reason(cam)
    name = type(cam).__name__
    if reason is not None:
        raise TypeError(
            f"{name} has no differentiable maps: {reason}; use GradCAM, HiResCAM, GradCAMPlusPlus, "
            "XGradCAM, LayerCAM or GradCAMElementWise for maps you can train with"
        )
    if not cam.target_layers:
        raise ValueError(f"{name}.differentiable needs target layers; pass target_layers=[...] to {name}(...)")
    input_tensor = check_input(input_tensor)
    targets = check_targets(targets, None, input_tensor.shape[0])
    model: nn.Module = cam.model
    dtype = model_float_dtype(model) or input_tensor.dtype
    with torch.inference_mode(False), torch.enable_grad():
        prepared = input_tensor.to(device=model_device(model), dtype=dtype)
        if prepared.is_inference():  # made under torch.inference_mode(): autograd cannot save it
            prepared = prepared.clone()
        record = _record_in_graph(cam, prepared, targets)
        with full_precision():
            maps = cam.aggregate_multi_layers(cam.compute_cam_per_layer(record, False))
    if not maps.requires_grad:
        raise TypeError(
            f"{name}'s map does not depend on the model's parameters through autograd (its formula "
            "leaves torch, or detaches); write its weights in torch operations"
        )
    return (maps, record.outputs) if with_outputs else maps


def _record_in_graph(cam: object, input_tensor: torch.Tensor, targets: Optional[List[Target]]) -> Record:
    """One forward pass whose target-layer outputs stay in the graph, and their targets'
    gradients with ``create_graph=True``: a :class:`Record` in which nothing is detached."""
    layers = list(cam.target_layers)
    outputs_of: List[Optional[torch.Tensor]] = [None] * len(layers)

    def keep(index: int):
        def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor:
            if not torch.is_tensor(output):
                raise TypeError(
                    f"target layer {type(module).__name__} returned {type(output).__name__}; "
                    "differentiable maps need a layer whose output is a tensor"
                )
            outputs_of[index] = output
            # The rest of the network gets a copy: an in-place operation after the layer
            # (ReLU(inplace=True)) must not change the kept output; its gradient is the same.
            return output.clone()

        return hook

    with Hooks() as hooks:
        for index, layer in enumerate(layers):
            hooks.forward(layer, keep(index))
        outputs = cam.model(input_tensor)
    check_outputs(outputs)
    check_layers_ran(layers, outputs_of)
    targets = list(targets) if targets is not None else cam.default_targets(outputs, 1)
    scores = cam.score(targets, outputs)
    for layer, output in zip(layers, outputs_of):
        if not output.requires_grad:
            raise ValueError(
                f"the output of target layer {type(layer).__name__} is not in an autograd graph (no "
                "parameter before it requires grad, nor the input, or the model runs it under "
                "torch.no_grad()); call model.requires_grad_(True) or input_tensor.requires_grad_(True)"
            )
    if not scores.requires_grad:
        raise ValueError("the target scores are not in the graph of the model output; use targets that read the output")
    with full_precision():
        grads = torch.autograd.grad(scores.sum(), outputs_of, create_graph=True, allow_unused=True)
    for layer, grad in zip(layers, grads):
        if grad is None:
            raise disconnected_error(cam.model, layer)
    reshape = cam.reshape_transform or (lambda tensor: tensor)
    gradients = [reshape(grad) for grad in grads]
    return Record(
        input_tensor=input_tensor,
        layers=layers,
        outputs=outputs,
        targets=targets,
        layer_outputs=list(outputs_of),
        activations=[reshape(output) for output in outputs_of],
        gradients=gradients,
        call_gradients=[[grad] for grad in gradients],
    )
