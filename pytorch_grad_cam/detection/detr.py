"""DETR-style query detectors from HuggingFace transformers (DETR, RT-DETR, RT-DETR v2,
Deformable DETR) as detectors whose output is one
:class:`~pytorch_grad_cam.detection.Candidates` per image: every object query is one
candidate, scored and boxed exactly as the family's image processor
(``post_process_object_detection``) scores and boxes it, before its threshold.

The library imports no ``transformers``: a model is recognised by its
``config.model_type`` and by its output's ``logits`` and ``pred_boxes``.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

from pytorch_grad_cam.detection.adapters import register_adapter
from pytorch_grad_cam.detection.candidates import Candidates, cxcywh_to_xyxy

__all__ = ["DetrDetector", "adapt_detr"]

#: Trained with a cross-entropy over the classes and a last "no object" class: the
#: scores are a softmax with that class dropped.
SOFTMAX_TYPES = frozenset({"detr"})
#: Trained with a focal loss (one sigmoid per class, no "no object" class).
SIGMOID_TYPES = frozenset({"rt_detr", "rt_detr_v2", "deformable_detr"})


class DetrDetector(nn.Module):
    """A DETR-style ``...ForObjectDetection`` model returning one Candidates per image.

    Each object query is a candidate: its box is ``pred_boxes`` (normalised centre x,
    centre y, width, height) as xyxy in the pixels of the input; its scores are
    ``softmax(logits)`` without the last "no object" class for DETR, ``sigmoid(logits)``
    for RT-DETR (v2) and Deformable DETR (focal loss), as their image processors score them.

    The input is ``pixel_values`` as the model expects them: the caller resizes and
    normalises the images like the model's image processor does (its mean and std).
    Hold the user's model as ``model`` so its layers are layers of this wrapper.
    """

    returns_candidates = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model_type = str(model.config.model_type)

    def forward(self, images: torch.Tensor) -> List[Candidates]:
        """The candidates of each image of ``images`` (B, 3, H, W), normalised pixel values.

        Returns:
            B Candidates: (Q, 4) xyxy boxes in the pixels of ``images``, (Q, classes) scores.

        Raises:
            ValueError: if ``images`` is not (B, channels, H, W).
            TypeError: if the model's output has no ``logits`` and ``pred_boxes`` (a base
                ``...Model`` without the detection head: pass the ``...ForObjectDetection`` model).
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W) pixel values, got shape {tuple(images.shape)}")
        output = self.model(pixel_values=images, return_dict=True)
        logits = getattr(output, "logits", None)
        boxes = getattr(output, "pred_boxes", None)
        if logits is None or boxes is None:
            raise TypeError(
                f"{type(self.model).__name__} returned no logits and pred_boxes; pass the object detection "
                "model (e.g. DetrForObjectDetection), not the base model"
            )
        if self.model_type in SOFTMAX_TYPES:
            scores = logits.softmax(dim=-1)[..., :-1]
        else:
            scores = logits.sigmoid()
        height, width = images.shape[-2:]
        # Corners first, then scale: the image processor's order, so the numbers are its numbers.
        scale = boxes.new_tensor([width, height, width, height])
        corners = cxcywh_to_xyxy(boxes) * scale
        return [Candidates(image_boxes, image_scores) for image_boxes, image_scores in zip(corners, scores)]

    def default_target_layers(self) -> List[nn.Module]:
        """The backbone's last feature map: the stage that gives the backbone's last
        output, a (B, C, h, w) grid at its last stride (what the transformer reads, after
        a projection to its width).

        The stage rather than the projection after it: its output is a ReLU's, so
        AblationCAM's ablated channel is 0 (on the projection it would be min - 1e7, which
        swamps the transformer's normalisations and loses the box). Found as
        ``model.backbone.model.encoder.stages[k]`` of transformers' own backbones (ResNet,
        RT-DETR's ResNet), k from the backbone's ``out_features``; for other backbones
        (timm's), the projection of the last level: DETR's ``model.input_projection``,
        Deformable DETR's ``model.input_proj`` entry, RT-DETR's ``model.encoder_input_proj[-1]``.

        Returns:
            One module of the user's model.
        """
        inner = self.model.model
        stage = _last_backbone_stage(getattr(inner.backbone, "model", None))
        if stage is not None:
            return [stage]
        if self.model_type == "detr":
            return [inner.input_projection]
        if self.model_type == "deformable_detr":
            levels = len(getattr(inner.backbone, "intermediate_channel_sizes", inner.input_proj))
            return [inner.input_proj[min(levels, len(inner.input_proj)) - 1]]
        return [inner.encoder_input_proj[-1]]


def _last_backbone_stage(backbone: Optional[nn.Module]) -> Optional[nn.Module]:
    """The stage of a transformers backbone (``stage_names`` ``['stem', 'stage1', ...]``,
    ``encoder.stages``) that gives its last output feature, or None for other backbones."""
    names = getattr(backbone, "stage_names", None)
    features = getattr(backbone, "out_features", None)
    stages = getattr(getattr(backbone, "encoder", None), "stages", None)
    if not names or not features or not isinstance(stages, nn.ModuleList) or features[-1] not in names:
        return None
    index = list(names).index(features[-1]) - 1  # names[0] is the stem, which has no stage
    return stages[index] if 0 <= index < len(stages) else None


@register_adapter
def adapt_detr(model: object) -> Optional[nn.Module]:
    """HuggingFace transformers DETR, RT-DETR (v2), Deformable DETR ...ForObjectDetection (config.model_type).

    Returns:
        A :class:`DetrDetector` around ``model`` when it is a torch module whose
        ``config.model_type`` is one of the DETR-style families, else None.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(model, nn.Module) or model_type not in SOFTMAX_TYPES | SIGMOID_TYPES:
        return None
    return DetrDetector(model)
