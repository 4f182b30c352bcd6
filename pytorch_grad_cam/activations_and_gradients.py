"""Record what the target layers produce during one forward pass, and the gradient
of the score with respect to it during the backward pass.

A forward hook on each target layer keeps the layer's output tensor; for gradient
methods a hook on that output *tensor* (not a module backward hook, which in-place
operations such as ``ReLU(inplace=True)`` break) keeps its gradient. Tensors stay on
their device; nothing is copied to the CPU here.
"""
from __future__ import annotations

import threading
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

    Use as a context manager, or call :meth:`release` to remove every hook.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Optional[ReshapeTransform] = None,
        record_gradients: bool = True,
    ) -> None:
        self.model = model
        self.target_layers = list(target_layers)
        self.reshape_transform = reshape_transform
        self.record_gradients = record_gradients
        self._thread = threading.get_ident()
        self.layer_outputs: List[Optional[torch.Tensor]] = [None] * len(self.target_layers)
        self.activations: List[Optional[torch.Tensor]] = [None] * len(self.target_layers)
        self.gradients: List[Optional[torch.Tensor]] = [None] * len(self.target_layers)
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        for index, layer in enumerate(self.target_layers):
            self._handles.append(layer.register_forward_hook(self._make_forward_hook(index)))

    def _make_forward_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> Optional[torch.Tensor]:
            if threading.get_ident() != self._thread:
                return None
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"target layer {type(module).__name__} returned {type(output).__name__}, "
                    "not a tensor; choose a layer whose output is a single tensor "
                    "(for example a child module of this one)"
                )
            if self.record_gradients and torch.is_grad_enabled() and not output.requires_grad:
                # Frozen weights (or a no_grad prefix): start the graph here, so the
                # gradient with respect to this layer's output still exists.
                output = output.detach().requires_grad_(True)
            if self.record_gradients and output.requires_grad:
                output.register_hook(self._make_gradient_hook(index))
            self.layer_outputs[index] = output
            self.activations[index] = self._reshape(output)
            # Hand the rest of the network a copy, so that an in-place operation after
            # this layer (ReLU(inplace=True), `out += identity`) cannot change what we
            # recorded, with or without gradients; the copy's gradient is the original's.
            return output.clone()

        return hook

    def _make_gradient_hook(self, index: int) -> Callable:
        def hook(grad: torch.Tensor) -> None:
            self.gradients[index] = self._reshape(grad)

        return hook

    def _reshape(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.reshape_transform is not None:
            tensor = self.reshape_transform(tensor)
        return tensor

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

    def __enter__(self) -> "ActivationsAndGradients":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
