"""Transformers: the reshape transforms, and CAMs of ViT/DeiT and Swin layers.

Token activations are folded into (B, C, h, w) maps by ``reshape_transform``; the
maps must equal the same formulas computed on tokens captured and folded
independently in the test. Models: timm's DeiT-Tiny and Swin-Tiny at 224x224 with
random weights (nothing can be downloaded), and a two-block ViT small enough for
ScoreCAM and AblationCAM, which score one perturbed copy per channel.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from cam_reference import (  # noqa: F401 - single_thread_module: autouse fixture
    RANDOM_SEED,
    capture,
    finercam_reference,
    reference_cam,
    refinecam_reference,
    single_thread_module,
    weight_rounding_tolerance,
    xgradcam_weight_errors,
    xgradcam_weights,
)
from method_sets import CNN_METHODS

from pytorch_grad_cam import METHODS, FinerCAM, GradCAM, RefineCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform, vit_reshape_transform

# The maps lie in [0, 1]; the engine sums in float32 over up to 768 channels and 196
# tokens, in whatever order the CPU's kernels choose. 5e-5 is about 800 float32 ulps of
# 1: measured under AVX-512, AVX2 and scalar kernels on 1 and 2 threads, every map
# here except XGradCAM's on DeiT stays within 1e-6 of the float64 reference (50x).
ATOL = 5e-5


def numbered(*shape: int) -> torch.Tensor:
    return torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape)


# ---------------------------------------------------------------- reshape transforms
def test_vit_reshape_drops_the_class_token_and_infers_the_grid():
    tokens = numbered(2, 1 + 196, 5)
    maps = vit_reshape_transform(tokens)
    assert maps.shape == (2, 5, 14, 14)
    for b in range(2):
        for c in range(5):
            for i in range(14):
                for j in range(14):
                    assert maps[b, c, i, j] == tokens[b, 1 + 14 * i + j, c]


def test_vit_reshape_non_square_grid_and_prefix_tokens():
    tokens = numbered(1, 1 + 12 * 16, 3)
    for transform in (
        functools.partial(vit_reshape_transform, height=12, width=16),
        functools.partial(vit_reshape_transform, height=12),
        functools.partial(vit_reshape_transform, width=16),
    ):
        maps = transform(tokens)
        assert maps.shape == (1, 3, 12, 16)
        assert maps[0, 2, 5, 9] == tokens[0, 1 + 16 * 5 + 9, 2]
    distilled = numbered(1, 2 + 49, 3)  # class and distillation tokens
    maps = vit_reshape_transform(distilled, num_prefix_tokens=2)
    assert maps.shape == (1, 3, 7, 7) and maps[0, 1, 6, 0] == distilled[0, 2 + 42, 1]


def test_vit_reshape_errors():
    with pytest.raises(ValueError, match=r"195 tokens do not form a square grid; pass height= and width="):
        vit_reshape_transform(torch.zeros(1, 1 + 195, 4))
    with pytest.raises(ValueError, match=r"a 10x10 grid holds 100 tokens, but the layer has 196"):
        vit_reshape_transform(torch.zeros(1, 1 + 196, 4), height=10, width=10)
    with pytest.raises(ValueError, match=r"expects \(B, tokens, C\), got shape \(1, 4, 14, 14\)"):
        vit_reshape_transform(torch.zeros(1, 4, 14, 14))


def test_swin_reshape_of_maps_and_of_tokens():
    grid = numbered(2, 7, 7, 5)
    maps = swin_reshape_transform(grid)
    assert maps.shape == (2, 5, 7, 7)
    assert maps[1, 3, 2, 6] == grid[1, 2, 6, 3]
    tokens = grid.reshape(2, 49, 5)
    np.testing.assert_array_equal(swin_reshape_transform(tokens).numpy(), maps.numpy())
    wide = numbered(1, 6 * 8, 2)
    maps = swin_reshape_transform(wide, height=6)
    assert maps.shape == (1, 2, 6, 8) and maps[0, 1, 4, 3] == wide[0, 8 * 4 + 3, 1]


def test_swin_reshape_errors():
    with pytest.raises(ValueError, match=r"50 tokens do not form a square grid; pass height= and width="):
        swin_reshape_transform(torch.zeros(1, 50, 4))
    with pytest.raises(ValueError, match=r"expects \(B, h, w, C\) or \(B, tokens, C\)"):
        swin_reshape_transform(torch.zeros(3, 4))


# ---------------------------------------------------------------- DeiT-Tiny
def fold_vit(tokens: torch.Tensor) -> torch.Tensor:
    """The test's own fold: drop token 0, row-major 14x14 grid, channels first."""
    batch, count, channels = tokens.shape
    side = int(round((count - 1) ** 0.5))
    return torch.stack([tokens[:, 1 + i * side : 1 + (i + 1) * side, :] for i in range(side)], dim=1).permute(
        0, 3, 1, 2
    )


@pytest.fixture(scope="module")
def images_224() -> torch.Tensor:
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(9)) * 2 - 1


# EigenCAM is left out here: with timm's initial LayerNorm (weight 1, bias 0) every
# token of norm1's output sums to zero over the channels, so the sign rule (docs/decisions.md, G18) (agree
# with the channel sum) has nothing to go by and the sign is rounding noise. The
# small ViT below, whose norms are randomised, checks EigenCAM on tokens.
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "eigengradcam"])
def test_deit_maps_match_the_reference(method, deit_tiny, images_224):
    layer = deit_tiny.blocks[-1].norm1
    classes = [3, 917]
    reference = reference_cam(method, deit_tiny, [layer], images_224, classes, transform=fold_vit)
    assert reference.max() > 0.99 and reference.std() > 0.05
    maps = METHODS[method](deit_tiny, [layer], reshape_transform=vit_reshape_transform)(
        images_224, targets=[ClassifierOutputTarget(c) for c in classes]
    )
    assert maps.shape == (2, 224, 224) and np.isfinite(maps).all()
    tolerances = deit_tolerances(method, deit_tiny, layer, images_224, classes)
    for image_maps, image_reference, tolerance in zip(maps, reference, tolerances):
        np.testing.assert_allclose(image_maps, image_reference, atol=tolerance, rtol=0)


def deit_tolerances(method, model, layer, images, classes) -> list:
    """ATOL per image, except for XGradCAM: it divides by sum_ij A_k, which on a
    LayerNorm output nearly cancels for some channels (|sum A| = 0.006 against
    sum |A| = 164 for one channel of image 1: condition number 3e4), so its weights carry
    float32 rounding errors that no summation order avoids. Its tolerance is how far
    that rounding can move the finished map (cam_reference.weight_rounding_tolerance),
    doubled: measured, the engine stays 26x or more inside it on every kernel dispatch. It must
    stay far below a formula error (which moves the map by ~0.1)."""
    if method != "xgradcam":
        return [ATOL] * len(images)
    activations, grads, _ = capture(model, layer, images, classes, fold_vit)
    tolerances = [
        max(ATOL, 2 * weight_rounding_tolerance(a, xgradcam_weights(a, g), xgradcam_weight_errors(a, g), (224, 224)))
        for a, g in zip(activations, grads)
    ]
    assert max(tolerances) < 0.01, tolerances
    return tolerances


def test_deit_last_block_output_has_no_gradient(deit_tiny, images_224):
    """docs/transformers.md's warning: the last block's patch tokens never reach the class
    token, so their gradient, and every gradient map there, is exactly zero."""
    maps = GradCAM(deit_tiny, [deit_tiny.blocks[-1]], reshape_transform=vit_reshape_transform)(images_224[:1])
    np.testing.assert_array_equal(maps, 0.0)


def test_deit_without_reshape_transform_gets_the_models_own(deit_tiny, images_224):
    """The (1, 197, 192) tokens of a layer given without a transform are folded by the one
    read from the model (a warning says so): the map of vit_reshape_transform."""
    layer = deit_tiny.blocks[-1].norm1
    with pytest.warns(UserWarning, match="output tokens of the model's patch grid"):
        automatic = GradCAM(deit_tiny, [layer])(images_224[:1])
    by_hand = GradCAM(deit_tiny, [layer], reshape_transform=vit_reshape_transform)(images_224[:1])
    np.testing.assert_allclose(automatic, by_hand, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- Swin-Tiny
@pytest.mark.parametrize(
    "layer_name, fold",
    [
        ("layers.3.blocks.1.norm1", lambda t: t.permute(0, 3, 1, 2)),  # (B, 7, 7, 768)
        ("layers.3.blocks.1.norm2", lambda t: t.reshape(t.shape[0], 7, 7, -1).permute(0, 3, 1, 2)),  # (B, 49, 768)
    ],
    ids=["norm1-maps", "norm2-tokens"],
)
def test_swin_gradcam_matches_the_reference(layer_name, fold, swin_tiny, images_224):
    layer = swin_tiny.get_submodule(layer_name)
    classes = [281]
    reference = reference_cam("gradcam", swin_tiny, [layer], images_224[:1], classes, transform=fold)
    assert reference.max() > 0.99 and reference.std() > 0.05
    maps = GradCAM(swin_tiny, [layer_name], reshape_transform=swin_reshape_transform)(
        images_224[:1], target_category=281
    )
    assert maps.shape == (1, 224, 224) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- every method on a small ViT
@pytest.fixture(scope="module")
def small_vit():
    """Two blocks, 32x32 input in 8x8 patches: 1 + 16 tokens of 24 channels."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(1)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5)
    with torch.no_grad():  # norms as after training, not the initial weight 1 / bias 0
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    return model.eval()


def ablate_vit_channels(raw_output: torch.Tensor, value: float) -> torch.Tensor:
    """Channel k of the folded map is feature k of every patch token (not the class token)."""
    channels = raw_output.shape[2]
    ablated = raw_output.repeat(channels, 1, 1)
    for k in range(channels):
        ablated[k, 1:, k] = value
    return ablated


#: FinerCAM and RefineCAM wrap a base method: with given targets and one layer they
#: would repeat GradCAM's and GradCAM++'s checks; their own references are below.
WRAPPERS = {"finercam", "refinecam"}
#: torchcam's extra methods: their references (noise draws, path steps, the classifier's
#: rows) are in tests/test_torchcam_methods.py.
TORCHCAM_EXTRAS = {"cam", "smoothgradcam++", "sscam", "iscam"}


@pytest.mark.parametrize("method", sorted(set(CNN_METHODS) - WRAPPERS - TORCHCAM_EXTRAS))
def test_small_vit_maps_match_the_reference(method, small_vit):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    layer = small_vit.blocks[-1].norm1
    classes = [1, 4]
    # norm1's output goes into the attention's Linear layers: AblationCAM ablates to 0 there.
    reference = reference_cam(
        method,
        small_vit,
        [layer],
        images,
        classes,
        transform=fold_vit,
        ablate=lambda raw_output, value: ablate_vit_channels(raw_output, 0.0),
        switched_off=False,
    )
    assert reference.max() > 0.99 and reference.std() > 0.05
    extra = {"progress": False} if method in ("scorecam", "ablationcam") else {}
    cam = METHODS[method](small_vit, [layer], reshape_transform=vit_reshape_transform, **extra)
    # norm1 sits inside a residual branch: AblationCAM's tail takes the residual from
    # the traced head, so it needs no whole-model fallback (which would warn).
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        torch.manual_seed(RANDOM_SEED)  # RandomCAM's draw, as the reference's
        maps = cam(images, targets=[ClassifierOutputTarget(c) for c in classes])
    assert maps.shape == (2, 32, 32)
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)


def test_small_vit_finercam_and_refinecam_match_their_references(small_vit):
    """FinerCAM's default target (the top class against the 2nd-4th closest logits,
    alpha = 1, by hand in float64) and RefineCAM's product of the GradCAM++ maps of
    both blocks' norm1, on folded tokens."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    layer = small_vit.blocks[-1].norm1
    reference, _ = finercam_reference(small_vit, [layer], images, transform=fold_vit)
    assert reference.max() > 0.99 and reference.std() > 0.05
    maps = FinerCAM(small_vit, [layer], reshape_transform=vit_reshape_transform)(images)
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)

    layers = [small_vit.blocks[0].norm1, small_vit.blocks[-1].norm1]
    classes = [1, 4]
    reference = refinecam_reference(small_vit, layers, images, classes, transform=fold_vit)
    assert reference.max() > 0.99 and reference.std() > 0.05
    maps = RefineCAM(small_vit, layers, reshape_transform=vit_reshape_transform)(
        images, [ClassifierOutputTarget(c) for c in classes]
    )
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)
