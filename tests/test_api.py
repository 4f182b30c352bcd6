"""The public call behaves as the README says (docs/decisions.md, G8, G9, G13), for every registered method: batches,
the ways of naming targets, smoothing, several layers, volumes, and the errors a
user meets first."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import ttach as tta
from cam_reference import single_thread_module  # noqa: F401 - autouse fixture
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, AblationCAM, GradCAM, ScoreCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHOD_NAMES = sorted(CNN_METHODS)
PERTURBATION = ("scorecam", "ablationcam", "sscam", "iscam")
# Whose map ignores eigen_smooth: a principal component already, or (FEM) a map that
# is not a weighted channel sum for a component to replace (docs/decisions.md, G18).
PROJECTION_METHODS = ("eigencam", "eigengradcam", "fem", "kpcacam", "segeigencam")
# Never call their targets: class-agnostic maps of the activations alone.
CLASS_AGNOSTIC = ("eigencam", "fem", "kpcacam")
# Draws new channel weights on every call (and per batch shape), so two calls never
# give the same map: left out of the tests that compare two calls.
RANDOM_WEIGHTS = ("randomcam",)
# Whose default targets are, by design, not each image's top class: FinerCAM's
# default contrasts the top class with the classes whose logits are closest to it
# (FinerWeightedTarget; tests/test_dropin_base.py checks that choice).
CONTRASTIVE_DEFAULT_TARGETS = ("finercam",)
#: How much two targets' maps differ at least, for the methods weighting channels by a
#: softmax of masked scores (nearly uniform on a random network): 0.05 for the others.
NEARLY_UNIFORM_SOFTMAX = {"scorecam": 1e-3, "iscam": 1e-3, "sscam": 1e-4}


def make_cam(name: str, model: nn.Module, layers=None, **kwargs):
    if name in PERTURBATION:
        kwargs.setdefault("progress", False)
    if name == "sscam":  # 4 noisy masks per channel, not 35: these tests check the API, not the noise
        kwargs.setdefault("num_samples", 4)
    return METHODS[name](model, layers if layers is not None else [model.features[-1]], **kwargs)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(11)) * 2 - 1


@pytest.fixture(scope="module")
def varied_cnn(small_cnn) -> nn.Module:
    """small_cnn with its class biases centred on the pooled features of random images:
    the random network then picks different top classes for different images."""
    model = copy.deepcopy(small_cnn)
    reference = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        pooled = model.pool(model.features(reference)).flatten(1)
        model.fc.bias.copy_(-model.fc.weight @ pooled.mean(dim=0))
    return model


def assert_unit_maps(maps: np.ndarray, shape, allow_empty: bool = False) -> None:
    """float32 maps of ``shape``, each spanning exactly [0, 1] (or, where the ReLU left
    nothing and ``allow_empty``, all zero)."""
    assert maps.dtype == np.float32 and maps.shape == shape
    assert np.isfinite(maps).all()
    for image_map in maps:
        assert image_map.min() == pytest.approx(0, abs=1e-6)
        if allow_empty and image_map.max() == 0:
            continue
        assert image_map.max() == pytest.approx(1, abs=1e-5)
    assert maps.max() > 0


# ---------------------------------------------------------------- batches and targets
#: Batched and single calls sum in different orders. AblationCAM's weights (s - s_k)/s
#: are differences of nearly equal scores, which amplify float32 rounding by |s|/|s - s_k|:
#: it measured 1.9e-6 here (5x inside 1e-5, thin for another CPU's order), the others
#: at least 13x inside 1e-5.
def batch_atol(name: str) -> float:
    return 5e-5 if name == "ablationcam" else 1e-5


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n not in RANDOM_WEIGHTS])
def test_map_in_a_batch_equals_the_map_alone(name, varied_cnn, batch):
    cam = make_cam(name, varied_cnn)
    together = cam(batch)
    assert_unit_maps(together, (3, 32, 32), allow_empty=True)
    for index in range(3):
        alone = cam(batch[index : index + 1])
        np.testing.assert_allclose(together[index], alone[0], atol=batch_atol(name))
    assert np.abs(together[0] - together[1]).max() > 0.1  # three different maps


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n not in RANDOM_WEIGHTS + CONTRASTIVE_DEFAULT_TARGETS])
def test_default_targets_are_the_top_classes(name, varied_cnn, batch):
    cam = make_cam(name, varied_cnn)
    with torch.no_grad():
        top = varied_cnn(batch).argmax(dim=1).tolist()
    assert len(set(top)) > 1  # the images disagree, so a shared default would show
    np.testing.assert_allclose(cam(batch), cam(batch, targets=[ClassifierOutputTarget(c) for c in top]), atol=1e-6)
    np.testing.assert_allclose(cam.outputs.numpy(), varied_cnn(batch).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if n not in CLASS_AGNOSTIC + RANDOM_WEIGHTS])
def test_target_category_spellings(name, small_cnn, batch):
    cam = make_cam(name, small_cnn)
    per_image = cam(batch, targets=[ClassifierOutputTarget(c) for c in (0, 2, 3)])
    np.testing.assert_allclose(cam(batch, target_category=[0, 2, 3]), per_image, atol=1e-6)
    np.testing.assert_allclose(cam(batch, target_category=np.array([0, 2, 3])), per_image, atol=1e-6)
    shared = cam(batch, targets=[ClassifierOutputTarget(2)] * 3)
    np.testing.assert_allclose(cam(batch, target_category=2), shared, atol=1e-6)
    np.testing.assert_allclose(cam(batch, target_category=np.int64(2)), shared, atol=1e-6)
    # The target matters (the class-agnostic methods, which ignore it, are left out). ScoreCAM's softmax
    # over a random network's masked scores is nearly uniform, so its maps differ little; IS-CAM's too
    # (9e-3 measured), and SS-CAM's noisy masks even less (6e-4).
    assert np.abs(per_image[0] - shared[0]).max() > NEARLY_UNIFORM_SOFTMAX.get(name, 0.05)


def test_eigencam_ignores_the_target(small_cnn, batch):
    cam = make_cam("eigencam", small_cnn)
    np.testing.assert_array_equal(cam(batch, target_category=0), cam(batch, target_category=3))


def test_perturbation_batch_size_does_not_change_the_map(small_cnn, batch):
    for cls in (ScoreCAM, AblationCAM):
        reference = cls(small_cnn, [small_cnn.features[-1]], progress=False, batch_size=64)(batch)
        cam = cls(small_cnn, [small_cnn.features[-1]], progress=False)
        cam.batch_size = 5  # 32 channels: chunks of 5 and a last chunk of 2
        np.testing.assert_allclose(cam(batch), reference, atol=1e-6)


def test_ablation_tail_equals_the_whole_model_rerun(small_cnn, batch):
    for layer in (small_cnn.features[-1], small_cnn.features[-2]):
        tail = AblationCAM(small_cnn, [layer], progress=False)(batch)
        whole = AblationCAM(small_cnn, [layer], progress=False, tail_only=False)(batch)
        np.testing.assert_allclose(tail, whole, atol=1e-5)


def test_layers_by_dotted_name_and_several_layers(small_cnn, batch):
    by_module = GradCAM(small_cnn, [small_cnn.features[1], small_cnn.features[6]])(batch)
    by_name = GradCAM(small_cnn, ["features.1", "features.6"])(batch)
    np.testing.assert_array_equal(by_module, by_name)
    assert_unit_maps(by_module, (3, 32, 32))
    only_last = GradCAM(small_cnn, "features.6")(batch)
    assert np.abs(by_module - only_last).max() > 0.05


# ---------------------------------------------------------------- smoothing
def flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@pytest.mark.parametrize("name", ["gradcam", "layercam", "scorecam"])
def test_aug_smooth_is_the_mean_of_the_de_augmented_maps(name, small_cnn, batch):
    """Flip x {0.9, 1, 1.1}: each map computed on its augmented input, flipped back, averaged."""
    cam = make_cam(name, small_cnn)
    targets = [ClassifierOutputTarget(c) for c in (1, 0, 3)]
    expected = np.mean(
        [
            (
                np.flip(cam(flip(batch) * factor, targets=targets), -1)
                if flipped
                else cam(batch * factor, targets=targets)
            )
            for flipped in (False, True)
            for factor in (0.9, 1.0, 1.1)
        ],
        axis=0,
    )
    smoothed = cam(batch, targets=targets, aug_smooth=True)
    np.testing.assert_allclose(smoothed, expected, atol=1e-5)
    # A custom ttach.Compose: only the flip.
    custom = cam(batch, targets=targets, aug_smooth=tta.Compose([tta.HorizontalFlip()]))
    expected = (cam(batch, targets=targets) + np.flip(cam(flip(batch), targets=targets), -1)) / 2
    np.testing.assert_allclose(custom, expected, atol=1e-5)


def test_aug_smooth_default_targets_come_from_the_mean_augmented_output(varied_cnn, batch):
    cam = GradCAM(varied_cnn, [varied_cnn.features[-1]])
    with torch.no_grad():
        outputs = torch.stack(
            [varied_cnn(images * factor) for images in (batch, flip(batch)) for factor in (0.9, 1.0, 1.1)]
        ).mean(dim=0)
    top = outputs.argmax(dim=1).tolist()
    smoothed = cam(batch, aug_smooth=True)
    np.testing.assert_allclose(cam.outputs.numpy(), outputs.numpy(), atol=1e-5)
    explicit = cam(batch, targets=[ClassifierOutputTarget(c) for c in top], aug_smooth=True)
    np.testing.assert_allclose(smoothed, explicit, atol=1e-6)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_smoothing_keeps_shape_and_range_and_changes_the_map(name, small_cnn, batch):
    torch.manual_seed(0)  # RandomCAM's draws: the same whatever ran before
    cam = make_cam(name, small_cnn, [small_cnn.features[-2]])
    plain = cam(batch)
    for options in ({"aug_smooth": True}, {"eigen_smooth": True}, {"aug_smooth": True, "eigen_smooth": True}):
        smoothed = cam(batch, **options)
        assert smoothed.dtype == np.float32 and smoothed.shape == plain.shape
        assert np.isfinite(smoothed).all() and smoothed.min() >= 0 and smoothed.max() <= 1 + 1e-6
        if not (name in RANDOM_WEIGHTS and options.get("aug_smooth")):
            # aug_smooth averages six maps; RandomCAM's six come from six independent
            # draws, whose mean need not peak anywhere (0.49 seen).
            assert smoothed.max() > 0.5
        changed = np.abs(smoothed - plain).max()
        if options == {"eigen_smooth": True} and name in PROJECTION_METHODS:
            assert changed < 1e-5
        else:
            assert changed > 0.02, options


# ---------------------------------------------------------------- volumes
class TinyVolumeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(4, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_volume_input_gives_volume_maps(name):
    torch.manual_seed(2)
    model = TinyVolumeNet().eval()
    volume = torch.randn(2, 1, 8, 12, 10, generator=torch.Generator().manual_seed(4))
    cam = make_cam(name, model)
    maps = cam(volume)
    assert_unit_maps(maps, (2, 8, 12, 10))
    assert maps.std() > 0.05
    if name not in RANDOM_WEIGHTS:
        np.testing.assert_allclose(maps[1], cam(volume[1:])[0], atol=batch_atol(name))
    for options in ({"eigen_smooth": True}, {"aug_smooth": True}):
        smoothed = cam(volume, **options)
        assert smoothed.shape == (2, 8, 12, 10) and np.isfinite(smoothed).all()
        assert smoothed.min() >= 0 and 0.5 < smoothed.max() <= 1 + 1e-6


# ---------------------------------------------------------------- degenerate maps
def test_an_all_zero_layer_gives_all_zero_maps_not_nan():
    class DeadNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 2)
            with torch.no_grad():
                self.features[0].bias.fill_(-1e3)  # every activation below zero: ReLU gives 0

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    model = DeadNet().eval()
    images = torch.rand(2, 3, 16, 16)
    for name in METHOD_NAMES:
        maps = make_cam(name, model)(images, target_category=1)
        assert maps.shape == (2, 16, 16)
        np.testing.assert_array_equal(maps, 0.0)


# ---------------------------------------------------------------- errors
class TokenNet(nn.Module):
    """Embedding to (B, 64, 8) tokens, a per-token block, mean, head. (Its embedding is not
    a patchify convolution, kernel = stride, so no token grid is read from the model: the
    layer needs a reshape_transform given.)"""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.block = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(torch.relu(self.block(tokens)).mean(dim=1))


def test_clear_errors(small_cnn, batch):
    cam = GradCAM(small_cnn, [small_cnn.features[-1]])
    with pytest.raises(
        ValueError, match=r"targets has 2 entries but the batch has 3 images; pass one target per image"
    ):
        cam(batch, targets=[ClassifierOutputTarget(1)] * 2)
    with pytest.raises(
        ValueError, match=r"target_category has 4 entries but the batch has 3 images; pass one category per image"
    ):
        cam(batch, target_category=[1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"not inside the model; pass a module from model\.named_modules\(\)"):
        GradCAM(small_cnn, [nn.Conv2d(3, 3, 1)])
    with pytest.raises(
        ValueError, match=r"'features\.99' is not inside the model; pass a name from model\.named_modules\(\)"
    ):
        GradCAM(small_cnn, ["features.99"])
    with pytest.raises(ValueError, match=r"target_layers=\[\.\.\.\] or target_layer=\.\.\., not both"):
        GradCAM(small_cnn, target_layers=[small_cnn.features[-1]], target_layer=small_cnn.features[-1])
    # Omitted target layers are found at the first call (test_dropin_base.py); an empty
    # list is still an error.
    with pytest.raises(ValueError, match=r"target_layers is empty"):
        GradCAM(small_cnn, [])
    with pytest.raises(ValueError, match=r"targets=\[\.\.\.\] or target_category=\.\.\., not both"):
        cam(batch, targets=[ClassifierOutputTarget(1)] * 3, target_category=1)
    token_net = TokenNet().eval()
    with pytest.raises(ValueError, match=r"\(2, 64, 8\), not \(B, C, h, w\); pass reshape_transform="):
        GradCAM(token_net, [token_net.block])(torch.rand(2, 3, 32, 32))
    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    mask = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*np\.float32\(img\) / 255"):
        show_cam_on_image(image * 255, mask)
    with pytest.raises(ValueError, match=r"image_weight must be in \[0, 1\]"):
        show_cam_on_image(image, mask, image_weight=1.5)


def test_token_layer_works_with_a_reshape_transform():
    """The fix the error names works: (B, 64, 8) tokens folded into (B, 8, 8, 8)."""
    from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform

    torch.manual_seed(0)
    token_net = TokenNet().eval()
    images = torch.rand(2, 3, 32, 32)
    maps = GradCAM(token_net, [token_net.block], reshape_transform=swin_reshape_transform)(images)
    assert_unit_maps(maps, (2, 32, 32))


class _SharedActivationNet(nn.Module):
    """One ReLU module called twice (stem and head), as EfficientNet-Lite's ``_swish``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.head(x))
        return self.fc(x.mean(dim=(2, 3)))


def test_ablation_of_a_module_called_twice_ablates_its_last_call():
    torch.manual_seed(3)
    model = _SharedActivationNet().eval()
    image = torch.randn(1, 3, 12, 12)
    category = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a tail exists: no whole-model fallback
        engine = AblationCAM(model, [model.act], progress=False)(image, target_category=category)

    # Reference: re-run the whole model, replacing only the second call's output.
    with torch.no_grad():
        stem = model.act(model.stem(image))
        activations = model.act(model.head(stem))
        score = model.fc(activations.mean(dim=(2, 3)))[0, category]
        weights = []
        for channel in range(activations.shape[1]):
            ablated = activations.clone()
            ablated[:, channel] = 0  # the activations are non-negative
            weights.append((score - model.fc(ablated.mean(dim=(2, 3)))[0, category]) / score)
        cam = torch.relu((torch.stack(weights)[:, None, None] * activations[0]).sum(0)).numpy()
    cam = cam - cam.min()
    cam = cam / (cam.max() + 1e-7)
    assert cam.max() > 0.99
    np.testing.assert_allclose(engine[0], cam, atol=1e-5)
