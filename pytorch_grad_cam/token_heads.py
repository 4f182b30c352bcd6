"""A vision transformer's head applied to each token of an inner block: what the model
would output for every token if that block were its last. LeGrad's score of layer l is
the target's score of its output for the mean of the block's tokens (Bousselham et al., 2024).

For each origin the head is the model's own final norm and classifier (or projection),
applied to every token as the model applies them to its pooled token: timm (``norm``,
``fc_norm``, ``head``), torchvision (``encoder.ln``, ``heads``), open_clip's image tower
(``ln_post``, ``proj``: LeGrad's CLIP form, whose target scores the projected embedding
of the block's mean token, e.g. its similarity to a text embedding) and HuggingFace's
``ViTForImageClassification``/``DeiTForImageClassification`` (``layernorm``,
``classifier``) and ``CLIPVisionModelWithProjection`` (``post_layernorm``,
``visual_projection``: the CLIP form, output ``{"image_embeds": ...}``). ``OutputSelector`` wrappers are looked through. Any other model (an
attention-pooling head, another origin) takes a ``head`` function of the user's.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from pytorch_grad_cam.utils.model_wrappers import OutputSelector, select_output

__all__ = ["TokenHead", "model_head"]

#: Maps a block's output tokens (B, N, D) to the model's output for each token (B, N, ...).
TokenHead = Callable[[torch.Tensor], object]


def _timm_head(model: nn.Module) -> Optional[TokenHead]:
    parts = [getattr(model, name, None) for name in ("norm", "fc_norm", "head")]
    if getattr(model, "attn_pool", None) is None and all(isinstance(part, nn.Module) for part in parts):
        norm, fc_norm, head = parts
        return lambda tokens: head(fc_norm(norm(tokens)))
    return None


def _torchvision_head(model: nn.Module) -> Optional[TokenHead]:
    encoder = getattr(model, "encoder", None)
    if hasattr(model, "class_token") and hasattr(model, "heads") and hasattr(encoder, "ln"):
        return lambda tokens: model.heads(encoder.ln(tokens))
    return None


def _open_clip_head(model: nn.Module) -> Optional[TokenHead]:
    if not (hasattr(model, "ln_post") and hasattr(model, "pool_type") and getattr(model, "attn_pool", 1) is None):
        return None

    def head(tokens: torch.Tensor) -> torch.Tensor:
        tokens = model.ln_post(tokens)
        return tokens if model.proj is None else tokens @ model.proj

    return head


def _huggingface_head(model: nn.Module) -> Optional[TokenHead]:
    name = type(model).__name__
    if name in ("ViTForImageClassification", "DeiTForImageClassification"):
        base = getattr(model, model.base_model_prefix)

        def classifier(tokens: torch.Tensor) -> object:
            from transformers.modeling_outputs import ImageClassifierOutput

            return ImageClassifierOutput(logits=model.classifier(base.layernorm(tokens)))

        return classifier
    if name == "CLIPVisionModelWithProjection":

        def projection(tokens: torch.Tensor) -> object:
            # CLIP's pooled output is post_layernorm of the class token, then the projection.
            return {"image_embeds": model.visual_projection(model.vision_model.post_layernorm(tokens))}

        return projection
    return None


def model_head(model: nn.Module, method: str) -> TokenHead:
    """The head of ``model`` as a function of a block's output tokens (B, N, D), giving
    the output for each token (B, N, ...).

    Raises:
        ValueError: naming ``method`` and the ``head`` argument, for a model of no known origin.
    """
    if isinstance(model, OutputSelector):
        inner = model_head(model.model, method)
        return lambda tokens: select_output(inner(tokens), model.select)
    for reader in (_timm_head, _torchvision_head, _open_clip_head, _huggingface_head):
        head = reader(model)
        if head is not None:
            return head
    raise ValueError(
        f"{method}: no known head for {type(model).__name__} (timm, torchvision and HuggingFace ViT "
        "classifiers and open_clip image towers are known); pass head=a function mapping a block's "
        "output tokens (B, N, D) to the model's output for each token (B, N, ...), e.g. "
        "head=lambda z: model.fc(model.norm(z))"
    )
