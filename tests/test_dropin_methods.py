"""The drop-in additions' utilities and targets,
each against a computation by hand: kernel PCA for every kernel, the projections'
input handling, sobel_cam, find_layers, the new targets, and
scale_accross_batch_and_channels. The methods' maps are checked in test_formulas.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from cam_reference import (
    capture,
    finish_layer,
    kernel_pca_projection,
    min_max,
    pc_projection,
    sign_corrected_projection,
    single_thread_module,  # noqa: F401 - autouse fixture
)
from torch import nn

from pytorch_grad_cam import FEM, KPCA_CAM, RandomCAM
from pytorch_grad_cam.sobel_cam import sobel_cam
from pytorch_grad_cam.utils.find_layers import (
    find_layer_predicate_recursive,
    find_layer_types_recursive,
    replace_all_layer_type_recursive,
    replace_layer_recursive,
)
from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputReST,
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    FinerWeightedTarget,
    RawScoresOutputTarget,
    SoftmaxOutputTarget,
)
from pytorch_grad_cam.utils.svd_on_activations import (
    KERNELS,
    get_2d_projection,
    get_2d_projection_kernel,
    get_2d_projection_with_sign_correction,
)

PROJECTIONS = [get_2d_projection, get_2d_projection_kernel, get_2d_projection_with_sign_correction]


def activations(seed: int = 0, shape=(2, 6, 5, 7)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32) + rng.random(shape).astype(np.float32) * 2


# ---------------------------------------------------------------- projections
@pytest.mark.parametrize("gamma", [None, 0.3])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_projection_is_kernel_pca_up_to_sign(kernel, gamma):
    """Against kernel PCA written out by hand in float64 numpy; also 3-D maps."""
    for shape in ((2, 6, 5, 7), (1, 4, 3, 4, 5)):
        acts = activations(1, shape)
        result = get_2d_projection_kernel(acts, kernel, gamma)
        assert isinstance(result, np.ndarray) and result.dtype == np.float32
        assert result.shape == (shape[0], *shape[2:])
        for got, a in zip(result, acts):
            expected = kernel_pca_projection(a.astype(np.float64), kernel, gamma)
            assert np.abs(expected).max() > 1e-3  # not a vacuous comparison
            error = min(np.abs(got - expected).max(), np.abs(got + expected).max())
            assert error < 1e-5 * max(1.0, np.abs(expected).max()), (kernel, error)
            # The sign rule itself: the largest-magnitude entry is positive.
            assert got.flat[np.abs(got).argmax()] > 0


def test_sign_corrected_projection_matches_reference():
    acts = activations(2)
    result = get_2d_projection_with_sign_correction(acts)
    for got, a in zip(result, acts):
        np.testing.assert_allclose(got, sign_corrected_projection(a.astype(np.float64)), atol=1e-5)
        assert abs(got.max()) >= abs(got.min())
    # The plain projection follows the channel-sum rule, this one the magnitude rule.
    np.testing.assert_allclose(np.abs(result), np.abs(get_2d_projection(acts)), atol=1e-5)
    np.testing.assert_allclose(get_2d_projection(acts)[0], pc_projection(acts[0].astype(np.float64)), atol=1e-5)


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda f: f.__name__)
def test_projections_never_write_their_input_and_return_its_kind(projection):
    array = activations(3)
    array[0, 1, 2, 3] = np.nan
    original = array.copy()
    result = projection(array)
    np.testing.assert_array_equal(array, original)  # NaN stays NaN in the caller's array
    assert isinstance(result, np.ndarray) and result.dtype == np.float32 and np.isfinite(result).all()

    read_only = original.copy()
    read_only.setflags(write=False)
    np.testing.assert_array_equal(projection(read_only), result)

    as_float64 = original.astype(np.float64)
    assert projection(as_float64).dtype == np.float32

    tensor = torch.from_numpy(original.copy())
    kept = tensor.clone()
    from_tensor = projection(tensor)
    assert torch.is_tensor(from_tensor) and from_tensor.dtype == torch.float32
    assert torch.equal(torch.nan_to_num(tensor, nan=-1.0), torch.nan_to_num(kept, nan=-1.0))
    np.testing.assert_allclose(from_tensor.numpy(), result, atol=1e-6)


def test_nan_is_treated_as_zero():
    acts = activations(4)
    with_nan = acts.copy()
    with_nan[1, 2, 0, 0] = np.nan
    zeroed = acts.copy()
    zeroed[1, 2, 0, 0] = 0
    for projection in PROJECTIONS:
        np.testing.assert_allclose(projection(with_nan), projection(zeroed), atol=1e-6)


def test_unknown_kernel_is_an_error(small_cnn):
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'; choose one of linear, poly, rbf, sigmoid, cosine"):
        get_2d_projection_kernel(activations(), kernel="gauss")
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'"):
        KPCA_CAM(small_cnn, [small_cnn.features[-1]], kernel="gauss")


def test_kpca_cam_options_reach_the_projection(small_cnn):
    """kernel and gamma (positional after reshape_transform, as in the reference) give
    the kernel PCA map of that kernel."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = small_cnn.features[-2]
    A, _, _ = capture(small_cnn, layer, x, [0, 0])
    for kernel, gamma in (("rbf", 0.05), ("poly", None), ("cosine", None)):
        expected = np.stack([min_max(finish_layer(kernel_pca_projection(a, kernel, gamma), (32, 32))) for a in A])
        np.testing.assert_allclose(KPCA_CAM(small_cnn, [layer], None, kernel, gamma)(x), expected, atol=1e-5)


def test_fem_k_changes_the_map(small_cnn):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    layer = [small_cnn.features[-2]]
    assert np.abs(FEM(small_cnn, layer)(x) - FEM(small_cnn, layer, None, 1)(x)).max() > 0.05
    with pytest.raises(TypeError, match="k must be a number of standard deviations"):
        FEM(small_cnn, layer, k="2")


def test_random_cam_is_seedable_and_ignores_the_target(small_cnn):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cam = RandomCAM(small_cnn, [small_cnn.features[-2]])
    torch.manual_seed(5)
    first = cam(x, target_category=0)
    torch.manual_seed(5)
    np.testing.assert_array_equal(cam(x, target_category=3), first)
    assert np.abs(cam(x, target_category=0) - first).max() > 0.05  # a new draw per call


# ---------------------------------------------------------------- sobel_cam
def test_sobel_cam_equals_a_computation_by_hand():
    """OpenCV's gray, then the 3x3 Sobel kernels by hand on reflect-101 borders, |.|
    rounded and saturated, and the rounded mean of the two."""
    from skimage import data

    img = data.astronaut()[100:160, 200:290]
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)
    padded = np.pad(gray, 1, mode="reflect")  # numpy's "reflect" is OpenCV's reflect-101
    smooth, diff = np.array([1, 2, 1.0]), np.array([-1, 0, 1.0])
    kernel_x, kernel_y = np.outer(smooth, diff), np.outer(diff, smooth)
    height, width = gray.shape
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))[:height, :width]
    grad_x = np.einsum("hwij,ij->hw", windows, kernel_x)
    grad_y = np.einsum("hwij,ij->hw", windows, kernel_y)
    abs_x = np.clip(np.round(np.abs(grad_x)), 0, 255)
    abs_y = np.clip(np.round(np.abs(grad_y)), 0, 255)
    expected = np.clip(np.round(0.5 * abs_x + 0.5 * abs_y), 0, 255).astype(np.uint8)
    result = sobel_cam(img)
    assert result.dtype == np.uint8 and result.shape == (60, 90)
    assert (abs_x == 255).any() and (abs_x < 255).any()  # saturation is exercised
    np.testing.assert_array_equal(result, expected)


def test_sobel_cam_wants_a_uint8_rgb_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8 RGB image.*np\.uint8\(255 \* img\)"):
        sobel_cam(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"got shape \(8, 8\)"):
        sobel_cam(np.zeros((8, 8), np.uint8))


# ---------------------------------------------------------------- find_layers
class Tree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Sequential(nn.ReLU6(), nn.Conv2d(2, 2, 1)))
        self.second = nn.Linear(2, 2)
        self.third = nn.ReLU()


def test_replace_layer_recursive_replaces_the_first_identical_child():
    tree = Tree()
    old, new = tree.first[2][1], nn.Identity()
    assert replace_layer_recursive(tree, old, new) is True
    assert tree.first[2][1] is new
    assert replace_layer_recursive(tree, old, nn.Identity()) is False  # not inside any more
    stranger = nn.Linear(2, 2)  # equal type and shape, another object
    assert replace_layer_recursive(tree, stranger, nn.Identity()) is False
    assert isinstance(tree.second, nn.Linear)


def test_replace_all_layer_type_uses_isinstance_and_one_shared_instance():
    tree = Tree()
    shared = nn.Identity()
    replace_all_layer_type_recursive(tree, nn.ReLU, shared)
    assert tree.first[1] is shared and tree.third is shared
    assert isinstance(tree.first[2][0], nn.ReLU6)  # ReLU6 is not a subclass of ReLU


def test_find_layer_types_is_an_exact_type_match_in_pre_order():
    tree = Tree()
    convs = find_layer_types_recursive(tree, [nn.Conv2d])
    assert convs == [tree.first[0], tree.first[2][1]]
    assert find_layer_types_recursive(tree, [nn.ReLU]) == [tree.first[1], tree.third]

    class MyConv(nn.Conv2d):
        pass

    tree.second = MyConv(1, 1, 1)
    assert tree.second not in find_layer_types_recursive(tree, [nn.Conv2d])


def test_find_layer_predicate_is_pre_order_without_the_root_and_keeps_duplicates():
    tree = Tree()
    everything = find_layer_predicate_recursive(tree, lambda layer: True)
    assert tree not in everything
    assert everything == [
        tree.first,
        tree.first[0],
        tree.first[1],
        tree.first[2],
        tree.first[2][0],
        tree.first[2][1],
        tree.second,
        tree.third,
    ]
    shared = nn.ReLU()
    tree.third, tree.second = shared, shared  # one module under two names
    assert find_layer_predicate_recursive(tree, lambda layer: layer is shared) == [shared, shared]


# ---------------------------------------------------------------- targets
def test_rest_target_per_image_and_per_row():
    z = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)
    expected = 2 * 2.0 - np.log(np.exp(z.numpy()).sum())
    assert ClassifierOutputReST(2)(z).item() == pytest.approx(expected, abs=1e-12)
    # z_c minus the cross-entropy of z for c, as its definition.
    cross_entropy = nn.functional.cross_entropy(z[None], torch.tensor([2]))
    assert ClassifierOutputReST(2)(z).item() == pytest.approx((z[2] - cross_entropy).item(), abs=1e-12)
    rows = torch.tensor([[1.0, -0.5, 2.0, 0.25], [0.0, 3.0, -1.0, 1.0]], dtype=torch.float64)
    per_row = ClassifierOutputReST(1)(rows)
    assert per_row.shape == (2,)
    for row, score in zip(rows, per_row):  # each row on its own, not coupled by a batch mean
        assert score.item() == pytest.approx(ClassifierOutputReST(1)(row).item(), abs=1e-12)
    with pytest.raises(IndexError, match="class index 4 is outside the model output of 4 classes"):
        ClassifierOutputReST(4)(z)


def test_softmax_and_raw_scores_targets_return_vectors():
    z = torch.tensor([[0.5, 1.5, -1.0]])
    np.testing.assert_allclose(SoftmaxOutputTarget()(z).numpy(), np.exp(z.numpy()) / np.exp(z.numpy()).sum(), atol=1e-7)
    assert RawScoresOutputTarget()(z) is z


def detections(boxes, labels, scores, dtype=torch.float32) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=dtype).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=dtype),
    }


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_faster_rcnn_box_score_target_by_hand():
    predicted = [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 8]]
    output = detections(predicted, [1, 2, 3], [0.9, 0.8, 0.7], dtype=torch.float64)
    references = [[0, 0, 10, 9], [21, 20, 30, 30], [0, 0, 10, 7.5]]
    # box 0 best matches prediction 0 (label 1: counted); box 1 prediction 1 (label 2:
    # counted); box 2 best matches prediction 2 but asks for label 1: not counted.
    target = FasterRCNNBoxScoreTarget([1, 2, 1], references)
    expected = iou(references[0], predicted[0]) + 0.9 + iou(references[1], predicted[1]) + 0.8
    result = target(output)
    assert result.shape == (1,) and result.dtype == torch.float64 and result.device.type == "cpu"
    assert result.item() == pytest.approx(expected, abs=1e-12)


def test_faster_rcnn_box_score_target_threshold_is_strict():
    output = detections([[0, 0, 10, 10]], [1], [0.25])
    exactly_half = [[0, 0, 10, 5]]  # IoU 50 / 100 = 0.5
    assert iou(exactly_half[0], [0, 0, 10, 10]) == 0.5
    assert FasterRCNNBoxScoreTarget([1], exactly_half)(output).item() == 0.0
    assert FasterRCNNBoxScoreTarget([1], exactly_half, iou_threshold=0.49)(output).item() == pytest.approx(0.75)


def test_faster_rcnn_box_score_target_empty_prediction_and_dtype():
    empty = detections([], [], [], dtype=torch.float64)
    result = FasterRCNNBoxScoreTarget([1], [[0, 0, 5, 5]])(empty)
    assert result.shape == (1,) and result.dtype == torch.float64 and result.item() == 0.0
    float32 = FasterRCNNBoxScoreTarget([1], np.array([[0, 0, 10, 10]], np.float64))(
        detections([[0, 0, 10, 10]], [1], [0.5])
    )
    assert float32.dtype == torch.float32 and float32.item() == pytest.approx(1.5)


def test_faster_rcnn_box_score_target_gradients_reach_boxes_and_scores():
    output = detections([[0, 0, 10, 10]], [1], [0.5], dtype=torch.float64)
    output["boxes"].requires_grad_(True)
    output["scores"].requires_grad_(True)
    FasterRCNNBoxScoreTarget([1], [[0, 0, 10, 9]])(output).sum().backward()
    assert output["scores"].grad.item() == 1.0
    assert output["boxes"].grad.abs().sum() > 0


def test_finer_weighted_target_by_hand():
    z = torch.tensor([2.0, 1.5, -0.5, 1.0, 0.0], dtype=torch.float64, requires_grad=True)
    p = np.exp(z.detach().numpy()) / np.exp(z.detach().numpy()).sum()
    alpha = 0.6
    expected = sum(p[j] * (2.0 - alpha * z[j].item()) for j in (1, 3)) / (p[1] + p[3] + 1e-9)
    value = FinerWeightedTarget(0, [1, 3], alpha)(z)
    assert value.item() == pytest.approx(expected, abs=1e-12)
    assert FinerWeightedTarget(0, [1, 3], 0)(z).item() == pytest.approx(2.0, abs=1e-8)  # the 1e-9 guard
    value.backward()
    assert z.grad[1] != 0 and z.grad[2] != 0  # through p too: class 2 enters via the softmax
    rows = torch.stack([z.detach(), z.detach().flip(0)])
    np.testing.assert_allclose(
        FinerWeightedTarget(0, [1, 3], alpha)(rows).numpy(),
        [FinerWeightedTarget(0, [1, 3], alpha)(row).item() for row in rows],
        atol=1e-12,
    )


def test_targets_keep_the_existing_ones_working():
    assert ClassifierOutputTarget(1)(torch.tensor([0.0, 3.0])).item() == 3.0


# ---------------------------------------------------------------- scale_accross_batch_and_channels
def test_scale_accross_batch_and_channels_is_per_map_scale_cam_image():
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(2, 3, 6, 9)).astype(np.float32)
    result = scale_accross_batch_and_channels(maps, (18, 12))
    assert isinstance(result, np.ndarray) and result.dtype == np.float32 and result.shape == (2, 3, 12, 18)
    for b in range(2):
        for c in range(3):
            np.testing.assert_allclose(result[b, c], scale_cam_image(maps[b, c][None], (18, 12))[0], atol=1e-7)
            np.testing.assert_allclose(
                result[b, c],
                cv2.resize((maps[b, c] - maps[b, c].min()) / (np.ptp(maps[b, c]) + 1e-7), (18, 12)),
                atol=1e-5,
            )
    from_tensor = scale_accross_batch_and_channels(torch.from_numpy(maps), (18, 12))
    assert torch.is_tensor(from_tensor)
    np.testing.assert_allclose(from_tensor.numpy(), result, atol=1e-7)
    assert scale_accross_batch_and_channels(maps, None).shape == maps.shape
