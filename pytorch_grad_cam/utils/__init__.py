"""Helpers around the CAM methods: images, targets, reshape transforms, projections."""

from pytorch_grad_cam.utils.image import (
    deprocess_image,
    preprocess_image,
    scale_cam_image,
    show_cam_on_image,
)
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    RawScoresOutputTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform, vit_reshape_transform
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SimilarityToConceptTarget",
    "deprocess_image",
    "get_2d_projection",
    "preprocess_image",
    "scale_cam_image",
    "show_cam_on_image",
    "swin_reshape_transform",
    "vit_reshape_transform",
]
