"""LeGrad (Bousselham et al., 2024, "LeGrad: An Explainability Method for Vision
Transformers via Feature Formation Sensitivity").

For each target block l, with z^l its output tokens and A^l (B, heads, N, N) its
post-softmax attention map:

    s^l = target(head(mean_i z^l_i))   the block's tokens (class token included) pooled
                                       by their mean, then the model's own final norm and
                                       classifier, as if block l were last
    E^l = mean_heads mean_queries ReLU(∂s^l / ∂A^l)       (B, N): one value per key token
    map = minmax(mean_l E^l over the patch keys), on the patch grid

``head`` applies the model's final norm and classifier (:mod:`token_heads`). For a CLIP
image tower it applies ``ln_post`` and the projection, and the target scores the pooled
projected embedding (its similarity to a text embedding): the paper's CLIP form.
Attention values are not multiplied into the gradients. Because the pooled token mixes
every token, the gradient reaches every query row of A^l (with the class token alone it
would reach only the class token's row). The norm is applied after the pooling, not to
each token before it: both peers measured in ``benchmarks/compare_legrad.py`` agree
with this order block by block, and not with the per-token one (a layer norm does not
commute with the mean).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.attention_cam import AttentionCAM
from pytorch_grad_cam.attention_maps import AttentionRecord
from pytorch_grad_cam.recording import Record
from pytorch_grad_cam.token_heads import TokenHead, model_head
from pytorch_grad_cam.utils.structures import first_tensor, map_tensors


class LeGrad(AttentionCAM):
    """LeGrad over the target blocks (None: every block; the paper uses every layer).

    Args:
        model, target_layers, reshape_transform: as :class:`AttentionCAM`.
        head: maps a block's output tokens (B, N, D) to the model's output for each token
            (B, N, ...); None: the model's own norm and classifier (timm, torchvision,
            open_clip, HuggingFace ViT classifiers).
        **kwargs: as :class:`BaseCAM`.

    Raises:
        ValueError: as :class:`AttentionCAM`; for a model whose head is not known and no ``head``.
    """

    def __init__(
        self, model: nn.Module, target_layers=None, reshape_transform=None, head: Optional[TokenHead] = None, **kwargs
    ) -> None:
        super().__init__(model, target_layers, reshape_transform, **kwargs)
        self.head = head if head is not None else model_head(self.model, type(self).__name__)

    def backward(self, loss: torch.Tensor, record: Record, recorder: ActivationsAndGradients) -> None:
        """Per block, ∂s^l/∂A^l with s^l the targets' scores of ``head`` of the block's
        mean token; each gradient runs back from block l's output to its attention only."""
        attention = self.attention_record()
        for tokens, probabilities in zip(recorder.layer_outputs, attention.maps):
            pooled = first_tensor(tokens).mean(dim=1, keepdim=True)
            # One pooled token per image: the head's (B, 1, ...) output scored as (B, ...).
            outputs = map_tensors(self.head(pooled), lambda t: t.flatten(0, 1))
            layer_score = self.score(record.targets, outputs).sum()
            (gradient,) = torch.autograd.grad(layer_score, probabilities, retain_graph=True)
            attention.gradients.append(gradient.detach())

    def relevance(self, record: Record, attention: AttentionRecord) -> torch.Tensor:
        """mean_l mean_heads mean_queries ReLU(∂s^l/∂A^l): (B, N)."""
        per_layer = [torch.relu(gradient).mean(dim=(1, 2)) for gradient in attention.gradients]
        return torch.stack(per_layer).mean(dim=0)
