"""A vision transformer's head applied to an inner block's tokens: what the model would
output if that block were its last (LeGrad's per-layer score s^l = target(head(z^l))).

For each origin the head is the model's own final norm, pooling and classifier or
projection, as the model applies them: timm (``norm`` then ``forward_head``),
torchvision (``encoder.ln``, the class token, ``heads``), open_clip's image tower without
attention pooling (``ln_post`` and its ``pool_type``, then ``proj``: LeGrad's CLIP form, whose target is the
similarity of the projected embedding to a text embedding) and HuggingFace's
``ViTForImageClassification``/``DeiTForImageClassification`` (``layernorm``, the class
token, ``classifier``). ``OutputSelector`` wrappers are looked through. Any other model
takes a ``head`` function of the user's.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from pytorch_grad_cam.utils.model_wrappers import OutputSelector, select_output

__all__ = ["TokenHead", "model_head"]

#: Maps a block's output tokens (B, N, D) to what the model outputs for them.
TokenHead = Callable[[torch.Tensor], object]


def _timm_head(model: nn.Module) -> Optional[TokenHead]:
    if hasattr(model, "forward_head") and isinstance(getattr(model, "norm", None), nn.Module):
        return lambda tokens: model.forward_head(model.norm(tokens))
    return None


def _torchvision_head(model: nn.Module) -> Optional[TokenHead]:
    encoder = getattr(model, "encoder", None)
    if hasattr(model, "class_token") and hasattr(model, "heads") and hasattr(encoder, "ln"):
        return lambda tokens: model.heads(encoder.ln(tokens)[:, 0])
    return None


def _open_clip_head(model: nn.Module) -> Optional[TokenHead]:
    if not (hasattr(model, "ln_post") and hasattr(model, "pool_type") and getattr(model, "attn_pool", 1) is None):
        return None

    def head(tokens: torch.Tensor) -> object:
        # open_clip's pooling: the class token, the mean of the others, or every token;
        # ln_post before it, or (final_ln_after_pool) after it.
        if not model.final_ln_after_pool:
            tokens = model.ln_post(tokens)
        if model.pool_type == "tok":
            pooled, rest = tokens[:, 0], tokens[:, 1:]
        elif model.pool_type == "avg":
            pooled, rest = tokens[:, 1:].mean(dim=1), tokens[:, 1:]
        else:
            pooled = rest = tokens
        if model.final_ln_after_pool:
            pooled = model.ln_post(pooled)
        if model.proj is not None:
            pooled = pooled @ model.proj
        return (pooled, rest) if getattr(model, "output_tokens", False) else pooled

    return head


def _huggingface_head(model: nn.Module) -> Optional[TokenHead]:
    if type(model).__name__ not in ("ViTForImageClassification", "DeiTForImageClassification"):
        return None
    base = getattr(model, model.base_model_prefix)

    def head(tokens: torch.Tensor) -> object:
        from transformers.modeling_outputs import ImageClassifierOutput

        return ImageClassifierOutput(logits=model.classifier(base.layernorm(tokens)[:, 0]))

    return head


def model_head(model: nn.Module, method: str) -> TokenHead:
    """The head of ``model`` as a function of a block's output tokens (B, N, D).

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
        "output tokens (B, N, D) to the model's output, e.g. head=lambda z: model.fc(model.norm(z)[:, 0])"
    )
