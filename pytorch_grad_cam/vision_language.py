"""Explaining image–text models (CLIP, SigLIP): one map per text prompt, several prompts
in one call, and which prompt wins where.

The model side (recognising open_clip and HuggingFace models, the default layer per
family) is :mod:`pytorch_grad_cam.utils.clip_models`; the score is
:class:`~pytorch_grad_cam.utils.model_targets.ImageTextSimilarityTarget`, the cosine
similarity of the image and text embeddings. Any CAM method works by hand::

    encoder = ImageEncoder(clip, tokenizer)
    cam = GradCAM(encoder, encoder.target_layers(), reshape_transform=encoder.reshape_transform)
    maps = cam(images, [ImageTextSimilarityTarget("a cat", model=encoder)] * len(images))

and :func:`explain_prompts` does it for P prompts at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import several_targets
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.checks import check_input
from pytorch_grad_cam.model_state import evaluation_mode, prepare_input
from pytorch_grad_cam.registry import method_class
from pytorch_grad_cam.utils.clip_models import ImageEncoder, Text, text_embeddings
from pytorch_grad_cam.utils.image import resize_maps, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ImageTextSimilarityTarget

__all__ = [
    "ImageEncoder",
    "ImageTextSimilarityTarget",
    "PromptMaps",
    "draw_prompt_maps",
    "explain_prompts",
    "prompt_winners",
]

#: The legend's colours (RGB), one per prompt, repeating after ten.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@dataclass
class PromptMaps:
    """The maps of P prompts for B images.

    Attributes:
        prompts: the P prompts' labels (the strings, or "prompt k" for embeddings and ids).
        maps: (B, P, H, W) float32, each map in [0, 1] on its own (as every CAM call returns).
        raw_maps: (B, P, H, W) float32, the same maps before that normalisation (the
            method's layer map, ReLU, resized to the input, averaged over the target
            layers): in the same units for every prompt (a share of that prompt's cosine,
            to first order for GradCAM), so they can be compared across prompts. None
            for a method without per-layer maps (FullGrad, RefineCAM).
        scores: (B, P) float32, the cosine similarity of each image with each prompt.
        winners: (B, H, W) int64, at each pixel the prompt whose raw map (``maps`` where
            ``raw_maps`` is None) is largest; -1 where every prompt's map is 0.
    """

    prompts: List[str]
    maps: np.ndarray
    raw_maps: Optional[np.ndarray]
    scores: np.ndarray
    winners: np.ndarray


def prompt_winners(maps: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Which prompt wins where: the argmax over the prompt axis of maps (..., P, H, W)
    (the first prompt on a tie), and -1 where no prompt's map is above 0.

    Returns:
        int64 array (..., H, W).

    Raises:
        ValueError: if ``maps`` has fewer than 3 dimensions.
    """
    maps = maps.detach().cpu().numpy() if torch.is_tensor(maps) else np.asarray(maps)
    if maps.ndim < 3:
        raise ValueError(f"maps must be (..., P, H, W), got shape {maps.shape}")
    winners = maps.argmax(axis=-3)
    return np.where(maps.max(axis=-3) > 0, winners, -1).astype(np.int64)


def _method_class(method: Union[str, Type[BaseCAM]]) -> Type[BaseCAM]:
    cam_class = method_class(method)
    if not cam_class.needs_targets:
        raise ValueError(
            f"{cam_class.__name__} does not depend on the target, so every prompt would get the same map; "
            "choose a method that explains a score (gradcam, hirescam, layercam, scorecam, ...)"
        )
    return cam_class


def _prompt_labels(prompts: Text, count: int) -> List[str]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and all(isinstance(prompt, str) for prompt in prompts):
        return list(prompts)
    return [f"prompt {index}" for index in range(count)]


def explain_prompts(
    model: nn.Module,
    images: torch.Tensor,
    prompts: Text,
    method: Union[str, Type[BaseCAM]] = "gradcam",
    target_layers: Optional[Sequence[nn.Module]] = None,
    reshape_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    tokenizer: Any = None,
    **method_options: object,
) -> PromptMaps:
    """One map per text prompt for each image, and which prompt wins where.

    Each image is explained for all P prompts at once, as ``cam.explain_targets`` does
    (prompt p's :class:`ImageTextSimilarityTarget` for map p): for the gradient methods
    one forward pass of the image and the P scores' gradients at the target layers.

    Args:
        model: an open_clip or HuggingFace CLIP/SigLIP model, or its :class:`ImageEncoder`.
        images: (B, 3, H, W) float tensor, preprocessed as the model takes it.
        prompts: P strings (with the model's tokenizer), (P, L) token ids, or (P, D)
            text embeddings of the same model; each is one prompt.
        method: a name in ``pytorch_grad_cam.METHODS`` or a CAM class that explains a score.
        target_layers: the layers to explain; None: the family's default
            (``ImageEncoder.target_layers``) with its reshape transform.
        reshape_transform: with ``target_layers`` given, their transform (None: none).
        tokenizer: the model's own tokenizer, for strings (an ImageEncoder's is used otherwise).
        **method_options: passed to the CAM class's constructor (e.g. ``batch_size``).

    Returns:
        A :class:`PromptMaps` (maps (B, P, H, W), raw maps, cosines (B, P), winners (B, H, W)).

    Raises:
        TypeError: for a model that is not an image–text model, an unknown kind of
            ``method``, or ``images`` that are not a float tensor.
        ValueError: for an unknown method name, a method that ignores the target
            (EigenCAM), strings without a tokenizer, a text embedding of another size
            than the image embedding, or ``images`` that are not (B, 3, H, W).
    """
    encoder = model if isinstance(model, ImageEncoder) else ImageEncoder(model, tokenizer)
    cam_class = _method_class(method)
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(
            f"images must be a (B, 3, H, W) tensor, got {type(images).__name__} "
            f"{tuple(getattr(images, 'shape', ()))}; add the batch dimension with image[None]"
        )
    texts = text_embeddings(encoder, prompts, tokenizer)
    targets = [ImageTextSimilarityTarget(text) for text in texts]
    if target_layers is None:
        target_layers, reshape_transform = encoder.target_layers(), encoder.reshape_transform
    with cam_class(encoder, list(target_layers), reshape_transform=reshape_transform, **method_options) as cam:
        results = [_explain_image(cam, image, targets) for image in check_input(images)]
    maps, raw_maps, scores = (list(parts) for parts in zip(*results))
    raw = None if raw_maps[0] is None else np.stack(raw_maps)
    return PromptMaps(
        prompts=_prompt_labels(prompts, len(targets)),
        maps=np.stack(maps),
        raw_maps=raw,
        scores=np.stack(scores),
        winners=prompt_winners(raw if raw is not None else np.stack(maps)),
    )


def _explain_image(
    cam: BaseCAM, image: torch.Tensor, targets: List[ImageTextSimilarityTarget]
) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """One image's (P, H, W) maps, raw maps and (P,) cosines, from one record: for the
    gradient methods that share it, one forward pass of the image and the P scores'
    gradients (as ``cam.explain_targets``); for the others, the image repeated P times.
    What ``cam.explain_targets(image, targets)`` computes, with the raw maps kept."""
    with torch.inference_mode(False), evaluation_mode(cam.model):
        if several_targets.shares_one_forward(cam, BaseCAM):
            prepared = prepare_input(image.unsqueeze(0), cam.model)
            record = several_targets.record_several_targets(cam, prepared, targets)
        else:
            copies = image.unsqueeze(0).repeat(len(targets), *[1] * image.ndim)
            prepared = prepare_input(copies, cam.model)
            with cam.forward_context():
                record = cam.record(prepared, targets)
        with torch.no_grad():
            maps = cam.aggregate_multi_layers(cam.compute_cam_per_layer(record, False))
            raw = _raw_maps(cam, record, tuple(prepared.shape[2:]))
            embedding = record.outputs[:1]  # the image's (the copies' are the same)
            scores = torch.cat([cam.score([target], embedding) for target in targets])
    raw = None if raw is None else raw.cpu().numpy().astype(np.float32)
    return maps.cpu().numpy().astype(np.float32), raw, scores.cpu().numpy().astype(np.float32)


def _raw_maps(cam: BaseCAM, record: object, size: Tuple[int, ...]) -> Optional[torch.Tensor]:
    """The maps before normalisation (the steps of ``compute_cam_per_layer`` and
    ``aggregate_multi_layers`` without the min-max), or None for a method that computes
    its per-layer maps its own way."""
    if type(cam).compute_cam_per_layer is not BaseCAM.compute_cam_per_layer:
        return None
    layers = []
    for index in range(len(record.layers)):
        layer_map = torch.as_tensor(cam.layer_map(record, index, False))
        layers.append(resize_maps(torch.relu(layer_map.float()), size))
    return torch.stack(layers).mean(dim=0)


def _caption(panel: np.ndarray, text: str, colour: Tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``panel`` below a 20-pixel black strip holding ``text``."""
    strip = np.zeros((20, panel.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return np.concatenate([strip, panel])


def _legend(lines: Sequence[str], height: int) -> np.ndarray:
    """Each line after a swatch of its prompt's colour, on black, ``height`` pixels high
    (taller if the lines need it)."""
    width = max(120, 30 + 7 * max(len(line) for line in lines))
    legend = np.zeros((max(height, 30 + 18 * len(lines)), width, 3), np.uint8)
    for index, line in enumerate(lines):
        top = 24 + 18 * index
        cv2.rectangle(legend, (4, top), (16, top + 12), PALETTE[index % len(PALETTE)], -1)
        cv2.putText(legend, line, (22, top + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return legend


def draw_prompt_maps(image: np.ndarray, result: PromptMaps, index: int = 0, alpha: float = 0.5) -> np.ndarray:
    """One picture of image ``index`` of ``result``: the photo, each prompt's map over it
    (captioned with the prompt in its colour), the winners (each pixel in its prompt's
    colour, grey where none wins), and a legend of the prompts with their cosines.

    Args:
        image: (H, W, 3) RGB float in [0, 1], at the maps' size.
        result: from :func:`explain_prompts`.
        index: which image of the batch.
        alpha: the colours' share of the winners panel.

    Returns:
        uint8 RGB (H + 20 (or the legend's height, if taller), (P + 2) x W + the
        legend's width, 3), the legend at least 120 pixels wide.

    Raises:
        ValueError: if ``image`` is not (H, W, 3) in [0, 1] at the maps' size.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.shape != (*result.maps.shape[2:], 3):
        raise ValueError(
            f"image must be (H, W, 3) at the maps' size {result.maps.shape[2:]}, got shape {image.shape}; "
            "resize the photo to the model's input"
        )
    panels = [_caption(np.uint8(np.round(image * 255)), "image")]
    for number, (prompt, heat) in enumerate(zip(result.prompts, result.maps[index])):
        overlay = show_cam_on_image(image, heat, use_rgb=True)
        panels.append(_caption(overlay, prompt, PALETTE[number % len(PALETTE)]))
    winners = result.winners[index]
    colours = np.array(PALETTE, np.float32)[np.maximum(winners, 0) % len(PALETTE)]
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2) * 255
    blend = np.where((winners >= 0)[..., None], (1 - alpha) * image * 255 + alpha * colours, grey)
    panels.append(_caption(np.uint8(np.round(blend)), "winners"))
    lines = [f"{prompt}  cos {cosine:.3f}" for prompt, cosine in zip(result.prompts, result.scores[index])]
    legend = _legend(lines, panels[0].shape[0])
    height = legend.shape[0]
    panels = [np.pad(panel, ((0, height - panel.shape[0]), (0, 0), (0, 0))) for panel in panels]
    return np.concatenate([*panels, legend], axis=1)
