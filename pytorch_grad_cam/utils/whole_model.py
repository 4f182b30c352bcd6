"""The slow fallback of a network tail: the whole model re-run with one layer's output
replaced by a batch of changed copies (AblationCAM where no tail can be traced or
trusted)."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import nn

from pytorch_grad_cam.utils.hooks import Hooks
from pytorch_grad_cam.utils.structures import first_tensor

__all__ = ["batch_size_of", "replaced_output_runner"]


def batch_size_of(layer_output: object) -> int:
    """The number of copies in a layer output: a tensor's first dimension, or that of
    the first tensor in a dict/list/tuple (a Faster R-CNN backbone's FPN levels)."""
    return first_tensor(layer_output).shape[0]


def replaced_output_runner(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> Callable[[torch.Tensor], object]:
    """A function that runs the whole ``model`` on copies of ``image`` (1, C, ...) with
    ``layer``'s output replaced by the given batch (the slow fallback for a tail); the
    batch may be a dict or tuple of tensors where the layer returns one.

    A layer called several times per forward pass (a shared activation) has only its
    last call replaced, the call whose output the CAM recorded; one forward pass of
    ``image`` counts the calls. Only calls from this thread are counted or replaced.
    """

    def counting_hook(counter: List[int], replacement: Optional[torch.Tensor], last: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> Optional[torch.Tensor]:
            counter[0] += 1
            return replacement if counter[0] == last else None

        return hook

    calls = [0]
    with Hooks() as hooks, torch.no_grad():  # this thread's calls only
        hooks.forward(layer, counting_hook(calls, None, -1))
        model(image)
    last = calls[0]

    def run(layer_output: object) -> object:
        with Hooks() as hooks:
            hooks.forward(layer, counting_hook([0], layer_output, last))
            return model(image.expand(batch_size_of(layer_output), *image.shape[1:]))

    return run
