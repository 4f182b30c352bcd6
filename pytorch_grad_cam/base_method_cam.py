"""BaseMethodCAM: a method that computes its maps with another method (the *base
method*) inside this method's own pipeline (FinerCAM, RefineCAM).

The wrapper owns the call (its targets, its layer aggregation); each layer's map is the
base method's ``get_cam_image`` on the activations and gradients this call recorded.
"""

from __future__ import annotations

from typing import ContextManager, Optional, Type

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.recording import Record


class BaseMethodCAM(BaseCAM):
    """Compute each layer's map with ``base_method`` (built on the same model, layers
    and ``reshape_transform``; extra keywords such as ``batch_size`` go to it).

    The wrapper takes the base method's needs (gradients, targets, the input gradient)
    and its steps: the record's backward pass and each layer's map are the base
    method's, through the same documented hooks every method uses.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers,
        reshape_transform,
        base_method: Type[BaseCAM],
        **kwargs,
    ) -> None:
        own = {k: kwargs.pop(k) for k in ("target_layer", "use_cuda", "tta_transforms") if k in kwargs}
        super().__init__(model, target_layers, reshape_transform, **own)
        self.base = base_method(model, self.target_layers or None, reshape_transform, **kwargs)
        for flag in ("uses_gradients", "needs_targets", "compute_input_gradient", "record_activations"):
            setattr(self, flag, getattr(self.base, flag))

    def release(self) -> None:
        """Drop what the last call kept, here and in the base method."""
        super().release()
        if getattr(self, "base", None) is not None:
            self.base.release()

    def layer_map(self, record: Record, index: int, eigen_smooth: bool) -> torch.Tensor:
        """The base method's raw map of ``record.layers[index]``."""
        return self.base.layer_map(record, index, eigen_smooth)

    def reduce_gradient(self, record: Record, target_layer: nn.Module, grads: torch.Tensor) -> Optional[torch.Tensor]:
        """The base method's reduction of a gradient."""
        return self.base.reduce_gradient(record, target_layer, grads)

    def backward(self, loss: torch.Tensor, record: Record, recorder: ActivationsAndGradients) -> None:
        """The base method's backward pass."""
        self.base.backward(loss, record, recorder)

    def forward_context(self) -> ContextManager:
        """The base method's context for the record step."""
        return self.base.forward_context()
