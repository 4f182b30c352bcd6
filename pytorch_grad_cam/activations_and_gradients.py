"""Record what the target layers produce during one forward pass, and the gradient
of the score with respect to it during the backward pass.

A forward hook on each target layer keeps the layer's output tensor; for gradient
methods a hook on that output *tensor* (not a module backward hook, which in-place
operations such as ``ReLU(inplace=True)`` break) keeps its gradient. Tensors stay on
their device; nothing is copied to the CPU here. Hooks are registered through
:class:`~pytorch_grad_cam.utils.hooks.Hooks`: they record only the thread that made
them, and none is left behind when a registration fails.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from pytorch_grad_cam.utils.hooks import Hooks
from pytorch_grad_cam.utils.structures import rebuild, tensor_parts

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]
GradientReducer = Callable[[int, torch.Tensor], Optional[torch.Tensor]]


class ActivationsAndGradients:
    """Hooks on ``target_layers`` that record their outputs and output gradients.

    After a forward pass, ``layer_outputs[i]`` is the raw output of ``target_layers[i]``
    (the tensor that gradients are taken with respect to), and ``activations[i]`` the
    same after ``reshape_transform``. After a backward pass, ``gradients[i]`` is the
    gradient of the loss with respect to ``activations[i]`` (also reshaped).

    A module called several times in one forward pass keeps its *last* call's output,
    activations and gradient; ``call_gradients[i]`` holds every call's gradient in the
    order of the calls (None for a call no gradient reached), for a method that counts
    every application of a layer (FullGrad). Only forward passes run on the thread that
    created the hooks are recorded, so another thread using the same model is not seen.

    With ``record_activations=False`` (a method that reads only the gradients, and whose
    backward pass runs through every target layer to the input: FullGrad) the outputs
    are neither copied nor kept as activations (``activations[i]`` stays None); a tensor
    hook registered before any in-place change still receives the gradient of the value
    the layer returned, and ``gradient_edges`` lists where in the graph each call's
    gradient arrives, for asking for the ones the backward pass did not reach.

    ``reduce_gradient(index, grad)``, if given, is applied to each gradient inside its
    hook, and what it returns is kept instead (None: nothing), so that a method needing
    only a reduction of a large gradient does not keep the gradient itself.

    Use as a context manager, or call :meth:`release` to remove every hook.

    Raises:
        ValueError: if a target layer cannot take hooks (a ScriptModule); no hook is left.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Optional[ReshapeTransform] = None,
        detach: bool = True,
        *,
        record_gradients: bool = True,
        record_activations: bool = True,
        reduce_gradient: Optional[GradientReducer] = None,
    ) -> None:
        self.model = model
        self.detach = detach  # grad-cam's parameter: what is recorded is always detached here
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.record_gradients = record_gradients
        self.record_activations = record_activations
        self.reduce_gradient = reduce_gradient
        self._clear()
        self._hooks = Hooks()
        for index, layer in enumerate(self.target_layers):
            self._hooks.forward(layer, self._make_forward_hook(index))

    def _clear(self) -> None:
        count = len(self.target_layers)
        self.layer_outputs: List[Optional[object]] = [None] * count
        self.activations: List[Optional[torch.Tensor]] = [None] * count
        self.gradients: List[Optional[torch.Tensor]] = [None] * count
        self.call_gradients: List[List[Optional[torch.Tensor]]] = [[] for _ in range(count)]
        # Where each call's output gradient arrives in the graph, taken when the layer
        # returned it (an in-place change of the tensor does not move it); by call.
        self.gradient_edges: List[List[Optional[object]]] = [[] for _ in range(count)]
        # Gradients of the tensors inside a dict/tuple output, by layer index and key.
        self._parts: Dict[int, Dict[object, torch.Tensor]] = {}

    def _make_forward_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> object:
            if torch.is_tensor(output):
                return self._record_tensor(index, output)
            return self._record_structure(module, index, output)

        return hook

    def _record_tensor(self, index: int, output: torch.Tensor) -> Optional[torch.Tensor]:
        call = len(self.call_gradients[index])
        self.call_gradients[index].append(None)
        prepared = self._prepare(output, index, call, None)
        self.layer_outputs[index] = prepared
        if not self.record_activations:
            edge = torch.autograd.graph.get_gradient_edge(prepared) if prepared.requires_grad else None
            self.gradient_edges[index].append(edge)
            # The gradient hook is on it: no copy, no activations. A new leaf (the layer
            # ran without autograd) is handed on as a copy, since the network may change
            # its output in place (a leaf that requires grad may not be).
            return None if prepared is output else prepared.clone()
        self.activations[index] = self.reshape(prepared)
        # Hand the rest of the network a copy, so that an in-place operation after this
        # layer (ReLU(inplace=True), `out += identity`) cannot change what we recorded;
        # the copy's gradient is the original's.
        return prepared.clone()

    def _record_structure(self, module: nn.Module, index: int, output: object) -> object:
        parts = tensor_parts(output)
        if parts is None:
            raise TypeError(
                f"target layer {type(module).__name__} returned {type(output).__name__}, not a tensor "
                "(nor a dict/tuple of tensors); choose a layer whose output is a tensor (for example "
                "a child module of this one)"
            )
        if self.reshape_transform is None:
            raise ValueError(
                f"target layer {type(module).__name__} returns a {type(output).__name__} with keys "
                f"{list(parts)}; pass reshape_transform=... that turns it into one (B, C, h, w) "
                "tensor, e.g. pytorch_grad_cam.utils.reshape_transforms.fasterrcnn_reshape_transform "
                "for a Faster R-CNN FPN backbone"
            )
        # A dict or tuple (an FPN's feature maps): every tensor inside is recorded and gets
        # its own gradient hook; the reshape transform receives the same structure.
        self.call_gradients[index] = [None]
        self._parts[index] = {}
        prepared = {key: self._prepare(value, index, 0, key) for key, value in parts.items()}
        recorded = rebuild(output, prepared)
        self.layer_outputs[index] = recorded
        self.activations[index] = self.reshape(recorded)
        return rebuild(output, {key: value.clone() for key, value in prepared.items()})

    def _prepare(self, output: torch.Tensor, index: int, call: int, key: object) -> torch.Tensor:
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
            output.register_hook(self._make_gradient_hook(index, call, key))
        return output

    def _make_gradient_hook(self, index: int, call: int, key: object = None) -> Callable:
        def hook(grad: torch.Tensor) -> None:
            if not self.record_gradients:  # switched off after the forward pass: the caller reads autograd's result
                return
            if key is not None:
                self._parts[index][key] = grad.detach()
                return
            kept = self._kept_gradient(index, self.reshape(grad))
            self.call_gradients[index][call] = kept
            if call == len(self.call_gradients[index]) - 1:
                self.gradients[index] = kept

        return hook

    def _kept_gradient(self, index: int, grad: torch.Tensor) -> Optional[torch.Tensor]:
        return grad if self.reduce_gradient is None else self.reduce_gradient(index, grad)

    def reached(self, index: int) -> List[bool]:
        """For each call of ``target_layers[index]``, whether a gradient arrived."""
        return [grad is not None for grad in self.call_gradients[index]]

    def finish_gradients(self) -> None:
        """Assemble the gradients of structured outputs after the backward pass: the
        reshape transform gets the same structure of gradients (zeros for a part no
        gradient reached); a layer no gradient reached at all keeps None."""
        for index, received in self._parts.items():
            output = self.layer_outputs[index]
            if not received or output is None:
                continue
            parts = tensor_parts(output)
            grads = {key: received.get(key, torch.zeros_like(value)) for key, value in parts.items()}
            kept = self._kept_gradient(index, self.reshape(rebuild(output, grads)))
            self.gradients[index] = kept
            self.call_gradients[index] = [kept]

    def reshape(self, output: object) -> torch.Tensor:
        """``output`` (a tensor, or a dict/tuple of them) detached and passed through the
        ``reshape_transform`` (as it is when there is none)."""
        if torch.is_tensor(output):
            output = output.detach()
        else:
            output = rebuild(output, {key: value.detach() for key, value in tensor_parts(output).items()})
        if self.reshape_transform is not None:
            output = self.reshape_transform(output)
        return output

    def __call__(self, input_tensor: torch.Tensor) -> object:
        """Run the model on ``input_tensor`` and return its output."""
        return self.model(input_tensor)

    def release(self) -> None:
        """Remove every hook and drop the recorded tensors and the gradient reducer (the
        tensors' gradient hooks point here: nothing of the caller may stay reachable
        from them); safe to call twice."""
        self._hooks.remove()
        self._clear()
        self.reduce_gradient = None

    def __enter__(self) -> "ActivationsAndGradients":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
