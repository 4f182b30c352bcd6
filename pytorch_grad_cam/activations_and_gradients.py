"""Record what the target layers produce during one forward pass, and the gradient
of the score with respect to it during the backward pass.

A forward hook on each target layer keeps the layer's output tensor; for gradient
methods a hook on that output *tensor* (not a module backward hook, which in-place
operations such as ``ReLU(inplace=True)`` break) keeps its gradient. Tensors stay on
their device; nothing is copied to the CPU here.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


class ActivationsAndGradients:
    """Hooks on ``target_layers`` that record their outputs and output gradients.

    After a forward pass, ``layer_outputs[i]`` is the raw output of ``target_layers[i]``
    (the tensor that gradients are taken with respect to), and ``activations[i]`` the
    same after ``reshape_transform``. After a backward pass, ``gradients[i]`` is the
    gradient of the loss with respect to ``activations[i]`` (also reshaped).

    A module called several times in one forward pass keeps its last call. Only
    forward passes run on the thread that created the hooks are recorded, so another
    thread using the same model is not seen.

    With ``record_activations=False`` (a method that reads only the gradients, and whose
    backward pass runs through every target layer to the input: FullGrad) the outputs
    are neither copied nor kept as activations (``activations[i]`` stays None;
    ``layer_outputs[i]`` is the tensor as the layer returned it, whose values later
    in-place operations may change); a tensor hook registered before any such operation
    still receives the gradient of the value the layer returned, and ``gradient_edges[i]``
    says where in the graph that gradient arrives, for asking for it by name
    (``reached[i]``: a gradient arrived). (A layer whose output is a dict or tuple is
    recorded as usual.)

    ``reduce_gradient(index, grad)``, if given, is applied to each gradient inside its
    hook, and ``gradients[i]`` keeps what it returns (None: nothing), so that a method
    needing only a reduction of a large gradient does not keep the gradient itself.

    Use as a context manager, or call :meth:`release` to remove every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Optional[ReshapeTransform] = None,
        record_gradients: bool = True,
        record_activations: bool = True,
        reduce_gradient: Optional[Callable[[int, torch.Tensor], Optional[torch.Tensor]]] = None,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.record_gradients = record_gradients
        self.record_activations = record_activations
        self.reduce_gradient = reduce_gradient
        self._thread = threading.get_ident()
        self.layer_outputs: List[Optional[torch.Tensor]] = [None] * len(self.target_layers)
        self.activations: List[Optional[torch.Tensor]] = [None] * len(self.target_layers)
        self.gradients: List[Optional[torch.Tensor]] = [None] * len(self.target_layers)
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        # record_activations=False: where each output's gradient arrives in the graph, taken
        # when the layer returned it (an in-place change of the tensor does not move it).
        self.gradient_edges: List[Optional[object]] = [None] * len(self.target_layers)
        self.reached: List[bool] = [False] * len(self.target_layers)  # a gradient arrived
        # Gradients of the tensors inside a dict/tuple output, by layer index and key.
        self._parts: Dict[int, Dict[object, torch.Tensor]] = {}
        for index, layer in enumerate(self.target_layers):
            self._handles.append(layer.register_forward_hook(self._make_forward_hook(index)))

    def _make_forward_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> object:
            if threading.get_ident() != self._thread:
                return None
            if torch.is_tensor(output):
                prepared = self._prepare(output, index, None)
                self.layer_outputs[index] = prepared
                if not self.record_activations:
                    if prepared.requires_grad:
                        self.gradient_edges[index] = torch.autograd.graph.get_gradient_edge(prepared)
                    # The gradient hook is on it: no copy, no activations. A new leaf (the
                    # layer ran without autograd) is handed on as a copy, since the network
                    # may change its output in place (a leaf may not be).
                    return None if prepared is output else prepared.clone()
                output = prepared
                self.activations[index] = self._reshape(output)
                # Hand the rest of the network a copy, so that an in-place operation after
                # this layer (ReLU(inplace=True), `out += identity`) cannot change what we
                # recorded, with or without gradients; the copy's gradient is the original's.
                return output.clone()
            parts = _tensor_parts(output)
            if parts is None:
                raise TypeError(
                    f"target layer {type(module).__name__} returned {type(output).__name__}, "
                    "not a tensor (nor a dict/tuple of tensors); choose a layer whose output "
                    "is a tensor (for example a child module of this one)"
                )
            if self.reshape_transform is None:
                raise ValueError(
                    f"target layer {type(module).__name__} returns a {type(output).__name__} "
                    f"with keys {list(parts)}; pass reshape_transform=... that turns it into one "
                    "(B, C, h, w) tensor, e.g. pytorch_grad_cam.utils.reshape_transforms."
                    "fasterrcnn_reshape_transform for a Faster R-CNN FPN backbone"
                )
            # A dict or tuple (an FPN's feature maps): every tensor inside is recorded and
            # gets its own gradient hook; the reshape transform receives the same structure.
            self._parts[index] = {}
            prepared = {key: self._prepare(value, index, key) for key, value in parts.items()}
            recorded = _rebuild(output, prepared)
            self.layer_outputs[index] = recorded
            self.activations[index] = self._reshape(recorded)
            return _rebuild(output, {key: value.clone() for key, value in prepared.items()})

        return hook

    def _prepare(self, output: torch.Tensor, index: int, key: object) -> torch.Tensor:
        """Make ``output`` part of the graph (frozen weights, a no_grad prefix) and hook
        its gradient; ``key`` names the part of a structured output (None for a tensor)."""
        if not self.record_gradients or not output.is_floating_point():
            return output
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_(True)
        if output.requires_grad:
            if key is not None:
                # A new node: a part of a structure may also feed a later part inside the
                # layer (an FPN level feeds the next); its gradient is the layer output's
                # partial one, from the network after the layer only.
                output = output.view_as(output)
            output.register_hook(self._make_gradient_hook(index, key))
        return output

    def _make_gradient_hook(self, index: int, key: object = None) -> Callable:
        def hook(grad: torch.Tensor) -> None:
            self.reached[index] = True
            if key is None:
                grad = self._reshape(grad)
                if self.reduce_gradient is not None:
                    grad = self.reduce_gradient(index, grad)
                self.gradients[index] = grad
            else:
                self._parts[index][key] = grad.detach()

        return hook

    def finish_gradients(self) -> None:
        """Assemble the gradients of structured outputs after the backward pass: the
        reshape transform gets the same structure of gradients (zeros for a part no
        gradient reached); a layer no gradient reached at all keeps None."""
        for index, received in self._parts.items():
            output = self.layer_outputs[index]
            if not received or output is None:
                continue
            parts = _tensor_parts(output)
            grads = {
                key: received.get(key, torch.zeros_like(value)) for key, value in parts.items()
            }
            grad = self._reshape(_rebuild(output, grads))
            if self.reduce_gradient is not None:
                grad = self.reduce_gradient(index, grad)
            self.gradients[index] = grad

    def _reshape(self, output: object) -> torch.Tensor:
        if torch.is_tensor(output):
            output = output.detach()
        else:
            output = _rebuild(output, {k: v.detach() for k, v in _tensor_parts(output).items()})
        if self.reshape_transform is not None:
            output = self.reshape_transform(output)
        return output

    def __call__(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Run the model on ``input_tensor`` and return its output."""
        return self.model(input_tensor)

    def release(self) -> None:
        """Remove every hook and drop the recorded tensors; safe to call twice."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.layer_outputs = [None] * len(self.target_layers)
        self.activations = [None] * len(self.target_layers)
        self.gradients = [None] * len(self.target_layers)
        self.gradient_edges = [None] * len(self.target_layers)
        self.reached = [False] * len(self.target_layers)
        self._parts = {}

    def __enter__(self) -> "ActivationsAndGradients":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _tensor_parts(output: object) -> Optional[Dict[object, torch.Tensor]]:
    """The tensors of a dict (by key) or tuple/list (by position), or None if ``output``
    is not such a structure of tensors."""
    if isinstance(output, Mapping):
        items = list(output.items())
    elif isinstance(output, (tuple, list)):
        items = list(enumerate(output))
    else:
        return None
    if not items or not all(torch.is_tensor(value) for _, value in items):
        return None
    return dict(items)


def _rebuild(template: object, parts: Dict[object, torch.Tensor]) -> object:
    """A structure like ``template`` (same type and keys) holding ``parts``."""
    if isinstance(template, Mapping):
        try:
            return type(template)((key, parts[key]) for key in template)
        except TypeError:
            return {key: parts[key] for key in template}
    values = [parts[i] for i in range(len(template))]
    if hasattr(template, "_fields"):
        return type(template)(*values)
    return type(template)(values)
