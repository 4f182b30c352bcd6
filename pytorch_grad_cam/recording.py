"""The record step of a CAM call: one forward pass with hooks on the target layers and,
for gradient methods, one backward pass of the targets' scores. Its result, a
:class:`Record`, is the value passed to the map computation; nothing of a call is kept
on the CAM object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.layers import layer_name
from pytorch_grad_cam.precision import full_precision
from pytorch_grad_cam.scoring import Target
from pytorch_grad_cam.utils.structures import detached, tensors_in

__all__ = ["Record", "disconnected_error", "gradient_to_layers"]


@dataclass
class Record:
    """What one forward (and backward) pass recorded, per target layer in order.

    Attributes:
        input_tensor: the input as the model received it (device, dtype), detached.
        outputs: the model's output, detached.
        targets: one target per image (None for a method that needs none).
        layers: the target layers.
        layer_outputs: each layer's raw output (its last call, detached; None: never called).
        activations: each layer's output after the ``reshape_transform`` (None when the
            method records no activations).
        gradients: the score's gradient with respect to each layer's activations (None
            for gradient-free methods; a method's reduction of it where it reduces).
        call_gradients: per layer, every call's gradient in call order.
        input_gradient: the score's gradient with respect to the input (methods that ask).
        extras: what a method adds in its own steps (ShapleyCAM's Hessian products).
    """

    input_tensor: torch.Tensor
    layers: List[nn.Module]
    outputs: object = None
    targets: Optional[List[Target]] = None
    layer_outputs: List[object] = field(default_factory=list)
    activations: List[Optional[torch.Tensor]] = field(default_factory=list)
    gradients: List[Optional[torch.Tensor]] = field(default_factory=list)
    call_gradients: List[List[Optional[torch.Tensor]]] = field(default_factory=list)
    input_gradient: Optional[torch.Tensor] = None
    extras: Dict[str, object] = field(default_factory=dict)

    def take(self, recorder: ActivationsAndGradients) -> None:
        """Copy the recorder's lists into this record (the recorder is then released); the
        layer outputs detached, so the record holds no graph and no tensor hook."""
        self.layer_outputs = [detached(output) for output in recorder.layer_outputs]
        self.activations = list(recorder.activations)
        self.gradients = list(recorder.gradients)
        self.call_gradients = [list(calls) for calls in recorder.call_gradients]


def disconnected_error(model: nn.Module, layer: nn.Module) -> ValueError:
    """The error for a target layer that no gradient of the score reaches."""
    return ValueError(
        f"the target's score does not depend on target layer {layer_name(model, layer)} "
        f"({type(layer).__name__}): no gradient reaches its output (a branch or head the "
        "scored output never reads, or a part the model runs under torch.no_grad() or "
        "detaches); choose a layer on the path from the input to the scored output"
    )


def gradient_to_layers(
    loss: torch.Tensor,
    recorder: ActivationsAndGradients,
    input_tensor: Optional[torch.Tensor] = None,
) -> Optional[torch.Tensor]:
    """One backward pass of ``loss`` to the target layers' outputs (their tensor hooks
    record the gradients) and, if ``input_tensor`` is given, to the input.

    Returns:
        The input's gradient (zeros where the loss does not reach it), or None when no
        ``input_tensor`` is given.
    """
    if recorder.record_activations:
        inputs = [t for out in recorder.layer_outputs for t in tensors_in(out) if t.requires_grad]
    else:
        # The outputs may have been changed in place since (ReLU(inplace=True)), so they
        # are not asked for: their tensor hooks, registered before any change, catch their
        # gradients as the backward pass goes through them to the input. A call it does
        # not go through (after a no_grad part or a detach) is then asked for where its
        # gradient arrived when the layer returned its output.
        inputs = []
    if input_tensor is not None:
        inputs.append(input_tensor)
    missing = not recorder.record_activations
    with full_precision():  # a reducing hook (FullGrad) sums in float32 under autocast too
        grads = torch.autograd.grad(loss, inputs, allow_unused=True, retain_graph=missing)
    if missing:
        edges = [
            edge
            for index in range(len(recorder.target_layers))
            for edge, reached in zip(recorder.gradient_edges[index], recorder.reached(index))
            if edge is not None and not reached
        ]
        if edges:
            with full_precision():
                torch.autograd.grad(loss, edges, allow_unused=True)
    if input_tensor is None:
        return None
    return torch.zeros_like(input_tensor) if grads[-1] is None else grads[-1].detach()
