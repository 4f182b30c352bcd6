"""sparse_backward: a concatenation whose backward pass skips the parts a score does not
read (only inside skipping_zero_parts), the graph test that tells such a part from a
layer outside the score's graph, and explain_targets on a model that uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam import sparse_backward as sb


def test_cat_is_torch_cat_outside_the_context_and_skips_zero_parts_inside():
    a, b = torch.randn(2, 3, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    plain = sb.cat([a, b], dim=1)
    assert torch.equal(plain, torch.cat([a, b], dim=1)) and type(plain.grad_fn).__name__ == "CatBackward0"
    grads = torch.autograd.grad(plain[:, :2].sum(), [a, b], allow_unused=True)
    assert grads[1] is not None and not grads[1].any()  # a dense zero
    with sb.skipping_zero_parts():
        assert sb.skipping()
        joined = sb.cat([a, b], dim=1)
    assert not sb.skipping()
    assert torch.equal(joined, plain.detach())
    only_a = torch.autograd.grad(joined[:, :2].sum(), [a, b], allow_unused=True)
    assert torch.equal(only_a[0], torch.tensor([[1.0, 1, 0], [1, 1, 0]])) and only_a[1] is None
    both = torch.autograd.grad(joined.sum(), [a, b])
    assert torch.equal(both[1], torch.ones(2, 4))


def test_in_graph_follows_the_nodes_not_the_values():
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    z = torch.randn(3, requires_grad=True) * 3
    with sb.skipping_zero_parts():
        joined = sb.cat([y, z])
    score = joined[:3].sum()
    assert sb.in_graph(score, y) and sb.in_graph(score, z) and sb.in_graph(score, x)  # z: a path of zeros
    assert not sb.in_graph(score, torch.randn(3, requires_grad=True) + 1)


class TwoLevels(nn.Module):
    """A trunk, two "pyramid levels", their outputs joined by sparse_backward.cat (as the
    YOLO adapter joins its levels' class logits), and an unread side branch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Conv2d(3, 4, 3, padding=1)
        self.level_a = nn.Conv2d(4, 2, 3, padding=1)
        self.level_b = nn.Conv2d(4, 2, 3, stride=2, padding=1)
        self.side = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.trunk(x))
        self.side(features)  # computed, never read
        parts = [self.level_a(features).flatten(1), self.level_b(features).flatten(1)]
        return sb.cat(parts, dim=1)  # (B, 2*64 + 2*16)


class Position:
    """The size of the output at one position (a level's cell): a target that reads one
    level only (its gradient times the activation is |activation| there: a map that is not 0)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., self.index].abs()


def test_explain_targets_takes_a_skipped_level_as_zeros_and_an_unread_layer_as_an_error():
    model = TwoLevels().eval()
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = [Position(5), Position(40), Position(130)]  # levels a, a, b
    cam = HiResCAM(model, [model.level_a, model.level_b])
    several = cam.explain_targets(image, targets)
    alone = np.concatenate([cam(image, [target]) for target in targets])  # plain cat: dense zeros
    np.testing.assert_allclose(several, alone, atol=1e-6, rtol=0)
    assert several[0].max() > 0.5 and several[2].max() > 0.5
    only_a = HiResCAM(model, [model.level_b]).explain_targets(image, targets[:2])  # no target reads level b
    assert only_a.shape == (2, 8, 8) and not only_a.any()
    with pytest.raises(ValueError, match="does not depend on target layer 'side'"):
        GradCAM(model, [model.level_a, model.side]).explain_targets(image, targets)
