"""Per-object maps for torchvision's detectors: RetinaNet, FCOS, SSD / SSDlite (one stage)
and Faster / Mask / Keypoint R-CNN (two stages), turned into per-image
:class:`~pytorch_grad_cam.detection.Candidates` by running the model's own pieces
(``transform``, ``backbone``, ``head`` or ``rpn`` + ``roi_heads``, ``anchor_generator``,
``box_coder``) and stopping before the score threshold, top-k and NMS of its
``postprocess_detections``, so every box the model would report is among the candidates
with the same score.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops.boxes import clip_boxes_to_image

from pytorch_grad_cam.detection.adapters import register_adapter
from pytorch_grad_cam.detection.candidates import Candidates
from pytorch_grad_cam.model_state import evaluation_mode

__all__ = ["TorchvisionDetector", "adapt_torchvision"]

_ONE_STAGE = (RetinaNet, FCOS, SSD)


def _to_input_pixels(boxes: torch.Tensor, resized: Tuple[int, int], original: Tuple[int, int]) -> torch.Tensor:
    """Clip (N, 4) or (N, C, 4) boxes to the resized image and scale them back to the
    input's pixels, as the model's ``postprocess_detections`` + ``transform.postprocess`` do."""
    boxes = clip_boxes_to_image(boxes, resized)
    return resize_boxes(boxes.reshape(-1, 4), list(resized), list(original)).reshape(boxes.shape)


def _foreground(probabilities: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, C) with the background column 0 set to 0: labels keep the
    model's numbering (1..C-1, as its detections report them) and a candidate's top class
    is its most likely object class, never the background."""
    return torch.cat([torch.zeros_like(probabilities[:, :1]), probabilities[:, 1:]], dim=1)


class TorchvisionDetector(nn.Module):
    """A torchvision detector whose output is one Candidates per image, before NMS.

    Candidates per family (boxes xyxy in the pixels of ``images``, clipped to the image
    like the model's own detections):

    - RetinaNet: one box per anchor, scores ``sigmoid(cls_logits)`` (N, C); labels 0..C-1.
    - FCOS: one box per point, scores ``sqrt(sigmoid(cls_logits) * sigmoid(centerness))``.
    - SSD / SSDlite: one box per anchor, scores the softmax over classes with the
      background column 0 set to 0 (so labels are numbered 1..C-1 as the model's
      detections number them).
    - Faster / Mask / Keypoint R-CNN: one candidate per RPN proposal, class-specific
      boxes (N, C, 4), scores the box head's softmax with column 0 (background) set to 0;
      Mask R-CNN adds ``masks``: the mask head's logits (N, C, 28, 28) computed on each
      candidate's box for its top class (the box its detection would have).

    Every box and score of the model's own eval output is among the candidates (its
    threshold, top-k, small-box filter and NMS only select).
    """

    returns_candidates = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> List[Candidates]:
        """One Candidates per image of ``images`` (B, 3, H, W), floats in [0, 1].

        Raises:
            ValueError: if ``images`` is not (B, 3, H, W).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) floats in [0, 1], got shape {tuple(images.shape)}")
        original = (int(images.shape[-2]), int(images.shape[-1]))
        # Eval mode for the call (the transform's resizing, the RPN's proposal counts and the
        # heads differ in training mode); every submodule's own mode comes back after.
        with evaluation_mode(self.model):
            image_list, _ = self.model.transform(list(images))
            features = self.model.backbone(image_list.tensors)
            if isinstance(features, torch.Tensor):
                features = OrderedDict([("0", features)])
            if isinstance(self.model, _ONE_STAGE):
                return self._one_stage(image_list, list(features.values()), original)
            return self._two_stage(image_list, features, original)

    def _one_stage(
        self, image_list: ImageList, features: List[torch.Tensor], original: Tuple[int, int]
    ) -> List[Candidates]:
        model = self.model
        head = model.head(features)
        anchors = model.anchor_generator(image_list, features)
        # BoxCoder (RetinaNet, SSD) decodes one image's tensor with decode_single; FCOS's
        # BoxLinearCoder has only decode, which takes tensors.
        decode = getattr(model.box_coder, "decode_single", model.box_coder.decode)
        candidates = []
        for i, anchors_i in enumerate(anchors):
            boxes = decode(head["bbox_regression"][i], anchors_i)
            boxes = _to_input_pixels(boxes, image_list.image_sizes[i], original)
            candidates.append(Candidates(boxes, self._one_stage_scores(head, i)))
        return candidates

    def _one_stage_scores(self, head: Dict[str, torch.Tensor], i: int) -> torch.Tensor:
        logits = head["cls_logits"][i]
        if isinstance(self.model, SSD):
            return _foreground(F.softmax(logits, dim=-1))
        if isinstance(self.model, FCOS):
            return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"][i]))
        return torch.sigmoid(logits)

    def _two_stage(
        self, image_list: ImageList, features: Dict[str, torch.Tensor], original: Tuple[int, int]
    ) -> List[Candidates]:
        heads = self.model.roi_heads
        sizes = image_list.image_sizes
        proposals, _ = self.model.rpn(image_list, features)
        box_features = heads.box_head(heads.box_roi_pool(features, proposals, sizes))
        class_logits, box_regression = heads.box_predictor(box_features)
        counts = [len(p) for p in proposals]
        boxes = heads.box_coder.decode(box_regression, proposals).split(counts)
        scores = [_foreground(p) for p in F.softmax(class_logits, dim=-1).split(counts)]
        clipped = [clip_boxes_to_image(b, size) for b, size in zip(boxes, sizes)]
        masks: List[Optional[torch.Tensor]] = [None] * len(counts)
        if heads.has_mask():
            masks = self._mask_logits(features, clipped, scores, sizes)
        return [
            Candidates(_to_input_pixels(b, size, original), s, m)
            for b, s, m, size in zip(clipped, scores, masks, sizes)
        ]

    def _mask_logits(
        self,
        features: Dict[str, torch.Tensor],
        boxes: List[torch.Tensor],
        scores: List[torch.Tensor],
        sizes: List[Tuple[int, int]],
    ) -> List[Optional[torch.Tensor]]:
        """Mask R-CNN's mask logits (N, C, h, w) per image, on each candidate's box for its
        top class (in the resized image, as the model runs its mask head on its detections)."""
        heads = self.model.roi_heads
        top = [s.detach().argmax(dim=1) for s in scores]
        rois = [b[torch.arange(len(b), device=b.device), t] for b, t in zip(boxes, top)]
        logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, rois, sizes)))
        return list(logits.split([len(r) for r in rois]))

    def default_target_layers(self) -> List[nn.Module]:
        """The layers whose outputs feed the detection heads (BaseCAM averages their maps at
        input size): a tensor each, so no reshape transform is needed.

        - FPN backbones (ResNet-FPN, MobileNet-FPN): the FPN's output convs
          ``backbone.fpn.layer_blocks`` (one per pyramid level; the extra levels (P6/P7,
          max-pool) are computed from the last of them, so its gradient covers them too).
        - SSDlite: the two MobileNet stages ``backbone.features`` (the extra blocks that
          follow are computed from the last stage, and are at most a few pixels across).
        - SSD (VGG): ``backbone.features`` and the first extra block.
        - Any other backbone: ``[model.backbone]`` (right when it returns a tensor; for one
          that returns a dict of maps, pass target layers whose output is a tensor).

        Returns:
            A list of modules of the wrapped model.
        """
        backbone = self.model.backbone
        fpn = getattr(backbone, "fpn", None)
        if fpn is not None and hasattr(fpn, "layer_blocks"):
            return list(fpn.layer_blocks)
        if isinstance(backbone, SSDLiteFeatureExtractorMobileNet):
            return list(backbone.features)
        if isinstance(self.model, SSD) and hasattr(backbone, "features") and hasattr(backbone, "extra"):
            return [backbone.features, backbone.extra[0]]
        return [backbone]


@register_adapter
def adapt_torchvision(model: nn.Module) -> Optional[nn.Module]:
    """torchvision detection models: RetinaNet, FCOS, SSD/SSDlite, Faster/Mask/Keypoint R-CNN.

    Returns:
        A :class:`TorchvisionDetector` holding ``model`` when it is an instance of one of
        those classes (or a subclass), else None.
    """
    if isinstance(model, _ONE_STAGE + (FasterRCNN,)):
        return TorchvisionDetector(model)
    return None
