"""Guided backpropagation through ReLU6 (nn.ReLU6, F.relu6), as in MobileNet and
EfficientNet-Lite: the gradient passes only where 0 < input < 6 and it is positive."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytorch_grad_cam import GuidedBackpropReLUModel


class _Functional(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


@pytest.mark.parametrize("activation", [nn.ReLU6(), nn.ReLU6(inplace=True), _Functional()])
def test_relu6_is_guided(activation: nn.Module) -> None:
    torch.manual_seed(0)
    head = nn.Linear(2 * 4 * 4, 3)
    model = nn.Sequential(activation, nn.Flatten(), head).eval()
    x = torch.linspace(-3, 9, 32).reshape(1, 2, 4, 4)
    gradient = GuidedBackpropReLUModel(model)(x, target_category=1)
    weights = head.weight[1].detach().reshape(2, 4, 4)
    expected = weights * ((x[0] > 0) & (x[0] < 6)) * (weights > 0)
    np.testing.assert_allclose(gradient, expected.permute(1, 2, 0).numpy(), atol=1e-7)


def test_other_hardtanh_is_left_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Hardtanh(-1.0, 1.0), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.linspace(-2, 2, 8).reshape(1, 2, 2, 2).requires_grad_(True)
    model(x)[0, 0].backward()
    gradient = GuidedBackpropReLUModel(model)(x.detach(), target_category=0)
    np.testing.assert_allclose(gradient, x.grad[0].permute(1, 2, 0).numpy(), atol=1e-7)


# ---------------------------------------------------------------- in-place ReLUs as statements
IN_PLACE = {
    "Tensor.relu_": lambda x: x.relu_(),
    "torch.relu_": lambda x: torch.relu_(x),
    "F.relu_": lambda x: F.relu_(x),
    "F.relu(inplace=True)": lambda x: F.relu(x, inplace=True),
    "F.relu(x, True)": lambda x: F.relu(x, True),
    "nn.ReLU(inplace=True)": nn.ReLU(inplace=True),
}


class _StatementReLUs(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> linear, each ReLU written as a statement whose
    return value is dropped: only the in-place change of ``x`` carries it forward."""

    def __init__(self, activation) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 5 * 5, 3)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        self.activation(x)
        x = self.conv2(x)
        self.activation(x)
        return self.head(x.flatten(1))


def _written_out_guided_gradient(model: _StatementReLUs, x: torch.Tensor, category: int):
    """The guided rule applied by hand at each ReLU (grad · [input > 0] · [grad > 0]),
    with autograd only through the linear layers; and the ordinary forward output."""
    image = x.clone().requires_grad_(True)
    pre1 = model.conv1(image)
    post1 = pre1.detach().clamp(min=0).requires_grad_(True)
    pre2 = model.conv2(post1)
    post2 = pre2.detach().clamp(min=0).requires_grad_(True)
    output = model.head(post2.flatten(1))
    (grad_post2,) = torch.autograd.grad(output[0, category], post2)
    grad_pre2 = grad_post2 * (pre2 > 0) * (grad_post2 > 0)
    (grad_post1,) = torch.autograd.grad(pre2, post1, grad_pre2)
    grad_pre1 = grad_post1 * (pre1 > 0) * (grad_post1 > 0)
    (grad_image,) = torch.autograd.grad(pre1, image, grad_pre1)
    return grad_image[0].permute(1, 2, 0).numpy(), output.detach()


@pytest.mark.parametrize("activation", list(IN_PLACE.values()), ids=list(IN_PLACE))
def test_in_place_relu_statements_are_guided(activation) -> None:
    torch.manual_seed(0)
    model = _StatementReLUs(activation).eval()
    x = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    expected, expected_output = _written_out_guided_gradient(model, x, category=2)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected_output.numpy(), atol=1e-6)  # the model is as written
    # the guided rule differs from the plain gradient here, so this checks the guiding itself
    plain = x.clone().requires_grad_(True)
    model(plain)[0, 2].backward()
    assert np.abs(plain.grad[0].permute(1, 2, 0).numpy() - expected).max() > 1e-3

    guided = GuidedBackpropReLUModel(model)
    gradient = guided(x, target_category=2)
    np.testing.assert_allclose(gradient, expected, atol=1e-6)

    # the forward pass under guiding computes the model's own output
    from pytorch_grad_cam.guided_backprop import _GuidedReLUMode

    with _GuidedReLUMode(), torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected_output.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "activation",
    [lambda x: F.relu6(x, inplace=True), lambda x: F.hardtanh_(x, 0.0, 6.0), lambda x: F.hardtanh(x, 0.0, 6.0, True)],
    ids=["F.relu6(inplace=True)", "F.hardtanh_", "F.hardtanh(inplace)"],
)
def test_in_place_relu6_statements_are_guided(activation) -> None:
    head = nn.Linear(2 * 4 * 4, 3)
    torch.manual_seed(0)

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x * 1.0  # not the leaf input
            activation(x)
            return self.head(x.flatten(1))

    x = torch.linspace(-3, 9, 32).reshape(1, 2, 4, 4)
    gradient = GuidedBackpropReLUModel(Model().eval())(x, target_category=1)
    weights = head.weight[1].detach().reshape(2, 4, 4)
    expected = weights * ((x[0] > 0) & (x[0] < 6)) * (weights > 0)
    np.testing.assert_allclose(gradient, expected.permute(1, 2, 0).numpy(), atol=1e-7)


def test_guided_backprop_computes_in_eval_mode_and_restores_modes() -> None:
    """docs/decisions.md, D11 and G2: a train-mode model (dropout, BatchNorm)
    gives the eval-mode gradient, keeps its BatchNorm statistics and every flag;
    ``device=`` is accepted and ``forward`` returns the model output."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    expected = GuidedBackpropReLUModel(model, device="cpu")(x, target_category=1)
    model.train()
    model[1].eval()  # a mixed-mode model stays mixed
    flags = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    guided = GuidedBackpropReLUModel(model, device=torch.device("cpu"))
    np.testing.assert_array_equal(guided(x, target_category=1), expected)
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model[1].running_mean, stats)
    model.eval()  # forward() is the model's own call, in the model's own mode
    with torch.no_grad():
        torch.testing.assert_close(guided.forward(x), model(x))
