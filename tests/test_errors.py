"""Bad input gives a clear exception that names the offending value and says what
to pass instead; each check runs for every registered method where it applies.

NaN/Inf in the input or in the model output is a ValueError (not a warning and not a
silently zeroed map): a CAM of a non-finite forward pass would explain nothing.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, GuidedBackpropReLUModel, PerturbationCAM, get_method
from pytorch_grad_cam.utils.image import preprocess_image, scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

METHOD_NAMES = list(CNN_METHODS)
#: Class-agnostic methods never call their targets: they map the activations alone.
CLASS_AGNOSTIC = {"eigencam", "fem", "kpcacam"}
#: The methods that call their targets (and so meet a bad class index).
TARGETED_METHODS = [name for name in METHOD_NAMES if name not in CLASS_AGNOSTIC]
#: FullGrad maps every convolution/batch-norm bias and the input gradient: the target
#: layers and the reshape transform it is given are ignored (only checked to be inside
#: the model), so a layer or transform giving the wrong rank cannot reach it.
IGNORES_TARGET_LAYERS = {"fullgrad"}
LAYER_METHODS = [name for name in METHOD_NAMES if name not in IGNORES_TARGET_LAYERS]


class Net(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, classes)
        self.poison = 0.0  # added to the logits: NaN/Inf makes the output non-finite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(a.mean(dim=(2, 3))) + self.poison


@pytest.fixture()
def net() -> Net:
    return Net().eval()


def make_cam(name: str, model: nn.Module, layers=None, **kwargs):
    cls = METHODS[name]
    if issubclass(cls, PerturbationCAM):
        kwargs.setdefault("progress", False)
    return cls(model, layers if layers is not None else [model.conv2], **kwargs)


def x(batch: int = 2, size=(8, 8)) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- targets
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_targets_of_the_wrong_length(name: str, count: int, net: Net) -> None:
    with pytest.raises(
        ValueError, match=rf"targets has {count} entries but the batch has 2 images; pass one target per image"
    ):
        make_cam(name, net)(x(2), [ClassifierOutputTarget(0)] * count)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_target_category_of_the_wrong_length(name: str, net: Net) -> None:
    with pytest.raises(
        ValueError,
        match=r"target_category has 3 entries but the batch has 2 images; pass one category per image \(or a single int",
    ):
        make_cam(name, net)(x(2), target_category=[0, 1, 2])


def test_targets_must_be_a_list_of_callables(net: Net) -> None:
    cam = make_cam("gradcam", net)
    with pytest.raises(
        TypeError,
        match=r"targets must be a list with one target per image, e\.g\. \[ClassifierOutputTarget\(281\)\] \* 2",
    ):
        cam(x(2), ClassifierOutputTarget(0))
    with pytest.raises(TypeError, match=r"target 1 is not callable; pass e\.g\. ClassifierOutputTarget\(k\)"):
        cam(x(2), [1, 2])
    with pytest.raises(ValueError, match=r"targets=\[\.\.\.\] or target_category=\.\.\., not both"):
        cam(x(2), [ClassifierOutputTarget(0)] * 2, target_category=0)
    with pytest.raises(ValueError, match=r"returned \(3,\); a target must map one image's output to a scalar"):
        cam(x(2), [lambda output: output] * 2)


def test_a_target_that_ignores_the_output_is_an_error_for_gradient_methods(net: Net) -> None:
    with pytest.raises(ValueError, match="the target scores do not depend on the target layers"):
        make_cam("gradcam", net)(x(2), [lambda output: torch.tensor(1.0)] * 2)


@pytest.mark.parametrize("category", [3, 1000, -4])
@pytest.mark.parametrize("name", TARGETED_METHODS)
def test_class_index_outside_the_output(name: str, category: int, net: Net) -> None:
    message = rf"class index {category} is outside the model output of 3 classes; pass a category in \[0, 2\]"
    with pytest.raises(IndexError, match=message):
        make_cam(name, net)(x(2), [ClassifierOutputTarget(category)] * 2)
    with pytest.raises(IndexError, match=message):
        make_cam(name, net)(x(2), target_category=category)


def test_guided_backprop_class_index_outside_the_output(net: Net) -> None:
    with pytest.raises(IndexError, match=r"class index 7 is outside the model output of 3 classes"):
        GuidedBackpropReLUModel(net)(x(1), target_category=7)


# --------------------------------------------------------------------------- target layers
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_target_layer_not_inside_the_model(name: str, net: Net) -> None:
    stranger = nn.Conv2d(4, 4, 3, padding=1)  # same type and shape, another object
    with pytest.raises(
        ValueError, match=r"layer Conv2d is not inside the model; pass a module from model\.named_modules\(\)"
    ):
        make_cam(name, net, [stranger])
    with pytest.raises(
        ValueError,
        match=r"layer 'conv9' is not inside the model; pass a name from model\.named_modules\(\) \(for example 'conv1'",
    ):
        make_cam(name, net, ["conv9"])
    with pytest.raises(ValueError, match=r"layer 'layer4\.1' is not inside the model"):
        METHODS[name](net, target_layer="layer4.1")


def test_target_layer_arguments(net: Net) -> None:
    cls = METHODS["gradcam"]
    with pytest.warns(UserWarning, match=r"target_layers not given; using '\w+"):
        cls(net)(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"pass target_layers=\[\.\.\.\] or target_layer=\.\.\., not both"):
        cls(net, [net.conv2], target_layer=net.conv2)
    with pytest.raises(ValueError, match="target_layers is empty; pass at least one module"):
        cls(net, [])
    with pytest.raises(TypeError, match="a target layer must be an nn.Module or a dotted name, not int"):
        cls(net, [3])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, not function"):
        cls(lambda t: t, [net.conv2])


def test_a_layer_given_by_name_works(net: Net) -> None:
    by_name = make_cam("gradcam", net, "conv2")(x(2), [ClassifierOutputTarget(1)] * 2)
    by_module = make_cam("gradcam", net, [net.conv2])(x(2), [ClassifierOutputTarget(1)] * 2)
    np.testing.assert_array_equal(by_name, by_module)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_layer_output_that_is_not_4d_without_reshape_transform(name: str, net: Net) -> None:
    with pytest.raises(
        ValueError,
        match=r"target layer Linear gives activations of shape \(2, 3\), not \(B, C, h, w\); pass reshape_transform=\.\.\. that returns \(B, C, h, w\)",
    ):
        make_cam(name, net, [net.fc])(x(2), [ClassifierOutputTarget(0)] * 2)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_reshape_transform_that_returns_the_wrong_rank(name: str, net: Net) -> None:
    flatten = lambda tensor: tensor.flatten(2)  # noqa: E731 - (B, C, h*w): one dimension short
    with pytest.raises(
        ValueError,
        match=r"gives activations of shape \(2, 4, 64\), not \(B, C, h, w\); the reshape_transform must return \(B, C, h, w\) or \(B, C, d, h, w\)",
    ):
        make_cam(name, net, reshape_transform=flatten)(x(2), [ClassifierOutputTarget(0)] * 2)


def test_reshape_transform_must_be_callable(net: Net) -> None:
    with pytest.raises(TypeError, match="reshape_transform must be a function of a tensor, or None"):
        make_cam("gradcam", net, reshape_transform="vit")


def test_a_layer_that_does_not_run(net: Net) -> None:
    net.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(
        ValueError,
        match=r"target layer Conv2d was not called during the forward pass; choose a module that the model's forward\(\) uses",
    ):
        make_cam("gradcam", net, [net.unused])(x(2))


# --------------------------------------------------------------------------- input tensors
BAD_INPUTS = {
    "numpy": (
        lambda: x(2).numpy(),
        TypeError,
        r"input_tensor must be a torch\.Tensor, not ndarray; use pytorch_grad_cam\.utils\.image\.preprocess_image\(img\)",
    ),
    "list": (lambda: x(2).tolist(), TypeError, r"input_tensor must be a torch\.Tensor, not list"),
    "int": (
        lambda: (x(2) * 100).int(),
        TypeError,
        r"input_tensor must be a float tensor, got torch\.int32; convert it with input_tensor\.float\(\)",
    ),
    "uint8": (
        lambda: torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        TypeError,
        r"got torch\.uint8; convert it with input_tensor\.float\(\)",
    ),
    "bool": (lambda: torch.zeros(2, 3, 8, 8, dtype=torch.bool), TypeError, r"got torch\.bool"),
    "3d": (
        lambda: x(1)[0],
        ValueError,
        r"input_tensor must be \(B, C, H, W\) \(or \(B, C, D, H, W\)\), got shape \(3, 8, 8\); add the batch dimension with input_tensor\[None\]",
    ),
    "2d": (lambda: x(1)[0, 0], ValueError, r"got shape \(8, 8\)"),
    "6d": (lambda: torch.zeros(1, 1, 3, 2, 8, 8), ValueError, r"got shape \(1, 1, 3, 2, 8, 8\)"),
    "empty-batch": (lambda: torch.zeros(0, 3, 8, 8), ValueError, r"input_tensor holds no image \(batch size 0\)"),
    "nan": (
        lambda: x(2).index_put_(
            (torch.tensor([1]), torch.tensor([0]), torch.tensor([2]), torch.tensor([3])), torch.tensor(float("nan"))
        ),
        ValueError,
        r"input_tensor contains NaN or Inf; clean the input first",
    ),
    "inf": (
        lambda: x(2).index_fill_(0, torch.tensor([0]), float("-inf")),
        ValueError,
        r"input_tensor contains NaN or Inf",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_input_tensor(name: str, case: str, net: Net) -> None:
    make_input, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        make_cam(name, net)(make_input())


@pytest.mark.parametrize("case", ["numpy", "int", "3d", "nan"])
def test_guided_backprop_bad_input(case: str, net: Net) -> None:
    make_input, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        GuidedBackpropReLUModel(net)(make_input(), target_category=0)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_non_finite_model_output(name: str, poison: float, net: Net) -> None:
    net.poison = poison
    with pytest.raises(
        ValueError, match=r"the model output contains NaN or Inf for image\(s\) \[0, 1\]; check the input and the model"
    ):
        make_cam(name, net)(x(2))


# --------------------------------------------------------------------------- batch size
@pytest.mark.parametrize("value", [0, -1, 2.5, True, "8", None])
@pytest.mark.parametrize("name", [n for n, cls in METHODS.items() if issubclass(cls, PerturbationCAM)])
def test_batch_size_must_be_a_positive_integer(name: str, value, net: Net) -> None:
    message = rf"batch_size must be a positive integer, got {re.escape(repr(value))}"
    with pytest.raises(ValueError, match=message):
        make_cam(name, net, batch_size=value)
    cam = make_cam(name, net, batch_size=3)
    with pytest.raises(ValueError, match=message):
        cam.batch_size = value
    assert cam.batch_size == 3, "a refused value must not be kept"
    cam.batch_size = np.int64(1)
    assert cam.batch_size == 1 and type(cam.batch_size) is int


# --------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_use_cuda_without_cuda(name: str, net: Net) -> None:
    message = r"use_cuda=True but CUDA is not available on this machine; pass use_cuda=False to compute on the CPU"
    with pytest.raises(RuntimeError, match=message):
        make_cam(name, net, use_cuda=True)
    with pytest.raises(RuntimeError, match=message):
        GuidedBackpropReLUModel(net, use_cuda=True)
    assert all(p.device.type == "cpu" for p in net.parameters())


def test_unknown_method_name() -> None:
    with pytest.raises(ValueError, match=r"unknown method 'gradkam'; choose one of gradcam, gradcam\+\+, scorecam"):
        get_method("gradkam")
    assert get_method("GradCAM") is METHODS["gradcam"]


# --------------------------------------------------------------------------- image utilities
IMG = np.random.default_rng(0).random((8, 10, 3), dtype=np.float32)
MASK = np.random.default_rng(1).random((8, 10), dtype=np.float32)


@pytest.mark.parametrize(
    "img, mask, options, message",
    [
        (
            IMG * 2,
            MASK,
            {},
            r"img must be a float image with values in \[0, 1\] \(got dtype float32, range \[0\.\d+, 1\.\d+\]\); pass np\.float32\(img\) / 255 for a uint8 photo",
        ),
        (
            IMG - 0.5,
            MASK,
            {},
            r"img must be a float image with values in \[0, 1\] \(got dtype float32, range \[-0\.\d+",
        ),
        (np.uint8(IMG * 255), MASK, {}, r"got dtype uint8.*pass np\.float32\(img\) / 255"),
        (IMG[..., 0], MASK, {}, r"img must be \(H, W, 3\), got shape \(8, 10\)"),
        (
            IMG,
            MASK[:, :9],
            {},
            r"mask of shape \(8, 9\) does not match the image's \(8, 10\); compute the CAM on an input of the image's size or resize the mask",
        ),
        (IMG, MASK.T, {}, r"mask of shape \(10, 8\) does not match the image's \(8, 10\)"),
        (IMG, MASK[None], {}, r"mask must be one 2D map, got shape \(1, 8, 10\); pass grayscale_cam\[0\]"),
        (IMG, MASK[0], {}, r"mask must be one 2D map, got shape \(10,\)"),
        (
            IMG,
            MASK * 3,
            {},
            r"mask values must lie in \[0, 1\], got \[0\.\d+, 2\.\d+\]; pass a CAM output or scale_cam_image\(mask\)",
        ),
        (
            np.where(IMG > 0.5, np.nan, IMG),
            MASK,
            {},
            r"img must be a float image with values in \[0, 1\] \(got dtype float32, range \[nan, nan\]\)",
        ),
        (IMG, np.where(MASK > 0.5, np.inf, MASK), {}, r"mask values must lie in \[0, 1\], got \[0\.\d+, inf\]"),
        (IMG, MASK, {"image_weight": 1.5}, r"image_weight must be in \[0, 1\], got 1\.5"),
        (IMG, MASK, {"image_weight": -0.1}, r"image_weight must be in \[0, 1\], got -0\.1"),
    ],
    ids=[
        "img>1",
        "img<0",
        "img-uint8",
        "img-2d",
        "mask-size",
        "mask-transposed",
        "mask-3d",
        "mask-1d",
        "mask>1",
        "img-nan",
        "mask-inf",
        "weight>1",
        "weight<0",
    ],
)
def test_show_cam_on_image_bad_input(img, mask, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        show_cam_on_image(img, mask, **options)


def test_other_utilities_bad_input() -> None:
    with pytest.raises(ValueError, match=r"img must be \(H, W, C\), got shape \(8, 10\)"):
        preprocess_image(IMG[..., 0])
    with pytest.raises(ValueError, match=r"mean and std need 3 entries \(one per channel\), got 2 and 3"):
        preprocess_image(IMG, mean=[0.5, 0.5])
    with pytest.raises(
        ValueError,
        match=r"target_size \(4, 4, 4\) has 3 entries but the maps have 2 spatial dimensions; pass \(width, height\)",
    ):
        scale_cam_image(MASK[None], (4, 4, 4))
    with pytest.raises(
        ValueError, match=r"activations of shape \(2, 3\) have no spatial dimensions; pass a \(B, K, h, w\) batch"
    ):
        get_2d_projection(torch.zeros(2, 3))


def test_errors_are_raised_before_any_work_is_done(net: Net) -> None:
    """Argument errors come before the forward pass: a model that counts its calls
    is never run for a bad input or bad targets."""
    calls = []
    net.conv1.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    for name in METHOD_NAMES:
        cam = make_cam(name, net)
        with pytest.raises(ValueError):
            cam(x(2), [ClassifierOutputTarget(0)] * 3)
        with pytest.raises(TypeError):
            cam(x(2).numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError):
                cam(x(1)[0])
    assert calls == []


def test_a_layer_whose_rows_are_not_the_images_is_an_error():
    """A layer that runs on heads folded into the batch gives more rows than images: an
    error, not that many maps."""
    import torch
    from torch import nn

    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Folded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.per_head = nn.Conv2d(2, 2, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            heads = self.per_head(y.reshape(-1, 2, *y.shape[2:]))  # (2B, 2, h, w)
            return self.fc(heads.reshape(y.shape).mean(dim=(2, 3)))

    model = Folded().eval()
    with pytest.raises(ValueError, match=r"gives 4 rows for 2 input image\(s\)"):
        GradCAM(model, [model.per_head])(torch.rand(2, 3, 8, 8), [ClassifierOutputTarget(0)] * 2)
