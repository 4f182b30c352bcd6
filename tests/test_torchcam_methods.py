"""torchcam's extra methods (CAM, SmoothGradCAM++, SS-CAM, IS-CAM) and NoiseSmooth
against independent float64 computations of their formulas, with the noise drawn here
in the documented order from the same seed; their batching, seeds and errors; and a
localisation check on a model whose answer is known.

The references capture activations and gradients through tests/cam_reference.py (a
leaf substituted for the layer's output) and evaluate the formulas in float64 numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cam_reference import (
    capture,
    finish_layer,
    interpolation_matrix,
    min_max,
    single_thread_module,  # noqa: F401 - autouse fixture
)
from scipy.special import softmax
from torch import nn

from pytorch_grad_cam import (
    CAM,
    ISCAM,
    METHODS,
    SSCAM,
    GradCAM,
    GradCAMPlusPlus,
    NoiseSmooth,
    ScoreCAM,
    SmoothGradCAMPlusPlus,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

# As tests/test_formulas.py: maps in [0, 1] against float64 references.
ATOL = 1e-5
CLASSES = [1, 3]
SEED = 11
LAYERS = pytest.mark.parametrize("layer_index", [-1, -2], ids=["relu", "conv"])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1


def targets(classes=CLASSES):
    return [ClassifierOutputTarget(c) for c in classes]


def finish(raw_maps, size=(32, 32)) -> np.ndarray:
    return np.stack([min_max(finish_layer(raw, size)) for raw in raw_maps])


def assert_nontrivial(reference: np.ndarray) -> None:
    for image_map in reference:
        assert image_map.max() == pytest.approx(1.0, abs=1e-5) and image_map.std() > 0.05


def draws(count: int, shape, std: float, seed: int = SEED) -> torch.Tensor:
    """``count`` noise tensors of ``shape`` in order, from a CPU generator seeded ``seed``
    (an int seed: every image's own generator draws these)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(shape, generator=generator) * std for _ in range(count)])


def copies_noise(samples: int, images: torch.Tensor, std: float) -> torch.Tensor:
    """The noise of copy s * B + b: the s-th draw of image b's generator (seeded SEED)."""
    per_image = draws(samples, images.shape[1:], std)
    return per_image.repeat_interleave(len(images), dim=0)


def masks_of(a: np.ndarray, size) -> np.ndarray:
    """ScoreCAM's masks: align-corners upsample, then min-max (+1e-8) per channel."""
    rows = interpolation_matrix(a.shape[1], size[0], align_corners=True)
    cols = interpolation_matrix(a.shape[2], size[1], align_corners=True)
    up = np.einsum("hi,kij,wj->khw", rows, a, cols)
    low, high = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    return (up - low) / (high - low + 1e-8)


def logits(model: nn.Module, batch: np.ndarray, category: int) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch).float()).double().numpy()[:, category]


# ---------------------------------------------------------------- CAM
@LAYERS
def test_cam_matches_reference(layer_index, small_cnn, images):
    """M_c = sum_k fc.weight[c, k] A_k, on the last ReLU and on a signed conv output."""
    layer = small_cnn.features[layer_index]
    A, _, _ = capture(small_cnn, layer, images, CLASSES)
    rows = small_cnn.fc.weight.detach().double().numpy()[CLASSES]
    reference = finish([np.einsum("k,khw->hw", w, a) for w, a in zip(rows, A)])
    assert_nontrivial(reference)
    result = CAM(small_cnn, [layer])(images, targets())
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)
    given = CAM(small_cnn, [layer], fc_layer="fc")(images, targets())
    np.testing.assert_array_equal(given, result)


def test_cam_is_gradcam_on_the_layer_before_pooling(small_cnn, images):
    """Global average pooling then one Linear: dy_c/dA_k = w_ck / hw, so GradCAM's map is
    CAM's (the sanity check of both)."""
    layer = small_cnn.features[-1]
    cam = CAM(small_cnn, [layer], fc_layer=small_cnn.fc)(images)
    np.testing.assert_allclose(cam, GradCAM(small_cnn, [layer])(images), atol=1e-6)


class MLPHead(nn.Module):
    """Pooled features into a hidden Linear, then the classifier: no CAM is defined."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.hidden = nn.Linear(8, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(torch.relu(self.conv(x)).mean(dim=(2, 3)))))


def test_cam_errors(small_cnn, images):
    model = MLPHead().eval()
    with pytest.raises(ValueError, match=r"no nn.Linear with in_features=8 .* target layer 'conv'; use GradCAM"):
        CAM(model, [model.conv])(images, targets())
    for module in model.modules():  # the watching hooks are gone after the error
        assert not module._forward_hooks
    with pytest.raises(ValueError, match=r"fc_layer 'out' has in_features=6, but target layer 'conv' has 8"):
        CAM(model, [model.conv], fc_layer="out")(images, targets())
    with pytest.raises(TypeError, match="fc_layer must be an nn.Linear, not Conv2d"):
        CAM(model, [model.conv], fc_layer="conv")
    with pytest.raises(ValueError, match="'head' is not inside the model"):
        CAM(model, [model.conv], fc_layer="head")
    with pytest.raises(TypeError, match="each target must name a class .* got function"):
        CAM(small_cnn, [small_cnn.features[-1]], fc_layer="fc")(images, [lambda output: output.sum()] * 2)
    with pytest.raises(IndexError):
        CAM(small_cnn, [small_cnn.features[-1]], fc_layer="fc")(images, targets([1, 9]))


# ---------------------------------------------------------------- SmoothGradCAM++
def smoothgradcampp_reference(model, layer, images, classes, samples, std):
    """D^p = mean over copies (image b + the s-th draw of its generator) of G^p;
    GradCAM++'s alpha with D^2 in the numerator; the clean input's activations."""
    count = len(images)
    noisy = images.repeat(samples, 1, 1, 1) + copies_noise(samples, images, std)
    A, _, _ = capture(model, layer, images, classes)
    _, G, _ = capture(model, layer, noisy, list(classes) * samples)
    G = G.reshape(samples, count, *G.shape[1:])
    d1, d2, d3 = (np.mean(G**p, axis=0) for p in (1, 2, 3))
    raw = []
    for a, g1, g2, g3 in zip(A, d1, d2, d3):
        alpha = g2 / (2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3 + 1e-6)
        alpha = np.where(g2 != 0, alpha, 0.0)
        weights = (np.maximum(g1, 0) * alpha).sum(axis=(1, 2))
        raw.append(np.einsum("k,khw->hw", weights, a))
    return finish(raw)


@pytest.mark.parametrize("layer_index", [-3, -2], ids=["relu", "conv"])
def test_smoothgradcampp_matches_reference(layer_index, small_cnn, images):
    """Layers whose gradient depends on the input (at the last ReLU, before the pooling,
    it is the classifier's row whatever the input, and the noise would change nothing)."""
    layer = small_cnn.features[layer_index]
    reference = smoothgradcampp_reference(small_cnn, layer, images, CLASSES, samples=3, std=1.0)
    assert_nontrivial(reference)
    plain = GradCAMPlusPlus(small_cnn, [layer])(images, targets())
    assert np.abs(plain - reference).max() > 0.05  # the noise matters (measured 0.09 to 0.11 over seeds)
    cam = SmoothGradCAMPlusPlus(small_cnn, [layer], num_samples=3, std=1.0, seed=SEED, batch_size=4)
    np.testing.assert_allclose(cam(images, targets()), reference, atol=ATOL, rtol=0)


def test_smoothgradcampp_one_copy_without_noise_is_gradcampp(small_cnn, images):
    layer = small_cnn.features[-2]
    smooth = SmoothGradCAMPlusPlus(small_cnn, [layer], num_samples=1, std=0.0)(images, targets())
    np.testing.assert_array_equal(smooth, GradCAMPlusPlus(small_cnn, [layer])(images, targets()))


def test_seeds_and_generators(small_cnn, images):
    """An int seed: the same draws at every call; a Generator advances; None draws from
    torch's global generator (fixed by torch.manual_seed); batch_size changes nothing.
    With one image, the three draw the same numbers from the same seed."""
    layer = small_cnn.features[-2]

    image, target = images[:1], targets()[:1]

    def run(seed, batch_size=16):
        return SmoothGradCAMPlusPlus(small_cnn, [layer], std=1.0, seed=seed, batch_size=batch_size)(image, target)

    first = run(SEED)
    np.testing.assert_array_equal(run(SEED), first)
    np.testing.assert_allclose(run(SEED, batch_size=3), first, atol=1e-6)
    # Other draws move the map by 0.008 to 0.017 at most (seeds 11 to 14), rounding by 2e-7.
    assert np.abs(run(SEED + 1) - first).max() > 1e-3
    generator = torch.Generator().manual_seed(SEED)
    cam = SmoothGradCAMPlusPlus(small_cnn, [layer], std=1.0, seed=generator)
    np.testing.assert_array_equal(cam(image, target), first)
    assert np.abs(cam(image, target) - first).max() > 1e-3
    torch.manual_seed(SEED)
    np.testing.assert_array_equal(run(None), first)


# ---------------------------------------------------------------- SS-CAM and IS-CAM
def sscam_reference(model, layer, images, classes, samples, std):
    """s_k = mean_i y_c(x * (M_k + d_ik)), d drawn per sample, then channel, from each
    image's generator."""
    A, _, _ = capture(model, layer, images, classes)
    size = images.shape[2:]
    noise = draws(samples * A.shape[1], (1, *size), std).double().numpy()
    noise = noise.reshape(1, samples, A.shape[1], 1, *size).repeat(len(images), axis=0)
    raw = []
    for b, (a, category) in enumerate(zip(A, classes)):
        masks = masks_of(a, size)[:, None]
        image = images[b].double().numpy()
        scores = np.mean([logits(model, image * (masks + noise[b, i]), category) for i in range(samples)], axis=0)
        raw.append(np.einsum("k,khw->hw", softmax(scores), a))
    return finish(raw)


def iscam_reference(model, layer, images, classes, steps):
    """s_k = mean_i y_c(x * c_i M_k), c_i = sum_{j=0..i} j / N."""
    A, _, _ = capture(model, layer, images, classes)
    scales = [sum(j / steps for j in range(i + 1)) for i in range(1, steps + 1)]
    raw = []
    for b, (a, category) in enumerate(zip(A, classes)):
        masks = masks_of(a, images.shape[2:])[:, None]
        image = images[b].double().numpy()
        scores = np.mean([logits(model, image * scale * masks, category) for scale in scales], axis=0)
        raw.append(np.einsum("k,khw->hw", softmax(scores), a))
    return finish(raw, tuple(images.shape[2:]))


@LAYERS
def test_sscam_matches_reference(layer_index, small_cnn, images):
    layer = small_cnn.features[layer_index]
    reference = sscam_reference(small_cnn, layer, images, CLASSES, samples=3, std=2.0)
    assert_nontrivial(reference)
    cam = SSCAM(small_cnn, [layer], num_samples=3, seed=SEED, batch_size=5, progress=False)
    np.testing.assert_allclose(cam(images, targets()), reference, atol=ATOL, rtol=0)


@LAYERS
def test_iscam_matches_reference(layer_index, small_cnn, images):
    layer = small_cnn.features[layer_index]
    reference = iscam_reference(small_cnn, layer, images, CLASSES, steps=4)
    assert_nontrivial(reference)
    cam = ISCAM(small_cnn, [layer], num_samples=4, batch_size=5, progress=False)
    np.testing.assert_allclose(cam(images, targets()), reference, atol=ATOL, rtol=0)


def test_iscam_with_a_constant_channel_matches_reference():
    """A constant channel's mask is all zero: its score is the zero image's, at every step."""
    model = BrightPatchNet().eval()
    images = red_patch_images()
    activations, _, _ = capture(model, model.relu, images, [0, 1])
    assert (activations[:, 1] == activations[:, 1, :1, :1]).all()  # the blue channel is constant
    reference = iscam_reference(model, model.relu, images, [0, 1], steps=3)
    assert_nontrivial(reference)
    result = ISCAM(model, [model.relu], num_samples=3, progress=False)(images, targets([0, 1]))
    np.testing.assert_allclose(result, reference, atol=ATOL, rtol=0)


def test_sscam_without_noise_averages_to_scorecam(small_cnn, images):
    """std = 0: every sample scores ScoreCAM's masked image, so the map is ScoreCAM's."""
    layer = small_cnn.features[-2]
    smooth = SSCAM(small_cnn, [layer], num_samples=2, std=0.0, progress=False)(images, targets())
    np.testing.assert_allclose(smooth, ScoreCAM(small_cnn, [layer], progress=False)(images, targets()), atol=1e-6)


@pytest.mark.parametrize("name", ["cam", "smoothgradcam++", "sscam", "iscam"])
def test_a_batch_is_its_images(name, small_cnn, images):
    """Each image's map is its map alone (an int seed: each image's own draws)."""
    options = {
        "cam": {"fc_layer": "fc"},
        "smoothgradcam++": {"std": 1.0},
        "sscam": {"progress": False, "num_samples": 2},
        "iscam": {"progress": False, "num_samples": 2},
    }[name]
    cam = METHODS[name](small_cnn, [small_cnn.features[-2]], **options)
    together = cam(images, targets())
    alone = np.concatenate([cam(images[i : i + 1], targets([c])) for i, c in enumerate(CLASSES)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


# ---------------------------------------------------------------- NoiseSmooth
@pytest.mark.parametrize("statistic", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_noise_smooth_matches_reference(statistic, small_cnn, images):
    """GradCAM's raw map on each noisy copy (its own activations and gradients), then the
    mean, the mean square or the variance over the copies."""
    layer = small_cnn.features[-2]
    samples, count = 3, len(images)
    noisy = images.repeat(samples, 1, 1, 1) + copies_noise(samples, images, 0.3)
    A, G, _ = capture(small_cnn, layer, noisy, CLASSES * samples)
    maps = np.einsum("nk,nkhw->nhw", G.mean(axis=(2, 3)), A).reshape(samples, count, *A.shape[2:])
    mean, square = maps.mean(axis=0), (maps**2).mean(axis=0)
    raw = {"smoothgrad": mean, "smoothgrad_sq": square, "vargrad": square - mean**2}[statistic]
    reference = finish(raw)
    assert_nontrivial(reference)
    cam = NoiseSmooth(small_cnn, [layer], num_samples=samples, statistic=statistic, seed=SEED, noise_batch_size=4)
    np.testing.assert_allclose(cam(images, targets()), reference, atol=ATOL, rtol=0)


def test_noise_smooth_without_noise_is_the_base_method(small_cnn, images):
    layer = small_cnn.features[-2]
    for base, options in ((GradCAM, {}), (ScoreCAM, {"progress": False, "batch_size": 8})):
        smooth = NoiseSmooth(small_cnn, [layer], base_method=base, num_samples=2, std=0.0, **options)
        np.testing.assert_allclose(smooth(images, targets()), base(small_cnn, [layer], **options)(images, targets()))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "cls, options, error, message",
    [
        (SmoothGradCAMPlusPlus, {"num_samples": 0}, ValueError, "num_samples must be a positive integer, got 0"),
        (SmoothGradCAMPlusPlus, {"std": -1.0}, ValueError, r"std must be a finite number >= 0, got -1.0"),
        (SmoothGradCAMPlusPlus, {"seed": "7"}, TypeError, "seed must be None, an int or a torch.Generator, got str"),
        (SSCAM, {"std": float("nan")}, ValueError, "std must be a finite number >= 0, got nan"),
        (SSCAM, {"num_samples": 2.5}, ValueError, "num_samples must be a positive integer, got 2.5"),
        (ISCAM, {"num_samples": True}, ValueError, "num_samples must be a positive integer, got True"),
        (NoiseSmooth, {"statistic": "median"}, ValueError, "statistic must be one of smoothgrad, smoothgrad_sq"),
        (NoiseSmooth, {"noise_batch_size": 0}, ValueError, "noise_batch_size must be a positive integer"),
    ],
)
def test_bad_options_are_errors(cls, options, error, message, small_cnn):
    with pytest.raises(error, match=message):
        cls(small_cnn, [small_cnn.features[-1]], **options)


# ---------------------------------------------------------------- localisation
class BrightPatchNet(nn.Module):
    """Class 0 is 'red': a 1x1 conv passes the red channel on (its other channel the
    blue one), ReLU, global average pooling, a classifier reading channel 0 for class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]).view(2, 3, 1, 1))
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[4.0, -1.0], [-1.0, 4.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def red_patch_images() -> torch.Tensor:
    """Two dim 16x16 images, each with a red square (rows 4-8, columns 9-13)."""
    images = torch.full((2, 3, 16, 16), 0.1)
    images[:, 0, 4:9, 9:14] = 1.0
    images[1, 0] *= 0.8
    return images


@pytest.mark.parametrize("name", ["cam", "smoothgradcam++", "sscam", "iscam"])
def test_the_maps_find_the_red_patch(name):
    """A red square in a dim image: class 0's map peaks inside the square."""
    model = BrightPatchNet().eval()
    image = red_patch_images()[:1]
    options = {
        "cam": {"fc_layer": "fc"},
        "smoothgradcam++": {"seed": 0},
        "sscam": {"progress": False, "num_samples": 4, "seed": 0},
        "iscam": {"progress": False},
    }[name]
    cam = METHODS[name](model, [model.relu], **options)(image, [ClassifierOutputTarget(0)])[0]
    row, col = np.unravel_index(cam.argmax(), cam.shape)
    assert 4 <= row < 9 and 9 <= col < 14, (row, col)
    assert cam[4:9, 9:14].mean() > 3 * cam[:, :6].mean()
