"""Models beyond classifiers: semantic segmentation,
embeddings, HuggingFace-style outputs, YOLO-style list outputs and Faster R-CNN, each
on a real torchvision/timm architecture with random weights, and the reference's
``swinT_reshape_transform``. Maps are checked against an independent computation
where one exists, and otherwise for being finite and not constant.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from cam_reference import gradcam_weights, min_max, resize_half_pixel, single_thread_module  # noqa: F401
from torch import nn

from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)
from pytorch_grad_cam.utils.model_wrappers import HuggingfaceToTensorModelWrapper, OutputSelector
from pytorch_grad_cam.utils.reshape_transforms import (
    fasterrcnn_reshape_transform,
    swin_reshape_transform,
    swinT_reshape_transform,
)

# Maps lie in [0, 1]; the float32 engine against a float64 reference of the same formula.
ATOL = 1e-5


def seeded_input(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def assert_informative(result: np.ndarray, shape: tuple) -> None:
    assert result.shape == shape and np.isfinite(result).all()
    assert result.min() >= 0 and result.max() <= 1 + 1e-6
    assert result.max() - result.min() > 0.5 and result.std() > 1e-3


def reference_gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, score) -> np.ndarray:
    """GradCAM by hand: a leaf substituted for the layer's output, autograd.grad of
    ``score(model output)``, then the formula in float64 and half-pixel resizing."""
    leaves = []

    def hook(module, inputs, output):
        leaf = output.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            (grads,) = torch.autograd.grad(score(model(x)), leaves)
    finally:
        handle.remove()
    A = leaves[0].detach().double().numpy()
    G = grads.double().numpy()
    maps = []
    for a, g in zip(A, G):
        raw = np.maximum((gradcam_weights(a, g)[:, None, None] * a).sum(0), 0)
        maps.append(min_max(resize_half_pixel(min_max(raw), x.shape[2:])))
    return np.stack(maps)


# ------------------------------------------------------------ swinT_reshape_transform
def test_swinT_reshape_transform_is_the_reference_7x7_swin_transform():
    tokens = torch.arange(2 * 49 * 5, dtype=torch.float32).reshape(2, 49, 5)
    maps = swinT_reshape_transform(tokens)
    assert maps.shape == (2, 5, 7, 7)
    assert torch.equal(maps, tokens.reshape(2, 7, 7, 5).permute(0, 3, 1, 2))
    assert torch.equal(maps, swin_reshape_transform(tokens))
    wide = torch.rand(1, 6 * 8, 3)
    assert torch.equal(swinT_reshape_transform(wide, 6, 8), wide.reshape(1, 6, 8, 3).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="grid"):
        swinT_reshape_transform(torch.rand(1, 50, 3))  # 50 tokens are not 7x7
    channels_last = torch.rand(1, 7, 7, 4)  # timm's Swin blocks: permuted as they are
    assert torch.equal(swinT_reshape_transform(channels_last), channels_last.permute(0, 3, 1, 2))


# ------------------------------------------------------------ semantic segmentation
@pytest.fixture(scope="module")
def segmentation():
    """torchvision's FCN-ResNet50 (the lightest real FCN/DeepLabV3 with a ResNet
    backbone here; random weights), its (B, 21, H, W) ``out`` selected."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False).eval()
    return OutputSelector(model, "out")


def test_semantic_segmentation_target_gradcam(segmentation):
    x = seeded_input(1, 3, 64, 64)
    layer = segmentation.model.backbone.layer4
    with torch.no_grad():
        out = segmentation(x)
    assert out.shape == (1, 21, 64, 64)
    category = int(out[0].mean((1, 2)).argmax())
    mask = np.float32(out[0].argmax(0).numpy() == category)
    assert 0 < mask.sum() < mask.size  # a real region, not the whole image
    with GradCAM(segmentation, [layer]) as cam:
        result = cam(x, targets=[SemanticSegmentationTarget(category, mask)])
    assert_informative(result, (1, 64, 64))
    # Independently: the same score written by hand, autograd through a leaf.
    mask_tensor = torch.from_numpy(mask)
    expected = reference_gradcam(segmentation, layer, x, lambda out: (out[0, category] * mask_tensor).sum())
    assert np.abs(result - expected).max() < ATOL


# ------------------------------------------------------------ embeddings
@pytest.fixture(scope="module")
def embedder(resnet18):
    """A ResNet-18 feature extractor: every child but fc, flattened to (B, 512)."""
    return nn.Sequential(*list(resnet18.children())[:-1], nn.Flatten(1)).eval()


def test_similarity_to_concept_target_on_an_embedding_model(embedder):
    x = seeded_input(1, 3, 64, 64)
    concept_image = seeded_input(1, 3, 64, 64, seed=1)
    with torch.no_grad():
        embedding = embedder(x)[0]
        concept = embedder(concept_image)[0]
    assert embedding.shape == (512,)
    target = SimilarityToConceptTarget(concept)
    by_hand = float((embedding @ concept) / (embedding.norm() * concept.norm()))
    assert abs(float(target(embedding)) - by_hand) < 1e-6
    assert abs(float(SimilarityToConceptTarget(embedding)(embedding)) - 1.0) < 1e-6

    layer = embedder[7][-1]  # resnet18.layer4[-1]
    result = GradCAM(embedder, [layer])(x, targets=[target])
    assert_informative(result, (1, 64, 64))
    expected = reference_gradcam(
        embedder, layer, x, lambda out: nn.functional.cosine_similarity(out[0], concept, dim=0)
    )
    assert np.abs(result - expected).max() < ATOL


# ------------------------------------------------------------ HuggingFace-style outputs
class ModelOutput(OrderedDict):
    """Like transformers' ModelOutput: a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class HuggingfaceLike(nn.Module):
    """A classifier that returns ``ModelOutput(logits=..., hidden_states=...)``."""

    def __init__(self, backbone: nn.Module, as_plain_dict: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.as_plain_dict = as_plain_dict

    def forward(self, pixel_values):
        logits = self.backbone(pixel_values)
        if self.as_plain_dict:
            return {"logits": logits}
        return ModelOutput(logits=logits, hidden_states=(pixel_values,))


@pytest.mark.parametrize("as_plain_dict", [False, True], ids=["ModelOutput", "dict"])
def test_huggingface_style_output_through_the_wrapper(resnet18, as_plain_dict):
    assert HuggingfaceToTensorModelWrapper is OutputSelector  # the tutorial's name
    x = seeded_input(2, 3, 64, 64)
    wrapped = HuggingfaceToTensorModelWrapper(HuggingfaceLike(resnet18, as_plain_dict))  # .logits
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
    result = GradCAM(wrapped, [resnet18.layer4[-1]])(x, targets=targets)
    bare = GradCAM(resnet18, [resnet18.layer4[-1]])(x, targets=targets)
    assert_informative(result, (2, 64, 64))
    assert np.array_equal(result, bare)
    # targets=None: the top class of the selected logits, as on the bare model.
    assert np.array_equal(GradCAM(wrapped, [resnet18.layer4[-1]])(x), GradCAM(resnet18, [resnet18.layer4[-1]])(x))


def test_huggingface_style_output_unwrapped_is_a_clear_error(resnet18):
    model = HuggingfaceLike(resnet18)
    with pytest.raises((TypeError, ValueError)):
        GradCAM(model, [resnet18.layer4[-1]])(seeded_input(1, 3, 64, 64))


# ------------------------------------------------------------ YOLO-style list outputs
class YoloStyle(nn.Module):
    """A torchvision MobileNetV3 trunk with a YOLO-like head: the output is a list,
    ``[detections (B, N, 85), feature map]``, never a tensor."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.mobilenet_v3_small(weights=None).features
        self.head = nn.Conv2d(576, 85, 1)

    def forward(self, x):
        features = self.backbone(x)
        detections = self.head(features).flatten(2).transpose(1, 2)
        return [detections, features]


def test_yolo_style_list_output_eigencam_without_targets():
    torch.manual_seed(0)
    model = YoloStyle().eval()
    x = seeded_input(2, 3, 96, 96)
    layer = model.backbone[-1]
    cam = EigenCAM(model, [layer])
    result = cam(x)  # no targets at all (docs/decisions.md, D1)
    assert_informative(result, (2, 96, 96))
    assert isinstance(cam.outputs, list) and cam.outputs[0].shape == (2, 9, 85)
    # The same layer inside the bare trunk gives the same map.
    assert np.allclose(result, EigenCAM(model.backbone, [layer])(x), atol=1e-6)


# ------------------------------------------------------------ Faster R-CNN
def test_faster_rcnn_box_score_target_gradcam(fasterrcnn):
    x = seeded_input(1, 3, 96, 96)
    with torch.no_grad():
        detections = fasterrcnn(x)[0]
    assert len(detections["boxes"]) >= 3
    boxes = detections["boxes"][:3].numpy()
    labels = detections["labels"][:3].tolist()
    target = FasterRCNNBoxScoreTarget(labels=labels, bounding_boxes=boxes)
    # Each reference box is its own best match (IoU 1): the score is Σ (1 + score_j).
    with torch.no_grad():
        expected_score = float((1 + detections["scores"][:3]).sum())
        assert abs(float(target(detections)) - expected_score) < 1e-4
    with GradCAM(fasterrcnn, [fasterrcnn.backbone], fasterrcnn_reshape_transform) as cam:
        result = cam(x, targets=[target])
    assert_informative(result, (1, 96, 96))
