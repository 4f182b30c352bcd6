"""Models with several inputs: ``cam((image, meta, flag))`` / ``cam({...})`` run
``model(*inputs)`` / ``model(**inputs)``; the map covers the image inputs, aug_smooth
transforms only them, a batch is per image, and every method works (docs/decisions.md, G23)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from cam_reference import reference_cam, single_thread_module  # noqa: F401 - one thread for the module
from method_sets import CNN_METHODS
from signal_models import ImageAndMeta
from test_reliability import assert_same_state, model_state
from torch import nn

from pytorch_grad_cam import FinerCAM, GradCAM, HiResCAM, get_method
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

FORMULA_METHODS = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam"]
GENERATOR = torch.Generator().manual_seed(0)
IMAGES, META = torch.randn(3, 3, 8, 8, generator=GENERATOR), torch.randn(3, 2, generator=GENERATOR)


class WithMeta(nn.Module):
    """The reference's view of the model: a function of the image, meta and scale bound."""

    def __init__(self, model: nn.Module, meta: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.model, self.meta, self.scale = model, meta, scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, self.meta, self.scale)


@pytest.fixture(scope="module")
def net() -> ImageAndMeta:
    return ImageAndMeta().eval()


@pytest.mark.parametrize("method", FORMULA_METHODS)
def test_formulas_match_the_float64_reference(net: ImageAndMeta, method: str) -> None:
    classes = [0, 2, 1]
    result = get_method(method)(net, [net.conv2])((IMAGES, META, 0.5), [ClassifierOutputTarget(c) for c in classes])
    reference = reference_cam(method, WithMeta(net, META, 0.5), [net.conv2], IMAGES, classes)
    np.testing.assert_allclose(result, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", list(CNN_METHODS))
def test_every_method_runs_on_two_inputs(net: ImageAndMeta, method: str) -> None:
    kwargs = {"batch_size": 8, "progress": False} if method in ("scorecam", "ablationcam") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AblationCAM's whole-model fallback note
        maps = get_method(method)(net, [net.conv2], **kwargs)({"image": IMAGES[:2], "meta": META[:2]})
    assert maps.shape == (2, 8, 8) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.isclose(maps.max(axis=(1, 2)), 1, atol=1e-5).all()


def test_a_subclass_call_keeps_its_options(net: ImageAndMeta) -> None:
    """FinerCAM's alpha reaches the maps of several inputs as it does those of one tensor."""
    several = FinerCAM(net, [net.conv2])((IMAGES, META), alpha=0.3, image_input=0)
    bound = WithMeta(net, META, 1.0).eval()
    np.testing.assert_allclose(several, FinerCAM(bound, [net.conv2])(IMAGES, alpha=0.3), atol=1e-6)
    assert not np.allclose(several, FinerCAM(bound, [net.conv2])(IMAGES, alpha=1.0), atol=1e-3)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "fullgrad"])
def test_the_model_is_left_as_found(method: str) -> None:
    """docs/decisions.md, G1, through the bound model: modes, hooks, parameters, buffers."""
    model = nn.Sequential()  # a container whose forward is replaced: two inputs, a BatchNorm in train mode
    model.conv, model.norm, model.meta, model.fc = (
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Linear(2, 4),
        nn.Linear(4, 3),
    )
    model.forward = lambda image, meta: model.fc(model.norm(model.conv(image)).mean(dim=(2, 3)) + model.meta(meta))
    model.train()
    before = model_state(model)
    kwargs = {"batch_size": 4, "progress": False} if method in ("scorecam", "ablationcam") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maps = get_method(method)(model, [model.norm], **kwargs)((IMAGES[:2], META[:2]))
    assert maps.shape == (2, 8, 8)
    assert_same_state(before, model_state(model))


def test_a_batch_is_per_image_and_outputs_are_the_batch(net: ImageAndMeta) -> None:
    cam = GradCAM(net, [net.conv2])
    batch = cam((IMAGES, META))
    with torch.no_grad():
        np.testing.assert_allclose(cam.outputs, net(IMAGES, META), atol=1e-6)
    for i in range(3):
        np.testing.assert_allclose(batch[i], cam((IMAGES[i : i + 1], META[i : i + 1]))[0], atol=1e-6)


def test_the_non_tensor_input_reaches_the_model(net: ImageAndMeta) -> None:
    cam = GradCAM(net, [net.conv2])
    cam((IMAGES, META, 0.0))
    with torch.no_grad():
        np.testing.assert_allclose(cam.outputs, net(IMAGES, META, 0.0), atol=1e-6)


def test_the_map_is_high_on_the_image_region_the_class_reads() -> None:
    """Class 1's score reads the image's top-left quarter only; meta adds a constant."""

    class RegionModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.fill_(1 / 9)
                self.conv.bias.fill_(-0.2)
            self.meta = nn.Linear(3, 2)

        def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            features = torch.relu(self.conv(image))
            region = features[:, :, :8, :8].mean(dim=(1, 2, 3))
            return torch.stack([-region, region], dim=1) + self.meta(meta)

    torch.manual_seed(0)
    model = RegionModel().eval()
    images = torch.rand(2, 1, 16, 16) * 0.1
    images[:, :, 2:6, 2:6] += 1.0  # the object the class reads
    images[1, :, 10:14, 10:14] += 1.0  # one it does not read
    # HiResCAM (gradient x activation per position): GradCAM's mean gradient would weigh both objects
    maps = HiResCAM(model, [model.conv])((images, torch.randn(2, 3)), [ClassifierOutputTarget(1)] * 2)
    inside, outside = maps[:, 2:6, 2:6].mean(axis=(1, 2)), maps[:, 9:, 9:].max(axis=(1, 2))
    # measured: inside 0.634 and 0.636 (the object's edges are lower), outside 0 and 0
    assert (inside > 0.5).all() and (outside < 0.05).all()


def test_aug_smooth_transforms_only_the_image_inputs(net: ImageAndMeta) -> None:
    seen = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
            seen.append((image.detach().clone(), meta.detach().clone()))
            return self.net(image, meta)

    spy = Spy().eval()
    GradCAM(spy, [net.conv2])((IMAGES[:1], META[:1]), aug_smooth=True)
    images, metas = seen[-1]
    assert images.shape[0] == 6 and (metas == META[:1]).all()  # six copies, meta repeated as given
    # ttach's order: flip (no, yes) outer, multiply (0.9, 1, 1.1) inner
    torch.testing.assert_close(images[1], IMAGES[0])
    torch.testing.assert_close(images[4], IMAGES[0].flip(-1))
    torch.testing.assert_close(images[3], IMAGES[0].flip(-1) * 0.9)


def test_image_input_names_the_map_inputs() -> None:
    class RgbDepth(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.rgb, self.depth, self.fc = (
                nn.Conv2d(3, 4, 3, padding=1),
                nn.Conv2d(1, 4, 3, padding=1),
                nn.Linear(4, 2),
            )

        def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
            small = nn.functional.avg_pool2d(depth, 2)
            return self.fc((self.rgb(rgb).mean(dim=(2, 3)) + self.depth(small).mean(dim=(2, 3))).relu())

    model = RgbDepth().eval()
    inputs = {"rgb": torch.randn(2, 3, 16, 16), "depth": torch.randn(2, 1, 16, 16)}
    assert GradCAM(model, [model.depth])(inputs).shape == (2, 16, 16)  # the depth branch, at the inputs' size
    assert GradCAM(model, [model.rgb])(inputs, image_input="rgb").shape == (2, 16, 16)
    with pytest.raises(ValueError, match=r"image_input 'mask' is not a float .* the inputs are \['rgb', 'depth'\]"):
        GradCAM(model, [model.rgb])(inputs, image_input="mask")


def test_errors_name_the_sizes(net: ImageAndMeta) -> None:
    cam = GradCAM(net, [net.conv2])
    with pytest.raises(ValueError, match=r"input 0 has 3 rows and input 1 has 2; pass the same number"):
        cam((IMAGES, META[:2]))
    with pytest.raises(ValueError, match=r"no input is a float \(B, C, L\), \(B, C, H, W\).*image_input="):
        cam((META, META))
    with pytest.raises(ValueError, match=r"contains NaN or Inf"):
        cam((IMAGES, META * float("nan")))
    with pytest.raises(TypeError, match=r"input_tensor must be a torch\.Tensor, not tuple"):
        cam(())  # no tensor in it: not several inputs
