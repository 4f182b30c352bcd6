"""Reshape transforms bound to a model: prefix tokens and grids read from timm's ViTs
(DeiT-distilled's class + distillation tokens, register tokens, non-square grids), the
errors that say how to fix a wrong prefix count, and Swin's refusal of (B, C, h, w) maps.

The maps computed through ``vit_reshape_transform_for(model)`` must equal the reference
CAM of the patch tokens folded independently here (drop the known prefix, row-major grid).
Models have random weights (nothing can be downloaded).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from cam_reference import reference_cam, single_thread_module  # noqa: F401 - autouse fixture

from pytorch_grad_cam import METHODS, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    swin_reshape_transform,
    vit_reshape_transform,
    vit_reshape_transform_for,
)

ATOL = 5e-5  # as in test_transformers.py: float32 sums over tokens


def fold(prefix: int, height: int, width: int):
    """The test's own fold of (B, prefix + h*w, C) tokens into (B, C, h, w)."""

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        rows = [tokens[:, prefix + i * width : prefix + (i + 1) * width, :] for i in range(height)]
        return torch.stack(rows, dim=1).permute(0, 3, 1, 2)

    return transform


def randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """LayerNorms as after training (timm initialises weight 1, bias 0, which makes
    every token sum to zero over the channels and EigenCAM's sign arbitrary)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def deit_distilled():
    """timm's deit_tiny_distilled_patch16_224: class + distillation token, 14x14 patches."""
    import timm

    torch.manual_seed(0)
    return randomise_norms(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False))


@pytest.fixture(scope="module")
def register_vit():
    """timm's vit_small_patch14_reg4_dinov2 at 42x56: class + 4 register tokens, then a
    non-square 3x4 grid of 14x14 patches."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=(42, 56), num_classes=5)
    return randomise_norms(model)


# ---------------------------------------------------------------- binding to a model
def test_bound_transform_reads_prefix_and_grid(deit_distilled, register_vit):
    bound = vit_reshape_transform_for(deit_distilled)
    assert bound.keywords == {"num_prefix_tokens": 2, "height": 14, "width": 14}
    assert vit_reshape_transform_for(register_vit).keywords == {"num_prefix_tokens": 5, "height": 3, "width": 4}
    tokens = torch.arange(2 * (2 + 196) * 3, dtype=torch.float32).reshape(2, 198, 3)
    maps = bound(tokens)
    assert maps.shape == (2, 3, 14, 14)
    assert maps[1, 2, 13, 5] == tokens[1, 2 + 14 * 13 + 5, 2]
    np.testing.assert_array_equal(maps.numpy(), fold(2, 14, 14)(tokens).numpy())


def test_bound_transform_needs_a_timm_vit():
    with pytest.raises(ValueError, match=r"Linear has no integer num_prefix_tokens.*functools.partial\("):
        vit_reshape_transform_for(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam"])
def test_deit_distilled_maps_match_the_reference(method, deit_distilled):
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3)) * 2 - 1
    layer = deit_distilled.blocks[-1].norm1
    reference = reference_cam(method, deit_distilled, [layer], images, [7], transform=fold(2, 14, 14))
    assert reference.max() > 0.99 and reference.std() > 0.05
    cam = METHODS[method](deit_distilled, [layer], reshape_transform=vit_reshape_transform_for(deit_distilled))
    maps = cam(images, targets=[ClassifierOutputTarget(7)])
    assert maps.shape == (1, 224, 224)
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)


def test_deit_distilled_with_one_prefix_token_is_an_error_that_says_the_fix(deit_distilled):
    """The unbound transform drops only the class token: 197 tokens are left, which fill
    no grid; the error names num_prefix_tokens and the factory instead of drawing a map
    shifted by one token."""
    images = torch.zeros(1, 3, 224, 224)
    layer = deit_distilled.blocks[-1].norm1
    with pytest.raises(
        ValueError,
        match=r"197 tokens do not form a square grid.*num_prefix_tokens=.*"
        r"vit_reshape_transform_for\(model\)",
    ):
        GradCAM(deit_distilled, [layer], reshape_transform=vit_reshape_transform)(images)
    with pytest.raises(
        ValueError,
        match=r"a 14x14 grid holds 196 tokens, but the layer has 197.*"
        r"num_prefix_tokens=2 if the model has 1 more non-patch token",
    ):
        GradCAM(
            deit_distilled, [layer], reshape_transform=functools.partial(vit_reshape_transform, height=14, width=14)
        )(images)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam"])
def test_register_model_maps_match_the_reference(method, register_vit):
    images = torch.rand(2, 3, 42, 56, generator=torch.Generator().manual_seed(4)) * 2 - 1
    layer = register_vit.blocks[-1].norm1
    classes = [1, 3]
    reference = reference_cam(method, register_vit, [layer], images, classes, transform=fold(5, 3, 4))
    assert reference.max() > 0.99 and reference.std() > 0.05
    cam = METHODS[method](register_vit, [layer], reshape_transform=vit_reshape_transform_for(register_vit))
    maps = cam(images, targets=[ClassifierOutputTarget(c) for c in classes])
    assert maps.shape == (2, 42, 56)
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)


def test_register_model_with_one_prefix_token_is_an_error(register_vit):
    with pytest.raises(
        ValueError,
        match=r"a 3x4 grid holds 12 tokens, but the layer has 16 \(counted after "
        r"dropping num_prefix_tokens=1 .*num_prefix_tokens=5",
    ):
        GradCAM(
            register_vit,
            [register_vit.blocks[-1].norm1],
            reshape_transform=functools.partial(vit_reshape_transform, height=3, width=4),
        )(torch.zeros(1, 3, 42, 56))


def test_prefix_that_leaves_no_patches():
    with pytest.raises(ValueError, match=r"num_prefix_tokens=5 leaves no patch tokens of the layer's 5"):
        vit_reshape_transform(torch.zeros(1, 5, 3), num_prefix_tokens=5)


# ---------------------------------------------------------------- Swin and channels-first maps
@pytest.mark.parametrize("shape", [(1, 768, 7, 7), (2, 96, 56, 56), (1, 3, 5, 5)])
def test_swin_rejects_channels_first(shape):
    with pytest.raises(
        ValueError,
        match=r"got shape \(%s\), which looks like \(B, C, h, w\); it expects "
        r"\(B, h, w, C\) or \(B, h\*w, C\).*needs no reshape_transform" % r", ".join(map(str, shape)),
    ):
        swin_reshape_transform(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 7, 7, 768), (2, 56, 56, 96), (1, 6, 8, 4), (1, 4, 4, 4)])
def test_swin_accepts_channels_last(shape):
    tensor = torch.randn(shape)
    np.testing.assert_array_equal(swin_reshape_transform(tensor).numpy(), tensor.permute(0, 3, 1, 2).numpy())


def test_swin_on_a_cnn_layer_is_an_error_not_a_map():
    """A CNN layer (B, C, h, w) given swin_reshape_transform by mistake."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(ValueError, match=r"\(1, 512, 2, 2\), which looks like \(B, C, h, w\)"):
        GradCAM(model, [model.layer4[-1]], reshape_transform=swin_reshape_transform)(torch.zeros(1, 3, 64, 64))
