"""BaseCAM.explain_targets: one image, several targets. For every method its maps equal
the batched call with the image repeated once per target; the gradient methods get them
from one forward pass of one image; autograd's vectorised backward and its per-score
fallback agree; errors; the model is left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, GradCAM, HiResCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.several_targets import _batched_vjp, shares_one_forward
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

CLASSES = (0, 2, 3)
#: Methods that take the repeated image (they override the record step's hooks, need the
#: input's gradient, or perturb the input); every other gradient method shares one forward.
REPEATED = {
    "fullgrad", "shapleycam", "finercam", "refinecam", "scorecam", "ablationcam", "sscam", "iscam", "cam", "smoothgradcam++"
}  # fmt: skip
#: Methods whose map does not depend on the target: computed once.
TARGET_FREE = {"eigencam", "kpcacam", "fem"}


class Net(nn.Module):
    """conv -> ReLU -> conv (target) -> ReLU -> GAP -> Linear: a small CNN with 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net() -> Net:
    return Net().eval()


def image() -> torch.Tensor:
    return torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def targets():
    return [ClassifierOutputTarget(c) for c in CLASSES]


def test_the_method_sets_above_are_the_registry():
    """The tables of this file name every registered method exactly once."""
    assert REPEATED | TARGET_FREE <= set(CNN_METHODS) and not REPEATED & TARGET_FREE
    shared = {name for name in CNN_METHODS if shares_one_forward(METHODS[name](Net(), ["features.2"]), BaseCAM)}
    assert shared == set(CNN_METHODS) - REPEATED - TARGET_FREE
    assert {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam"} <= shared


@pytest.mark.parametrize("name", sorted(CNN_METHODS))
def test_maps_equal_the_call_on_the_repeated_image(net, name):
    kwargs = {"progress": False} if name in {"scorecam", "ablationcam", "sscam", "iscam"} else {}
    cam = METHODS[name](net, [net.features[2]], **kwargs)
    several = cam.explain_targets(image(), targets())
    assert several.shape == (len(CLASSES), 12, 12) and several.dtype == np.float32
    if name == "randomcam":  # random weights per row: maps of the one forward's activations
        assert several.min() >= 0 and several.max() <= 1 and np.abs(several[0] - several[1]).max() > 0.05
        return
    repeated = cam(image().repeat(len(CLASSES), 1, 1, 1), targets())
    # float32 rounding of a batch of 1 against a batch of 3 (measured up to 2e-6)
    np.testing.assert_allclose(several, repeated, atol=2e-5, rtol=0)
    if name not in TARGET_FREE | REPEATED:
        assert np.abs(several[0] - several[1]).max() > 0.05  # each map is its own target's


@pytest.mark.parametrize("name", ["gradcam", "hirescam", "layercam"])
def test_gradient_methods_run_one_forward_of_one_image(net, name):
    batches = []
    handle = net.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].shape[0]))
    try:
        METHODS[name](net, [net.features[2]]).explain_targets(image(), targets())
    finally:
        handle.remove()
    assert batches == [1]


def test_the_gradients_are_each_targets_own(net):
    """Against torch.autograd.grad of each class's score at the layer, by hand (GradCAM)."""
    captured = []
    handle = net.features[2].register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        logits = net(image())
    finally:
        handle.remove()
    expected = []
    for c in CLASSES:
        (grads,) = torch.autograd.grad(logits[0, c], captured[0], retain_graph=True)
        cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * captured[0]).sum(dim=1))[0].detach()
        for _ in range(2):  # min-max per layer, then after the layers' mean (one layer here)
            cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        expected.append(cam)
    maps = GradCAM(net, [net.features[2]]).explain_targets(image(), targets())
    # the layer's grid is the input's size: resizing changes nothing
    np.testing.assert_allclose(maps, torch.stack(expected).numpy(), atol=1e-5, rtol=0)


class NotVectorisable(torch.autograd.Function):
    """Identity whose backward leaves torch (numpy): autograd cannot vectorise it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(grad.numpy().copy())


def test_backward_falls_back_to_one_pass_per_score_where_autograd_cannot_vectorise():
    x = torch.randn(5, requires_grad=True)
    plain = torch.stack([(x * 2).sum(), (x**2).sum()])
    barrier = NotVectorisable.apply(x)
    odd = torch.stack([(barrier * 2).sum(), (barrier**2).sum()])
    (vectorised,) = _batched_vjp(plain, [x], vectorise=True)
    (fallen_back,) = _batched_vjp(odd, [x], vectorise=True)
    barrier = NotVectorisable.apply(x)  # the graph again: the passes above freed it
    (one_by_one,) = _batched_vjp(torch.stack([(barrier * 2).sum(), (barrier**2).sum()]), [x])  # the CPU's default
    expected = torch.stack([torch.full((5,), 2.0), 2 * x.detach()])
    for grads in (vectorised, fallen_back, one_by_one):
        torch.testing.assert_close(grads, expected)


def test_model_left_as_found(net):
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        HiResCAM(net, [net.features[2]]).explain_targets(image(), targets())
        assert all(module.training for module in net.modules())
    finally:
        net.eval()
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    for module in net.modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def test_errors_name_the_fix(net):
    cam = GradCAM(net, [net.features[2]])
    with pytest.raises(ValueError, match="one image"):
        cam.explain_targets(image().repeat(2, 1, 1, 1), targets())
    with pytest.raises(ValueError, match="targets is empty"):
        cam.explain_targets(image(), [])
    with pytest.raises(TypeError, match="one target per image"):
        cam.explain_targets(image(), ClassifierOutputTarget(1))
    with pytest.raises(IndexError):
        cam.explain_targets(image(), [ClassifierOutputTarget(1), ClassifierOutputTarget(9)])
    frozen = GradCAM(net, [net.features[0]])  # a layer the head reads: fine
    assert frozen.explain_targets(image(), targets()).shape == (3, 12, 12)


#: The masked-copy methods, with few draws (the grouping does not depend on them).
MASKED_COPIES = {"scorecam": {}, "sscam": {"num_samples": 2}, "iscam": {"num_samples": 3}}


def masked_copy_rows(net, cam, call):
    """The rows the model sees during ``call(cam)``: the record pass, then the copies."""
    rows = []
    handle = net.register_forward_pre_hook(lambda module, inputs: rows.append(inputs[0].shape[0]))
    try:
        maps = call(cam)
    finally:
        handle.remove()
    return maps, sum(rows)


@pytest.mark.parametrize("name", sorted(MASKED_COPIES))
def test_masked_copy_methods_mask_a_repeated_image_once_and_score_each_target_on_the_copies(net, name):
    cam = METHODS[name](net, [net.features[2]], progress=False, **MASKED_COPIES[name])
    alone, rows_alone = masked_copy_rows(net, cam, lambda c: np.concatenate([c(image(), [t]) for t in targets()]))
    several, rows = masked_copy_rows(net, cam, lambda c: c.explain_targets(image(), targets()))
    np.testing.assert_allclose(several, alone, atol=1e-6, rtol=0)
    one_target = rows_alone // len(CLASSES)
    # the record pass's row, then 8 distinct masks (no constant channel) x the draws
    assert one_target == 1 + 8 * MASKED_COPIES[name].get("num_samples", 1)
    # the record pass holds the 3 copies; the masked copies run once, not once per target
    assert rows == one_target + len(CLASSES) - 1


def test_sscam_with_a_shared_generator_draws_each_rows_own_noise(net):
    """seed=None: each row of a repeated image draws its own noise from torch's generator,
    in order (the draws of the batched call with the image repeated), so its copies run
    once per target."""
    cam = METHODS["sscam"](net, [net.features[2]], progress=False, num_samples=2, seed=None)
    torch.manual_seed(0)
    first, rows = masked_copy_rows(net, cam, lambda c: c.explain_targets(image(), targets()[:2]))
    assert rows == 2 + 2 * 2 * 8  # the record pass, then 2 rows x 2 samples x 8 channels
    torch.manual_seed(0)
    together = cam(image().repeat(2, 1, 1, 1), targets()[:2])
    # float32 rounding of the record pass's batch (measured up to 3e-7)
    np.testing.assert_allclose(first, together, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    alone = cam(image(), targets()[:1])
    np.testing.assert_allclose(first[0], alone[0], atol=1e-6, rtol=0)
