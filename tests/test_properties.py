"""Property-based tests (hypothesis) of the image utilities and of the scaling and
resizing path every CAM ends with: random shapes, dtypes and value ranges."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import torch
from cam_reference import interpolation_matrix, min_max, resize_half_pixel
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, PerturbationCAM
from pytorch_grad_cam.utils.image import (
    deprocess_image,
    min_max_scale,
    preprocess_image,
    resize_maps,
    scale_cam_image,
    show_cam_on_image,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

FLOAT_DTYPES = st.sampled_from([np.float16, np.float32, np.float64])
COLORMAPS = st.sampled_from([cv2.COLORMAP_JET, cv2.COLORMAP_HOT, cv2.COLORMAP_VIRIDIS, cv2.COLORMAP_BONE])


@st.composite
def map_batches(draw, allow_non_finite: bool = False, max_side: int = 12):
    """(B, h, w) float arrays of any float dtype and magnitude, often with plateaus."""
    batch = draw(st.integers(1, 3))
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    dtype = draw(FLOAT_DTYPES)
    bound = draw(st.sampled_from([2.0**-10, 1.0, 1024.0, 32768.0]))
    elements = st.floats(-bound, bound, width=16 if dtype == np.float16 else 32)
    if allow_non_finite:
        elements = elements | st.sampled_from([float("nan"), float("inf"), float("-inf")])
    return draw(hnp.arrays(dtype, (batch, height, width), elements=elements))


@st.composite
def unit_images(draw, max_side: int = 16):
    """(H, W, 3) float images in [0, 1] and an (H, W) mask in [0, 1]."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    unit = st.floats(0, 1, width=32)
    img = draw(hnp.arrays(dtype, (height, width, 3), elements=unit))
    mask = draw(hnp.arrays(draw(FLOAT_DTYPES), (height, width), elements=st.floats(0, 1, width=16)))
    return img, mask


def assert_unit_maps(maps: np.ndarray, source: np.ndarray) -> None:
    """Each map in [0, 1], finite, min 0; max ~1 unless the source map is (nearly) constant."""
    assert np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    flat_source = np.nan_to_num(source.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    flat_source = flat_source.reshape(len(source), -1)
    for scaled, raw in zip(maps.reshape(len(maps), -1), flat_source):
        assert scaled.min() == 0
        spread = raw.max() - raw.min()
        if spread > 1e-3:
            assert scaled.max() > 0.999, (spread, scaled.max())
        if spread == 0:
            assert not scaled.any(), "a constant map must become all zeros"


# --------------------------------------------------------------------------- scaling
@PROPERTY
@given(maps=map_batches())
def test_min_max_scale(maps: np.ndarray) -> None:
    tensor = torch.from_numpy(maps.astype(np.float32))
    scaled = min_max_scale(tensor)
    assert scaled.shape == tensor.shape and scaled.dtype == torch.float32
    assert_unit_maps(scaled.numpy(), maps)
    # The values: (x - min) / (max(x - min) + 1e-7) per map, in float64 on the same
    # float32 inputs; float32 rounds x - min and the quotient, a few ulps of 1.
    expected = np.stack([min_max(m) for m in tensor.double().numpy()])
    np.testing.assert_allclose(scaled.numpy(), expected, atol=1e-6, rtol=0)
    # Order within each map is kept (up to ties created by rounding).
    flat_in, flat_out = tensor.reshape(len(tensor), -1), scaled.reshape(len(scaled), -1)
    order = flat_in.argsort(dim=1)
    assert (torch.diff(flat_out.gather(1, order), dim=1) >= 0).all()


@PROPERTY
@given(maps=map_batches(allow_non_finite=True), as_tensor=st.booleans())
def test_scale_cam_image_without_resize(maps: np.ndarray, as_tensor: bool) -> None:
    """Any float dtype, NaN/Inf included: float32 maps of the same kind, in [0, 1]."""
    source = torch.from_numpy(maps) if as_tensor else maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = scale_cam_image(source)
    if as_tensor:
        assert isinstance(scaled, torch.Tensor)
        scaled = scaled.numpy()
    assert isinstance(scaled, np.ndarray) and scaled.dtype == np.float32 and scaled.shape == maps.shape
    assert_unit_maps(scaled, maps)
    # The values: NaN and +-Inf become 0, then the min-max of each map (float64 oracle).
    finite = np.nan_to_num(maps.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    np.testing.assert_allclose(scaled, np.stack([min_max(m) for m in finite]), atol=1e-6, rtol=0)


@PROPERTY
@given(
    maps=map_batches(max_side=9),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    upsample_only=st.booleans(),
)
@example(maps=np.array([[[0, 2, 2]]], np.float16), width=8, height=5, upsample_only=False)  # overshoot
def test_scale_cam_image_resize_agrees_with_cv2_inter_linear(maps, width, height, upsample_only) -> None:
    """target_size is (width, height) as in OpenCV; the resize is cv2.resize(INTER_LINEAR)
    (half-pixel centres); on downsampling too, since neither antialiases."""
    if upsample_only:
        width, height = max(width, maps.shape[2]), max(height, maps.shape[1])
    resized = scale_cam_image(maps, (width, height))
    assert resized.shape == (len(maps), height, width) and resized.dtype == np.float32
    assert np.isfinite(resized).all() and resized.min() >= 0 and resized.max() <= 1
    unresized = scale_cam_image(maps)
    for ours, scaled in zip(resized, unresized):
        expected = cv2.resize(scaled, (width, height), interpolation=cv2.INTER_LINEAR)
        # F.interpolate and OpenCV compute the source coordinate (i + 0.5) * in / out - 0.5
        # by different float32 formulas, a few ulps apart (inputs <= 9 px: ulp 9.5e-7), times
        # a neighbour difference <= 1: a 0/1 checkerboard 8x8 -> 30x30 differs by 1.0e-6.
        np.testing.assert_allclose(ours, expected.reshape(height, width), atol=5e-6)


@PROPERTY
@given(
    maps=map_batches(max_side=9),
    height=st.integers(1, 30),
    width=st.integers(1, 30),
    align_corners=st.booleans(),
)
def test_resize_maps_is_bilinear_interpolation(maps, height, width, align_corners) -> None:
    """Against bilinear interpolation written out (cam_reference.interpolation_matrix:
    the 1D linear weights per output row and column, source coordinate
    (i + 0.5) * in / out - 0.5 clamped at 0, or i * (in - 1) / (out - 1) with
    align_corners), applied separably in float64 to the same float32 maps."""
    tensor = torch.from_numpy(maps.astype(np.float32))
    resized = resize_maps(tensor, (height, width), align_corners=align_corners)
    assert resized.shape == (len(maps), height, width)
    source = tensor.double().numpy()
    rows = interpolation_matrix(source.shape[1], height, align_corners)
    columns = interpolation_matrix(source.shape[2], width, align_corners)
    expected = np.einsum("hi,bij,wj->bhw", rows, source, columns)
    # float32 computes the source coordinate with a rounding of about an ulp of the input
    # size (<= 9 px: 9.5e-7), times a neighbour difference <= 2 max|x|, plus the rounding
    # of the result: measured at most 9.5e-7 max|x| over 600 examples.
    peak = np.abs(source).reshape(len(source), -1).max(axis=1)[:, None, None]
    assert (np.abs(resized.double().numpy() - expected) <= 4e-6 * peak + 1e-12).all()
    # Interpolation never leaves the range of the source map.
    low = tensor.amin(dim=(1, 2), keepdim=True)
    high = tensor.amax(dim=(1, 2), keepdim=True)
    slack = 1e-5 * (1 + tensor.abs().amax(dim=(1, 2), keepdim=True))
    assert ((resized >= low - slack) & (resized <= high + slack)).all()
    assert resize_maps(tensor, tensor.shape[1:]) is tensor  # no work when the size is right


@PROPERTY
@given(
    depth=st.integers(1, 4),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    target=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
)
def test_scale_cam_image_volumes(depth, height, width, target) -> None:
    maps = np.random.default_rng(depth * 100 + height * 10 + width).random((2, depth, height, width))
    resized = scale_cam_image(maps, target)  # (width, height, depth), OpenCV order extended
    assert resized.shape == (2, target[2], target[1], target[0])
    assert np.isfinite(resized).all() and resized.min() >= 0 and resized.max() <= 1
    # The values: min-max of each volume, then trilinear interpolation with half-pixel
    # centres (separable interpolation matrices, float64).
    size = (target[2], target[1], target[0])
    expected = np.stack([resize_half_pixel(min_max(m.astype(np.float32).astype(np.float64)), size) for m in maps])
    np.testing.assert_allclose(resized, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- overlay
@PROPERTY
@given(
    pair=unit_images(),
    use_rgb=st.booleans(),
    colormap=COLORMAPS,
    image_weight=st.floats(0, 1),
)
@example(  # a black image under a colormap that starts at black: 0 / 0
    pair=(np.zeros((3, 4, 3), np.float32), np.zeros((3, 4), np.float32)),
    use_rgb=False,
    colormap=cv2.COLORMAP_HOT,
    image_weight=0.5,
)
def test_show_cam_on_image(pair, use_rgb, colormap, image_weight) -> None:
    img, mask = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0, no NaN cast
        out = show_cam_on_image(img, mask, use_rgb=use_rgb, colormap=colormap, image_weight=image_weight)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert out.max() in (0, 255), "the blend is divided by its maximum"
    if out.max() == 0:
        assert image_weight == 1 or colormap != cv2.COLORMAP_JET
    # RGB output is the BGR output of the channel-reversed image, reversed.
    flipped = show_cam_on_image(
        np.ascontiguousarray(img[..., ::-1]), mask, use_rgb=not use_rgb, colormap=colormap, image_weight=image_weight
    )
    np.testing.assert_array_equal(out, flipped[..., ::-1])


@PROPERTY
@given(
    pair=unit_images(), use_rgb=st.booleans(), colormap=COLORMAPS, image_weight=st.floats(0, 1), double=st.booleans()
)
def test_show_cam_on_image_is_the_formula_written_out(pair, use_rgb, colormap, image_weight, double) -> None:
    """The in-place implementation gives the bytes of the formula written out term by term
    (grad-cam's formula: (1 - w) * heatmap / 255 + w * img, divided by its maximum, times 255, as uint8),
    for float32 and float64 images."""
    img, mask = pair
    img = img.astype(np.float64) if double else img
    heatmap = cv2.applyColorMap(np.uint8(np.clip(255 * mask, 0, 255)), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    blend = (1 - image_weight) * (np.float32(heatmap) / 255) + image_weight * img
    if blend.max() > 0:
        blend = blend / blend.max()
    expected = np.uint8(255 * blend)
    out = show_cam_on_image(img, mask, use_rgb=use_rgb, colormap=colormap, image_weight=image_weight)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@PROPERTY
@given(pair=unit_images(), other_mask_seed=st.integers(0, 2**16))
def test_show_cam_on_image_weight_extremes(pair, other_mask_seed) -> None:
    img, mask = pair
    other = np.random.default_rng(other_mask_seed).random(mask.shape)
    # image_weight=1: the image alone (the mask is irrelevant); 0: the heatmap alone.
    np.testing.assert_array_equal(
        show_cam_on_image(img, mask, image_weight=1.0), show_cam_on_image(img, other, image_weight=1.0)
    )
    np.testing.assert_array_equal(
        show_cam_on_image(img, mask, image_weight=0.0), show_cam_on_image(img * 0.5, mask, image_weight=0.0)
    )


# --------------------------------------------------------------------------- (de)processing
@PROPERTY
@given(
    img=hnp.arrays(
        st.sampled_from([np.float32, np.float64, np.uint8]),
        st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4)),
        elements=st.integers(0, 255),
    ),
    data=st.data(),
)
def test_preprocess_image_normalises_per_channel(img, data) -> None:
    channels = img.shape[2]
    mean = data.draw(st.lists(st.floats(-2, 2, width=32), min_size=channels, max_size=channels))
    std = data.draw(st.lists(st.floats(0.125, 4, width=32), min_size=channels, max_size=channels))
    tensor = preprocess_image(img, mean=mean, std=std)
    assert tensor.shape == (1, channels, *img.shape[:2]) and tensor.dtype == torch.float32
    assert tensor.is_contiguous()
    restored = tensor[0].permute(1, 2, 0) * torch.tensor(std) + torch.tensor(mean)
    np.testing.assert_allclose(restored.numpy(), img.astype(np.float32), rtol=1e-5, atol=1e-3)
    default = preprocess_image(img)
    np.testing.assert_allclose(default[0].permute(1, 2, 0).numpy(), (img.astype(np.float32) - 0.5) / 0.5, rtol=1e-6)


@PROPERTY
@given(
    img=hnp.arrays(
        FLOAT_DTYPES,
        st.tuples(st.integers(1, 10), st.integers(1, 10), st.sampled_from([1, 3])),
        elements=st.floats(-1e3, 1e3, width=16),
    )
)
def test_deprocess_image(img) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = deprocess_image(img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    values = img.astype(np.float32).ravel()
    if values.max() == values.min():
        assert (out == 127).all(), "a constant image maps to mid-grey"
    # Monotone: a brighter input pixel is never darker in the output.
    order = np.argsort(values, kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


# --------------------------------------------------------------------------- projection
@PROPERTY
@given(
    activations=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 7), st.integers(1, 7)),
        elements=st.floats(-1e3, 1e3, width=32),
    )
)
def test_2d_projection_is_the_first_principal_component_oriented_by_the_channel_sum(activations) -> None:
    projection = get_2d_projection(activations)
    assert projection.shape == (activations.shape[0], *activations.shape[2:])
    assert np.isfinite(projection).all()
    # The values, up to sign: numpy's SVD of the centred (h*w, K) matrix X in float64,
    # X @ v1. Rounding X and X^T X to float32 (relative u ~ 6e-8 of s = max|x| sqrt(h*w*K),
    # a bound of |X|) turns v1 by ~u s^2 / (sigma1^2 - sigma2^2) and moves X @ v1 by that
    # times sigma1, plus ~u s; the tolerance takes 16 u (measured over 400 examples: at
    # most 1/70 of it). v1 is not defined where sigma1 ~ sigma2, and X^T X underflows
    # float32 where max|x| < ~1e-19: neither is compared.
    for got, image in zip(projection, activations.astype(np.float64)):
        matrix = image.reshape(image.shape[0], -1).T
        scale = np.abs(matrix).max() * np.sqrt(matrix.size)
        matrix = matrix - matrix.mean(axis=0)
        _, singular, vt = np.linalg.svd(matrix, full_matrices=False)
        expected = (matrix @ vt[0]).reshape(got.shape)
        separation = singular[0] ** 2 - (singular[1] ** 2 if len(singular) > 1 else 0.0)
        if scale == 0:
            assert not got.any()
            continue
        if scale < 1e-15 or separation <= 1e-4 * scale**2:
            continue  # (nearly) tied components, or a (nearly) constant map: rounding noise
        tolerance = 1e-6 * (scale + singular[0] * scale**2 / separation)
        error = min(np.abs(got - expected).max(), np.abs(got + expected).max())
        assert error <= tolerance, (error, tolerance)
    centred = activations.reshape(*activations.shape[:2], -1)
    centred = centred - centred.mean(axis=2, keepdims=True)
    agreement = (projection.reshape(len(projection), -1) * centred.sum(axis=1)).sum(axis=1)
    scale = np.abs(centred).sum(axis=(1, 2)) * np.abs(projection).reshape(len(projection), -1).sum(axis=1)
    assert (agreement >= -1e-4 * (1 + scale)).all(), "the sign must follow the channel sum"


# --------------------------------------------------------------------------- the whole path
class Tiny(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        torch.manual_seed(stride)
        self.stem = nn.Conv2d(3, 4, 3, stride=stride, padding=1)
        self.target = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.target(torch.relu(self.stem(x)))).mean(dim=(2, 3)))


TINY = {stride: Tiny(stride).eval() for stride in (1, 2, 3)}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(list(CNN_METHODS)),
    stride=st.sampled_from([1, 2, 3]),
    batch=st.integers(1, 3),
    height=st.integers(1, 41),
    width=st.integers(1, 41),
    scale=st.sampled_from([0.0, 1e-3, 1.0, 100.0]),
    eigen_smooth=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_method_returns_unit_maps_of_the_input_size(
    name, stride, batch, height, width, scale, eigen_smooth, seed
) -> None:
    model = TINY[stride]
    x = scale * torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))
    options = {"progress": False} if issubclass(METHODS[name], PerturbationCAM) else {}
    targets = [ClassifierOutputTarget(seed % 3)] * batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = METHODS[name](model, [model.target], **options)(x, targets, eigen_smooth=eigen_smooth)
    assert maps.dtype == np.float32 and maps.shape == (batch, height, width)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    peaks = maps.reshape(batch, -1).max(axis=1)
    assert ((peaks == 0) | (peaks > 0.999)).all(), peaks
