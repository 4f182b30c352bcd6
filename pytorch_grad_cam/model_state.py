"""The model's state during a call: its device and dtype, eval mode for the call and
every submodule's own flag back afterwards, and autograd switched on only from the
first target layer on. Each helper leaves the model as it found it, also on error.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from pytorch_grad_cam.utils.hooks import Hooks

__all__ = [
    "model_device",
    "model_float_dtype",
    "compute_dtype",
    "evaluation_mode",
    "autograd_from",
    "prepare_input",
]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU if it has none."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def model_float_dtype(model: nn.Module) -> Optional[torch.dtype]:
    """The dtype of the model's first floating-point parameter, or None if it has none."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype maps are computed in from ``tensor`` (activations or gradients):
    float64 stays float64; float32, float16 and bfloat16 are computed in float32 (half
    precision is too coarse for sums over thousands of positions and for SVDs)."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


@contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Compute in eval mode, then give each submodule back its own train/eval flag.

    Only the modules found in training mode are switched (their ``training`` flag set
    directly, as ``model.eval()`` would, without calling overridable ``train()``
    methods), and exactly those are switched back, also when the body raises. A model
    already in eval mode is not written to at all, so threads sharing it are safe.
    """
    switched = [module for module in model.modules() if module.training]
    for module in switched:
        module.training = False
    try:
        yield
    finally:
        for module in switched:
            module.training = True


@contextmanager
def autograd_from(layers: Sequence[nn.Module]) -> Iterator[None]:
    """Run a forward pass without autograd until the first of ``layers`` is called.

    Gradients are wanted only with respect to the target layers' outputs, and those
    depend only on what comes after them; so the network before the first target layer
    builds no graph and keeps no activations for a backward pass, and each target layer
    switches recording on as it is called. Only this thread's passes are affected
    (grad mode is per thread; the hooks fire for this thread only).
    """

    def record_from_here(module: nn.Module, inputs: tuple) -> None:
        torch.set_grad_enabled(True)

    with Hooks() as hooks:
        for layer in layers:
            hooks.forward_pre(layer, record_from_here)
        with torch.no_grad():
            yield


def prepare_input(input_tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``input_tensor`` on the model's device and in its float dtype, as a tensor that
    autograd may use: a tensor made under ``torch.inference_mode()`` is cloned outside
    it, and one that is part of the caller's own graph is detached (a CAM's backward
    pass must not run into the user's graph, nor free it)."""
    dtype = model_float_dtype(model) or input_tensor.dtype
    prepared = input_tensor.detach().to(device=model_device(model), dtype=dtype)
    if prepared.is_inference():
        prepared = prepared.clone()
    return prepared
