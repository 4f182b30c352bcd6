"""The model side of explaining image–text models (open_clip CLIP and SigLIP, HuggingFace
``CLIPModel``/``SiglipModel`` and their vision towers): embed images and texts, and name
the layer to explain with its reshape transform.

A model is recognised by what it has, never by importing its package: open_clip models
have ``encode_image``/``encode_text``, HuggingFace ones ``get_image_features``/
``get_text_features`` (a vision tower alone: ``vision_model``). A CAM needs a model whose
forward takes the image, so :class:`ImageEncoder` wraps such a model into one that
returns the unit image embeddings; :class:`~pytorch_grad_cam.utils.model_targets.ImageTextSimilarityTarget`
then scores their cosine with a text.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam.model_state import evaluation_mode, model_device
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform, vit_reshape_transform_for

__all__ = [
    "ImageEncoder",
    "Text",
    "image_embeddings",
    "model_family",
    "text_embeddings",
    "vision_reshape_transform",
    "vision_target_layers",
]

#: A text as the targets take it: a string, several strings, token ids (an integer
#: tensor), a tokenizer's output (a dict with ``input_ids``), or a float embedding.
Text = Union[str, Sequence[str], torch.Tensor, Mapping]

_TOKENIZER_HINT = (
    "pass tokenizer= the model's own (open_clip: open_clip.get_tokenizer(model_name); HuggingFace: "
    "AutoTokenizer.from_pretrained(name)), or pass token ids or a text embedding instead"
)


def model_family(model: nn.Module) -> str:
    """Which kind of image–text model ``model`` is, from the methods it has.

    Returns:
        "open_clip" (``encode_image`` and ``encode_text``), "huggingface"
        (``get_image_features``: ``CLIPModel``, ``SiglipModel``) or "huggingface_vision"
        (a vision tower alone, with ``vision_model``: ``SiglipVisionModel``,
        ``CLIPVisionModelWithProjection``; it has no text tower).

    Raises:
        TypeError: if it is none of them (an :class:`ImageEncoder` is unwrapped first).
    """
    model = model.model if isinstance(model, ImageEncoder) else model
    if callable(getattr(model, "encode_image", None)) and callable(getattr(model, "encode_text", None)):
        return "open_clip"
    if callable(getattr(model, "get_image_features", None)):
        return "huggingface"
    if isinstance(getattr(model, "vision_model", None), nn.Module) or _is_vision_transformer(model):
        return "huggingface_vision"
    raise TypeError(
        f"{type(model).__name__} is not an image-text model this library recognises: it needs "
        "encode_image/encode_text (open_clip), get_image_features (HuggingFace CLIPModel, SiglipModel) "
        "or a vision_model (a HuggingFace vision tower); wrap other models so that they return the "
        "image embedding, and pass text embeddings"
    )


def _is_vision_transformer(model: nn.Module) -> bool:
    """A HuggingFace vision transformer that is itself the tower (``SiglipVisionModel``
    of transformers >= 5): patch embeddings, an encoder of layers and a config."""
    encoder = getattr(model, "encoder", None)
    return hasattr(model, "embeddings") and hasattr(encoder, "layers") and hasattr(model, "config")


def image_embeddings(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The image embeddings (B, D) of ``images`` (B, 3, H, W), not normalised, with the
    graph of the forward pass (no mode or grad switching here: the caller decides).

    Raises:
        TypeError: as :func:`model_family`.
    """
    family = model_family(model)
    model = model.model if isinstance(model, ImageEncoder) else model
    if family == "open_clip":
        return model.encode_image(images)
    if family == "huggingface":
        output = model.get_image_features(pixel_values=images)
    else:
        output = model(pixel_values=images)
        # CLIPVisionModelWithProjection: image_embeds; SiglipVisionModel: its pooled head.
        if getattr(output, "image_embeds", None) is not None:
            return output.image_embeds
    # transformers >= 5 returns an output object whose pooler_output is the embedding.
    return output if torch.is_tensor(output) else output.pooler_output


def _tokens(model: nn.Module, texts: List[str], tokenizer: Any) -> Union[torch.Tensor, Mapping]:
    """The tokenizer's output for ``texts``: a HuggingFace tokenizer or processor (it has
    ``model_input_names``) is asked for PyTorch tensors, padded as its model was trained
    (SigLIP: to the maximum length; CLIP: to the longest text); another callable (open_clip's
    tokenizers) is called on the list."""
    if hasattr(tokenizer, "model_input_names"):
        model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
        padding = "max_length" if "siglip" in model_type else True
        return tokenizer(text=texts, padding=padding, truncation=True, return_tensors="pt")
    return tokenizer(texts)


def _encode_tokens(model: nn.Module, family: str, tokens: Union[torch.Tensor, Mapping]) -> torch.Tensor:
    device = model_device(model)
    if isinstance(tokens, Mapping):
        if "input_ids" not in tokens:
            raise ValueError(f"the tokenizer's output has keys {list(tokens)}, but no input_ids to encode")
        inputs = {key: tokens[key].to(device) for key in ("input_ids", "attention_mask") if key in tokens}
    else:
        ids = torch.as_tensor(tokens)
        inputs = {"input_ids": (ids if ids.ndim == 2 else ids.reshape(1, -1)).to(device)}
    if family == "open_clip":
        return model.encode_text(inputs["input_ids"])
    output = model.get_text_features(**inputs)
    return output if torch.is_tensor(output) else output.pooler_output


def text_embeddings(model: Optional[nn.Module], text: Text, tokenizer: Any = None) -> torch.Tensor:
    """Unit text embeddings (P, D), detached, on the model's device (a float embedding
    given as it is: on its own device).

    Args:
        model: the image–text model (or an :class:`ImageEncoder`, whose tokenizer is used
            when ``tokenizer`` is None) whose text tower encodes strings and token ids;
            not needed for an embedding. It is run without gradients in eval mode, every
            submodule's own mode given back.
        text: a string or a list of P strings; token ids (an integer tensor (L,) or
            (P, L)) or a tokenizer's output (a dict with ``input_ids``); or an embedding,
            a float tensor (D,) or (P, D) (or anything ``torch.as_tensor`` takes).
        tokenizer: the model's own tokenizer, for strings.

    Returns:
        (P, D) float tensor, each row of norm 1.

    Raises:
        ValueError: for strings without a tokenizer, strings or ids without a model, an
            empty list, or an embedding that is not (D,) or (P, D).
        TypeError: for a model that is not an image–text model, or has no text tower.
    """
    if isinstance(model, ImageEncoder):
        tokenizer = model.tokenizer if tokenizer is None else tokenizer
        model = model.model
    if isinstance(text, str):
        text = [text]
    strings = isinstance(text, (list, tuple)) and bool(text) and all(isinstance(item, str) for item in text)
    if not strings and not isinstance(text, Mapping):
        text = torch.as_tensor(text) if not torch.is_tensor(text) else text
        if text.numel() == 0:
            raise ValueError("no text given: pass a string, a list of strings, token ids or an embedding")
    if torch.is_tensor(text) and text.is_floating_point():
        if text.ndim not in (1, 2):
            raise ValueError(f"a text embedding is (D,) or (P, D), got shape {tuple(text.shape)}")
        return F.normalize(text.detach().reshape(-1, text.shape[-1]), dim=-1)
    if strings and tokenizer is None:
        raise ValueError(f"the prompt {text[0]!r} is a string, but no tokenizer was given: {_TOKENIZER_HINT}")
    if model is None:
        raise ValueError("strings and token ids are encoded by the model's text tower: pass model=")
    family = model_family(model)
    if family == "huggingface_vision":
        raise TypeError(
            f"{type(model).__name__} is a vision tower without a text tower: encode the text with the full "
            "model (get_text_features) and pass the embedding"
        )
    tokens = _tokens(model, list(text), tokenizer) if strings else text
    with torch.no_grad(), evaluation_mode(model):
        embeddings = _encode_tokens(model, family, tokens)
    return F.normalize(embeddings.detach().float() if embeddings.dtype != torch.float64 else embeddings, dim=-1)


class ImageEncoder(nn.Module):
    """An image–text model as a CAM takes it: ``forward(images)`` returns the unit image
    embeddings (B, D), which :class:`~pytorch_grad_cam.utils.model_targets.ImageTextSimilarityTarget`
    scores against a text.

    Args:
        model: an open_clip model (``encode_image``), a HuggingFace ``CLIPModel`` or
            ``SiglipModel`` (``get_image_features``), or a HuggingFace vision tower
            (``CLIPVisionModelWithProjection``, ``SiglipVisionModel``). It is held as the
            ``model`` child, unchanged; target layers are its own modules.
        tokenizer: the model's own tokenizer, used by :meth:`encode_text` for strings.

    Raises:
        TypeError: if ``model`` is not one of these (see :func:`model_family`).
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        super().__init__()
        self.family = model_family(model)
        self.model = model
        self.tokenizer = tokenizer
        # Mirror the model's flag without calling train()/eval(), which would write to it.
        self.training = model.training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The unit image embeddings (B, D) of ``images`` (B, 3, H, W)."""
        return F.normalize(image_embeddings(self.model, images), dim=-1)

    def encode_text(self, text: Text) -> torch.Tensor:
        """Unit text embeddings (P, D): :func:`text_embeddings` with this encoder's model
        and tokenizer (raises as it does)."""
        return text_embeddings(self.model, text, self.tokenizer)

    def target_layers(self) -> List[nn.Module]:
        """The layer explained by default: :func:`vision_target_layers` of the model."""
        return vision_target_layers(self.model)

    @property
    def reshape_transform(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The transform of :meth:`target_layers`' output: :func:`vision_reshape_transform`."""
        return vision_reshape_transform(self.model)


def _tower(model: nn.Module) -> nn.Module:
    """The vision tower: open_clip's ``visual``, HuggingFace's ``vision_model``."""
    model = model.model if isinstance(model, ImageEncoder) else model
    if model_family(model) == "open_clip":
        return model.visual
    return model.vision_model if isinstance(getattr(model, "vision_model", None), nn.Module) else model


def vision_target_layers(model: nn.Module) -> List[nn.Module]:
    """The layer to explain, per family: the input of the last block's attention for a
    ViT tower (open_clip ``visual.transformer.resblocks[-1].ln_1``, HuggingFace
    ``vision_model.encoder.layers[-1].layer_norm1``, a timm trunk's ``blocks[-1].norm1``;
    the patch tokens the last block outputs never reach a class-token pooler), and the
    last residual block of a convolutional tower (open_clip's ModifiedResNet ``RN50``:
    ``visual.layer4[-1]``, before the attention pooling; a timm trunk's last stage).

    Returns:
        A list of one module of ``model``.

    Raises:
        TypeError: as :func:`model_family`.
        ValueError: for a tower of another layout (pass ``target_layers`` yourself).
    """
    tower = _tower(model)
    trunk = getattr(tower, "trunk", None)  # open_clip's timm towers (SigLIP, ConvNeXt)
    if hasattr(getattr(tower, "transformer", None), "resblocks"):
        return [tower.transformer.resblocks[-1].ln_1]
    if hasattr(tower, "layer4"):
        return [tower.layer4[-1]]
    if hasattr(getattr(tower, "encoder", None), "layers"):
        return [tower.encoder.layers[-1].layer_norm1]
    if trunk is not None and hasattr(trunk, "blocks"):
        return [trunk.blocks[-1].norm1]
    if trunk is not None and hasattr(trunk, "stages"):
        return [trunk.stages[-1]]
    raise ValueError(
        f"no default layer for the vision tower {type(tower).__name__}; pass target_layers= (and a "
        "reshape_transform for token layers)"
    )


def _sequence_first(transform: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    return transform(tokens.transpose(0, 1))


def vision_reshape_transform(model: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The ``reshape_transform`` of :func:`vision_target_layers`' output: for ViT towers
    ``vit_reshape_transform`` bound to the tower's prefix tokens (positions that are no
    patch: the class token) and its patch grid at the configured image size; None for a
    convolutional tower.

    Returns:
        A callable (B, tokens, C) -> (B, C, h, w), or None.

    Raises:
        TypeError: as :func:`model_family`.
    """
    tower = _tower(model)
    trunk = getattr(tower, "trunk", None)
    if hasattr(getattr(tower, "transformer", None), "resblocks"):  # open_clip VisionTransformer
        height, width = (int(size) for size in tower.grid_size)
        prefix = tower.positional_embedding.shape[0] - height * width
        transform = functools.partial(vit_reshape_transform, num_prefix_tokens=prefix, height=height, width=width)
        if not getattr(tower.transformer, "batch_first", True):  # (tokens, B, C) layout of older versions
            return functools.partial(_sequence_first, transform)
        return transform
    if hasattr(getattr(tower, "encoder", None), "layers"):  # HuggingFace CLIP/SigLIP vision
        embeddings = tower.embeddings
        side = int(tower.config.image_size) // int(tower.config.patch_size)
        prefix = int(embeddings.num_positions) - int(embeddings.num_patches)
        return functools.partial(vit_reshape_transform, num_prefix_tokens=prefix, height=side, width=side)
    if trunk is not None and hasattr(trunk, "blocks"):
        return vit_reshape_transform_for(trunk)
    return None
