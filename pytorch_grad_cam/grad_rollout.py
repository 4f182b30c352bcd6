"""Gradient-weighted attention rollout: each block's attention weighted by the target
score's gradient as in Chefer et al., 2021 ("Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", Eq. 5), accumulated as
attention rollout (Abnar & Zuidema, 2020).

Per block l, with A^l (B, heads, N, N) its attention and ∇A^l = ∂s/∂A^l the gradient of
the target's score of the model output:

    Ā^l = mean_heads ReLU(∇A^l ⊙ A^l)
    R   = Â^L ⋯ Â^1,  Â^l = (Ā^l + I) / rowsum(Ā^l + I)
    map = minmax(R[class token, patch tokens]) on the patch grid

(mean of R's rows for a model without prefix tokens). The ReLU is taken per head, before
the mean, as in Chefer et al.; ``discard_ratio`` is rollout's.
"""

from __future__ import annotations

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.attention_cam import AttentionCAM, patch_grid, query_row, rollout
from pytorch_grad_cam.attention_maps import AttentionRecord
from pytorch_grad_cam.attention_rollout import discard_lowest
from pytorch_grad_cam.recording import Record


class GradRollout(AttentionCAM):
    """Gradient-weighted rollout over the target blocks (None: every block).

    Args:
        model, target_layers, reshape_transform: as :class:`AttentionCAM`.
        discard_ratio: as :class:`AttentionRollout`.
        **kwargs: as :class:`BaseCAM`.

    Raises:
        ValueError: as :class:`AttentionCAM`; for a ``discard_ratio`` outside [0, 1).
    """

    def __init__(
        self, model: nn.Module, target_layers=None, reshape_transform=None, discard_ratio: float = 0.0, **kwargs
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        if not 0 <= discard_ratio < 1:
            raise ValueError(f"discard_ratio={discard_ratio!r}; pass a fraction in [0, 1), e.g. 0.9")
        self.discard_ratio = discard_ratio

    def backward(self, loss: torch.Tensor, record: Record, recorder: ActivationsAndGradients) -> None:
        """One backward pass of the targets' score to every block's attention."""
        attention = self.attention_record()
        attention.gradients = [g.detach() for g in torch.autograd.grad(loss, attention.maps)]

    def relevance(self, record: Record, attention: AttentionRecord) -> torch.Tensor:
        """The class token's row of the gradient-weighted rollout: (B, N)."""
        weighted = [
            discard_lowest(torch.relu(gradient * maps.detach()).mean(dim=1), self.discard_ratio)
            for maps, gradient in zip(attention.maps, attention.gradients)
        ]
        prefix = patch_grid(attention, weighted[0].shape[-1], type(self).__name__)[0]
        return query_row(rollout(weighted), prefix)
