"""Every method's map equals an independent computation of its formula.

The reference (tests/cam_reference.py) captures activations and gradients on its
own (a leaf substituted for the layer output, ``torch.autograd.grad``), evaluates the
formulas in float64 numpy and resizes with OpenCV; the engine must agree to float
tolerance. The layers cover non-negative activations (after a ReLU) and signed
ones (a convolution's output), which exercise AblationCAM's ablation value and the
sums of activations in GradCAM++/XGradCAM. FinerCAM (its default, contrastive
target) and RefineCAM (the product over two or more layers) have references of
their own, not their base methods'.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cam_reference import (
    RANDOM_SEED,
    capture,
    capture_score,
    finer_score,
    finercam_reference,
    finish_layer,
    gradcam_weights,
    interpolation_matrix,
    min_max,
    pc_projection,
    reference_cam,
    refinecam_reference,
    resize_half_pixel,
    single_thread_module,  # noqa: F401 - autouse fixture
    weighted_map,
)
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, FinerCAM, GradCAM, RefineCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget

# Maps lie in [0, 1]: 1e-5 is about 170 float32 ulps of 1 for sums over at most 32
# channels and 256 positions. Measured under AVX-512, AVX2 and scalar kernels on 1 and
# 2 threads: at most 1.2e-6 (8x inside); AblationCAM against ablated scores computed in
# float64 (FinerCAM's target too): at most 2.4e-6 (4x inside).
ATOL = 1e-5
#: Every registered method (ShapleyCAM's reference by double backward in float64) but
#: the two that wrap a base method: FinerCAM with given targets and RefineCAM on one
#: layer would repeat GradCAM's and GradCAM++'s checks; their own references are
#: checked below. torchcam's extra methods (noise draws, path steps) have theirs in
#: tests/test_torchcam_methods.py.
TORCHCAM_EXTRAS = {"cam", "smoothgradcam++", "sscam", "iscam"}
FORMULA_METHODS = sorted(set(CNN_METHODS) - {"finercam", "refinecam"} - TORCHCAM_EXTRAS)
CLASSES = [1, 3]
#: Whether every use of a small_cnn layer's output reaches a ReLU-like activation
#: through element-wise steps (AblationCAM's ablation value), by construction:
#: features = conv, ReLU, maxpool, conv, ReLU, conv, ReLU, then pool and Linear.
SMALL_CNN_SWITCHED_OFF = {0: True, 1: False, 2: False, 3: True, 4: False, 5: True, 6: False}


def switched_off(layer_index: int) -> bool:
    """SMALL_CNN_SWITCHED_OFF for an index into small_cnn.features (negative ones too)."""
    return SMALL_CNN_SWITCHED_OFF[layer_index % 7]


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
@pytest.mark.parametrize("method", FORMULA_METHODS)
def test_map_matches_reference(method, layer_index, signed, small_cnn, images):
    layer = small_cnn.features[layer_index]
    activations, _, _ = capture(small_cnn, layer, images, CLASSES)
    assert (activations.min() < 0) == signed
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES, switched_off=switched_off(layer_index))
    assert_nontrivial(reference)
    result = engine_cam(method, small_cnn, [layer], images)
    assert result.dtype == np.float32 and result.shape == (2, 32, 32)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:HiResCAM with eigen_smooth")
@pytest.mark.parametrize(
    "method",
    [
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "scorecam",
        "ablationcam",
        "hirescam",
        "gradcamelementwise",
        "randomcam",
    ],
)
def test_eigen_smooth_matches_reference(method, small_cnn, images):
    """eigen_smooth: the principal-component projection of w_k * A_k (of the element-wise
    maps for HiResCAM and GradCAMElementWise) replaces the sum."""
    layer = small_cnn.features[-2]
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES, eigen_smooth=True, switched_off=True)
    assert_nontrivial(reference)
    plain = reference_cam(method, small_cnn, [layer], images, CLASSES, switched_off=True)
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
    layers = [small_cnn.features[1], small_cnn.features[-1]]  # ReLU outputs: never signed
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
    reference = reference_cam(method, small_cnn, [layer], images, CLASSES, switched_off=True)
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
@pytest.mark.parametrize("method", FORMULA_METHODS)
def test_in_place_operations_after_the_layer_for_every_method(method):
    torch.manual_seed(4)
    model = InPlaceResidualNet().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    # conv's output goes through ``+= skip`` into relu_: a ReLU switches it off.
    reference = reference_cam(method, model, [model.conv], images, CLASSES, switched_off=True)
    assert_nontrivial(reference)
    result = engine_cam(method, model, [model.conv], images)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_volume_gradcam_matches_reference():
    """(B, C, D, H, W) input: GradCAM over a Conv3d layer, trilinear half-pixel resize."""
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv3d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    volume = torch.randn(2, 2, 6, 8, 10, generator=torch.Generator().manual_seed(1))
    layer = model[4]
    A, G, _ = capture(model, layer, volume, [0, 2])
    reference = np.stack(
        [
            min_max(finish_layer((gradcam_weights(a, g)[:, None, None, None] * a).sum(0), (6, 8, 10)))
            for a, g in zip(A, G)
        ]
    )
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
#: The methods added for the drop-in (docs/decisions.md, G18); their maps on tokens and volumes
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
        nn.Conv3d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
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


# ---------------------------------------------------------------- FinerCAM
@pytest.fixture(scope="module")
def ten_class_cnn(small_cnn) -> nn.Module:
    """small_cnn's architecture with 10 classes: FinerCAM's default ranks 1, 2, 3 then
    pick 3 of 9 other classes, so the choice of the similar classes is exercised."""
    torch.manual_seed(1)
    return type(small_cnn)(classes=10).eval()


def assert_differs(a: np.ndarray, b: np.ndarray, by: float = 0.05) -> None:
    """The property the test checks shows in its maps: a wrong library would be caught."""
    assert np.abs(a - b).max() > by


@pytest.mark.parametrize("layer_index", [-1, -2], ids=["relu", "conv"])
def test_finercam_default_target_matches_reference(layer_index, ten_class_cnn, images):
    """targets=None, alpha = 1: GradCAM's map of the gradient of
    sum_j p_j (z_main - z_j) / sum_j p_j, main = the top class, j = the classes whose
    logits are 2nd, 3rd and 4th closest to it, computed in float64 by hand."""
    layer = ten_class_cnn.features[layer_index]
    reference, chosen = finercam_reference(ten_class_cnn, [layer], images)
    assert_nontrivial(reference)
    logits = ten_class_cnn(images).detach()
    assert [main for main, _ in chosen] == logits.argmax(1).tolist()
    # The ranks are positions in the order, not class ids 1, 2, 3, and the comparison
    # classes matter (alpha = 0 would explain the main class alone).
    assert any(others != [1, 2, 3] for _, others in chosen)
    main_only = reference_cam("gradcam", ten_class_cnn, [layer], images, [main for main, _ in chosen])
    assert_differs(reference, main_only)
    result = FinerCAM(ten_class_cnn, [layer])(images)
    assert result.dtype == np.float32 and result.shape == (2, 32, 32)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "alpha, ranks, target_idx",
    [(0.5, (1, 2), None), (1.0, (2, 5), 4), (0.8, (1, 12), None)],
    ids=["alpha-0.5", "target_idx-4", "rank-past-the-last-class"],
)
def test_finercam_options_and_two_layers_match_reference(alpha, ranks, target_idx, ten_class_cnn, images):
    """alpha, comparison_categories (ranks; 12 is past the 10 classes and dropped) and
    target_idx (the order by |z - z[4]|, class 4 the main one), on two layers of
    different resolutions (the mean of their maps, min-max)."""
    layers = [ten_class_cnn.features[1], ten_class_cnn.features[-2]]
    reference, _ = finercam_reference(ten_class_cnn, layers, images, alpha, ranks, target_idx)
    assert_nontrivial(reference)
    default, _ = finercam_reference(ten_class_cnn, layers, images)
    assert_differs(reference, default)
    result = FinerCAM(ten_class_cnn, layers)(images, alpha=alpha, comparison_categories=ranks, target_idx=target_idx)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_finercam_given_targets_are_explained_as_given(ten_class_cnn, images):
    """Given targets, alpha and the ranks are ignored: a FinerWeightedTarget of chosen
    classes gives the reference map of those classes."""
    layer = ten_class_cnn.features[-2]
    chosen = [(0, [9]), (6, [0, 9, 3])]
    reference, _ = finercam_reference(ten_class_cnn, [layer], images)  # the default choice
    A, G, _ = capture_score(ten_class_cnn, layer, images, lambda z: finer_score(z, chosen, 0.7))
    expected = np.stack(
        [min_max(finish_layer(weighted_map(gradcam_weights(a, g), a, False), (32, 32))) for a, g in zip(A, G)]
    )
    assert_nontrivial(expected)
    assert_differs(expected, reference)
    targets = [FinerWeightedTarget(main, others, 0.7) for main, others in chosen]
    result = FinerCAM(ten_class_cnn, [layer])(images, targets, alpha=0.1, comparison_categories=(1,))
    np.testing.assert_allclose(result, expected, atol=ATOL, rtol=0)


def test_finercam_in_place_operations_after_the_layer():
    """``+= skip`` and relu_ after the layer: the default target's map as the reference's."""
    torch.manual_seed(4)
    model = InPlaceResidualNet().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    reference, _ = finercam_reference(model, [model.conv], images, ranks=(1, 2))
    assert_nontrivial(reference)
    result = FinerCAM(model, [model.conv])(images, comparison_categories=(1, 2))
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- RefineCAM
REFINE_LAYERS = {
    "relu32-relu16": (1, -1),
    "relu32-conv16": (1, -2),
    "three-layers": (0, 3, -1),
}


@pytest.mark.parametrize("eigen_smooth", [False, True], ids=["plain", "eigen_smooth"])
@pytest.mark.parametrize("layers", list(REFINE_LAYERS))
def test_refinecam_is_the_product_of_per_layer_gradcam_plus_plus_maps(layers, eigen_smooth, small_cnn, images):
    """minmax(prod_l minmax(M_l)), M_l GradCAM++'s map of layer l alone, from the
    formulas; layers of 32x32 and 16x16, signed and not. Not the mean of the maps
    (several layers of the other methods)."""
    layers = [small_cnn.features[i] for i in REFINE_LAYERS[layers]]
    reference = refinecam_reference(small_cnn, layers, images, CLASSES, eigen_smooth)
    assert_nontrivial(reference)
    mean = reference_cam("gradcam++", small_cnn, layers, images, CLASSES, eigen_smooth)
    assert_differs(reference, mean)
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    result = RefineCAM(small_cnn, layers)(images, targets, eigen_smooth=eigen_smooth)
    assert result.dtype == np.float32 and result.shape == (2, 32, 32)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_refinecam_in_place_operations_after_the_layers():
    """``+= skip`` and relu_ after one of the layers: the product as the reference's."""
    torch.manual_seed(4)
    model = InPlaceResidualNet().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    reference = refinecam_reference(model, [model.stem, model.conv], images, CLASSES)
    assert_nontrivial(reference)
    result = RefineCAM(model, [model.stem, model.conv])(images, [ClassifierOutputTarget(c) for c in CLASSES])
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- AblationCAM's ablation value
class UsesNet(nn.Module):
    """conv1, ReLU, ``target`` (a convolution: signed output), then ``uses`` decides
    where the target's output goes (the flag: whether every use reaches a ReLU-like
    activation through element-wise steps only - adding a tensor or a constant,
    pooling, reshaping - by construction)."""

    USES = {
        "relu-after-residual": True,  # relu(target + skip)
        "gelu-after-maxpool-and-shift": True,  # gelu(maxpool(target) - 0.5)
        "sigmoid-gate": True,  # skip * sigmoid(target + 1)
        "conv": False,  # relu(conv(target))
        "relu-and-conv": False,  # relu(target) + conv(target): one use is a convolution
        "pool-linear": False,  # the head: mean then Linear, no activation
    }

    def __init__(self, uses: str) -> None:
        super().__init__()
        self.uses = uses
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.target = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.conv1(x))
        a = self.target(skip)
        if self.uses == "relu-after-residual":
            h = torch.relu(a + skip)
        elif self.uses == "gelu-after-maxpool-and-shift":
            h = nn.functional.gelu(nn.functional.max_pool2d(a, 2) - 0.5)
        elif self.uses == "sigmoid-gate":
            h = skip * torch.sigmoid(a + 1)
        elif self.uses == "conv":
            h = torch.relu(self.conv3(a))
        elif self.uses == "relu-and-conv":
            h = torch.relu(a) + self.conv3(a)
        else:
            h = a
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("uses", list(UsesNet.USES))
def test_ablationcam_value_follows_the_uses_of_the_layer_output(uses):
    """An ablated channel is min(A) - 1e7 where every use of the signed layer output
    reaches a ReLU-like activation, 0 otherwise; the reference ablates by a hook on a
    float64 copy, the flag stated here by construction. The other value gives another
    map on each of these models, so a wrong rule fails."""
    torch.manual_seed(8)
    model = UsesNet(uses).eval()
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(9)) * 2 - 1
    flag = UsesNet.USES[uses]
    activations, _, _ = capture(model, model.target, images, CLASSES)
    assert activations.min() < 0
    reference = reference_cam("ablationcam", model, [model.target], images, CLASSES, switched_off=flag)
    assert_nontrivial(reference)
    other = reference_cam("ablationcam", model, [model.target], images, CLASSES, switched_off=not flag)
    assert_differs(reference, other)
    result = engine_cam("ablationcam", model, [model.target], images)
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)
