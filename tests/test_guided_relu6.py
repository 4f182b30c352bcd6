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
