"""Every method's map equals an independent computation of SPEC.md's formula.

The reference (tests/cam_reference.py) captures activations and gradients on its
own (a leaf substituted for the layer output, ``torch.autograd.grad``), evaluates the
formulas in float64 numpy and resizes with OpenCV; the engine must agree to float
tolerance. The layers cover non-negative activations (after a ReLU) and signed
ones (a convolution's output), which exercise AblationCAM's min - 1e7 rule and the
sums of activations in GradCAM++/XGradCAM.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cam_reference import (
    RANDOM_SEED,
    capture,
    finish_layer,
    gradcam_weights,
    interpolation_matrix,
    min_max,
    pc_projection,
    reference_cam,
    resize_half_pixel,
    single_thread_module,  # noqa: F401 - autouse fixture
)
from pytorch_grad_cam import METHODS, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

# Maps lie in [0, 1]: 1e-5 is about 170 float32 ulps of 1 for sums over at most 32
# channels and 256 positions. Measured under AVX-512, AVX2 and scalar kernels on 1 and
# 2 threads: at most 1.2e-6 (8x inside).
ATOL = 1e-5
#: Every registered method: cam_reference holds SPEC.md's formulas and COMPAT.md's
#: (§3-§6: FullGrad, ShapleyCAM by double backward in float64, FinerCAM and RefineCAM
#: as compositions of their base methods' references).
SPEC_METHODS = sorted(METHODS)
CLASSES = [1, 3]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1


def engine_cam(method: str, model: nn.Module, layers, images: torch.Tensor, **kwargs) -> np.ndarray:
    cls = METHODS[method]
    extra = {"progress": False} if method in ("scorecam", "ablationcam") else {}
    cam = cls(model, target_layers=layers, **extra)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    torch.manual_seed(RANDOM_SEED)  # RandomCAM's draw, as the reference's
    return cam(images, targets=targets, **kwargs)


def assert_nontrivial(reference: np.ndarray) -> None:
    """A reference that is all zeros (or one constant) would make the comparison vacuous."""
    for image_map in reference:
        assert image_map.max() == pytest.approx(1.0, abs=1e-5)
        assert image_map.std() > 0.05


@pytest.mark.parametrize("layer_index, signed", [(-1, False), (-2, True)], ids=["relu", "conv"])
@pytest.mark.parametrize("method", SPEC_METHODS)
def test_map_matches_reference(method, layer_index, signed, small_cnn, images):
    layer = small_cnn.features[layer_index]
    activations, _, _ = capture(small_cnn, layer, images, CLASSES)
    assert (activations.min() < 0) == signed
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES)
    assert_nontrivial(reference)
    result = engine_cam(method, small_cnn, [layer], images)
    assert result.dtype == np.float32 and result.shape == (2, 32, 32)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:HiResCAM with eigen_smooth")
@pytest.mark.parametrize(
    "method",
    ["gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "ablationcam",
     "hirescam", "gradcamelementwise", "randomcam"],
)
def test_eigen_smooth_matches_reference(method, small_cnn, images):
    """eigen_smooth: the principal-component projection of w_k * A_k (of the element-wise
    maps for HiResCAM and GradCAMElementWise) replaces the sum."""
    layer = small_cnn.features[-2]
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES, eigen_smooth=True)
    assert_nontrivial(reference)
    plain = reference_cam(method, small_cnn, [layer], images, CLASSES)
    assert np.abs(reference - plain).max() > 0.05
    result = engine_cam(method, small_cnn, [layer], images, eigen_smooth=True)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_eigencam_ignores_eigen_smooth(small_cnn, images):
    layer = small_cnn.features[-1]
    plain = engine_cam("eigencam", small_cnn, [layer], images)
    smoothed = engine_cam("eigencam", small_cnn, [layer], images, eigen_smooth=True)
    np.testing.assert_allclose(smoothed, plain, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "eigencam", "scorecam", "ablationcam"])
def test_several_layers_mean_then_min_max(method, small_cnn, images):
    """Layers of different resolutions (32x32 and 16x16): per-layer maps, mean, min-max."""
    layers = [small_cnn.features[1], small_cnn.features[-1]]
    reference = reference_cam(method, small_cnn, layers, images, CLASSES)
    assert_nontrivial(reference)
    single = [reference_cam(method, small_cnn, [layer], images, CLASSES) for layer in layers]
    assert min(np.abs(reference - s).max() for s in single) > 0.05
    result = engine_cam(method, small_cnn, layers, images)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "eigencam"])
def test_odd_input_size_non_integer_resize(method, small_cnn):
    """29x43 input, 14x21 layer: resize factors that are not integers, both for the
    final half-pixel resize and for ScoreCAM's align-corners masks."""
    images = torch.rand(2, 3, 29, 43, generator=torch.Generator().manual_seed(8)) * 2 - 1
    layer = small_cnn.features[-2]
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES)
    assert_nontrivial(reference)
    result = engine_cam(method, small_cnn, [layer], images)
    assert result.shape == (2, 29, 43)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("size", [8, 12], ids=["16-positions", "36-positions"])
@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_principal_component_with_fewer_positions_than_channels(method, size, small_cnn):
    """The 32-channel layer at 4x4 or 6x6 has fewer positions than channels (the 16x16
    maps above have more): the projection must not depend on which is larger."""
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(12)) * 2 - 1
    layer = small_cnn.features[-2]
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES)
    assert_nontrivial(reference)
    result = engine_cam(method, small_cnn, [layer], images)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_final_min_max_applies_to_a_single_layer(small_cnn, images):
    """Every map ends in exactly [0, 1]: its minimum is 0 and its maximum 1 - O(1e-7)."""
    result = engine_cam("gradcam", small_cnn, [small_cnn.features[-1]], images)
    np.testing.assert_allclose(result.min(axis=(1, 2)), 0.0, atol=1e-7)
    np.testing.assert_allclose(result.max(axis=(1, 2)), 1.0, atol=1e-5)


def test_in_place_operation_after_the_layer_does_not_corrupt_the_map(resnet18):
    """ResNet's ``out += identity`` and ReLU(inplace=True) run on bn2's output: the
    recorded activations must still be bn2's own output."""
    layer = resnet18.layer3[-1].bn2
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    reference = reference_cam("gradcam", resnet18, [layer], images, CLASSES)
    assert_nontrivial(reference)
    result = GradCAM(resnet18, [layer])(images, targets=[ClassifierOutputTarget(c) for c in CLASSES])
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


class InPlaceResidualNet(nn.Module):
    """conv -> ReLU -> conv (the target) -> ``+= skip`` and ReLU, both in place."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.stem(x))
        out = self.conv(skip)
        out += skip
        torch.relu_(out)
        return self.fc(out.mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore:AblationCAM re-runs the whole model")  # the skip connection
@pytest.mark.parametrize("method", SPEC_METHODS)
def test_in_place_operations_after_the_layer_for_every_method(method):
    torch.manual_seed(4)
    model = InPlaceResidualNet().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    reference = reference_cam(method, model, [model.conv], images, CLASSES)
    assert_nontrivial(reference)
    result = engine_cam(method, model, [model.conv], images)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_volume_gradcam_matches_reference():
    """(B, C, D, H, W) input: GradCAM over a Conv3d layer, trilinear half-pixel resize."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv3d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()
    volume = torch.randn(2, 2, 6, 8, 10, generator=torch.Generator().manual_seed(1))
    layer = model[4]
    A, G, _ = capture(model, layer, volume, [0, 2])
    reference = np.stack([
        min_max(finish_layer((gradcam_weights(a, g)[:, None, None, None] * a).sum(0), (6, 8, 10)))
        for a, g in zip(A, G)
    ])
    assert_nontrivial(reference.reshape(2, 6, -1))
    result = GradCAM(model, [layer])(volume, targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
    assert result.shape == (2, 6, 8, 10)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- the reference itself
def test_reference_resize_agrees_with_its_two_implementations():
    """OpenCV's INTER_LINEAR and the explicit half-pixel matrix agree, so the 3D path
    (matrices) and the 2D path (OpenCV) of the reference are the same resize."""
    x = np.random.default_rng(0).random((5, 7))
    by_matrix = interpolation_matrix(5, 21, False) @ x @ interpolation_matrix(7, 32, False).T
    np.testing.assert_allclose(resize_half_pixel(x, (21, 32)), by_matrix, atol=1e-6)
    corners = interpolation_matrix(5, 21, True) @ x @ interpolation_matrix(7, 32, True).T
    np.testing.assert_allclose(corners[[0, -1]][:, [0, -1]], x[[0, -1]][:, [0, -1]])


def test_reference_projection_sign_rule():
    """The projection of a map with one strong blob is high on the blob, whichever
    sign the SVD returned."""
    rng = np.random.default_rng(1)
    maps = rng.random((6, 8, 8)) * 0.1
    maps[:, 2:4, 5:7] += rng.random((6, 1, 1)) + 1
    projection = pc_projection(maps)
    row, col = np.unravel_index(projection.argmax(), projection.shape)
    assert row in (2, 3) and col in (5, 6)
    assert projection[2:4, 5:7].min() > projection.mean() + 2 * projection.std()


# ---------------------------------------------------------------- the drop-in methods
#: The methods added for the drop-in (COMPAT.md §1); their maps on tokens and volumes
#: are checked here against the reference too.
DROP_IN_METHODS = ["hirescam", "gradcamelementwise", "randomcam", "fem", "kpcacam", "segeigencam"]


class PatchTokenNet(nn.Module):
    """A ViT-like token model: 8x8 patches of a 32x32 image (16 tokens) behind a class
    token, a per-token block (the target layer: (B, 17, 12) tokens), mean, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 8, stride=8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 12))
        self.block = nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 12))
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(nn.functional.gelu(self.block(tokens)).mean(dim=1))


def fold_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, 1 + 16, C) -> (B, C, 4, 4), the class token dropped (written independently
    of the library's vit_reshape_transform)."""
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("method", DROP_IN_METHODS)
def test_drop_in_methods_on_tokens_match_reference(method, images):
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    torch.manual_seed(3)
    model = PatchTokenNet().eval()
    layer = model.block
    reference = reference_cam(method, model, [layer], images, CLASSES, transform=fold_tokens)
    assert_nontrivial(reference)
    cam = METHODS[method](model, [layer], reshape_transform=vit_reshape_transform)
    torch.manual_seed(RANDOM_SEED)
    result = cam(images, targets=[ClassifierOutputTarget(c) for c in CLASSES])
    assert result.shape == (2, 32, 32)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", DROP_IN_METHODS)
def test_drop_in_methods_on_volumes_match_reference(method):
    """(B, C, D, H, W) input: the spatial reductions and projections run over D, H, W."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv3d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3),
    ).eval()
    volume = torch.randn(2, 2, 6, 8, 10, generator=torch.Generator().manual_seed(1))
    layer = model[4]
    classes = [0, 2]
    reference = reference_cam(method, model, [layer], volume, classes)
    assert_nontrivial(reference.reshape(2, 6, -1))
    torch.manual_seed(RANDOM_SEED)
    result = METHODS[method](model, [layer])(volume, targets=[ClassifierOutputTarget(c) for c in classes])
    assert result.shape == (2, 6, 8, 10)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_hirescam_eigen_smooth_warns_that_faithfulness_is_lost(small_cnn, images):
    with pytest.warns(UserWarning, match="HiResCAM with eigen_smooth=True: .* not a faithful"):
        engine_cam("hirescam", small_cnn, [small_cnn.features[-1]], images, eigen_smooth=True)


@pytest.mark.parametrize("method", ["fem", "kpcacam", "segeigencam"])
def test_drop_in_projections_ignore_eigen_smooth(method, small_cnn, images):
    layer = small_cnn.features[-2]
    plain = engine_cam(method, small_cnn, [layer], images)
    np.testing.assert_array_equal(engine_cam(method, small_cnn, [layer], images, eigen_smooth=True), plain)
