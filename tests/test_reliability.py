"""Reliability: what a CAM call leaves behind (nothing), what it tolerates (the
caller's grad mode, frozen weights, in-place operations, threads, degenerate
inputs), and that it keeps no memory between calls.

Every test here is built so that it fails when the property does not hold: hook
checks also look *during* a call (so that "no hooks" is not trivially true), and
the grad-mode / in-place tests compare against the maps of the plain case.
"""

from __future__ import annotations

import ast
import copy
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
import warnings
import weakref
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_reference import finish_layer, min_max, pc_projection
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, GuidedBackpropReLUModel, PerturbationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

REPO = Path(__file__).resolve().parents[1]
METHOD_NAMES = list(CNN_METHODS)
GRADIENT_METHODS = [name for name, cls in CNN_METHODS.items() if cls.uses_gradients]
#: Class-agnostic methods never call their targets: they map the activations alone.
CLASS_AGNOSTIC = {"eigencam", "fem", "kpcacam"}
#: RandomCAM draws new weights on every call, so two calls never give the same map,
#: and its map does not depend on the gradient it is given: left out of the tests
#: that compare two calls or expect a zero gradient to give a zero map.
RANDOM_WEIGHTS = {"randomcam"}
DETERMINISTIC_METHODS = [name for name in METHOD_NAMES if name not in RANDOM_WEIGHTS]
#: CAM weights channels by the classifier's row of a class: a target that names no
#: class is an error for it.
CLASS_ROW_METHODS = {"cam"}


# --------------------------------------------------------------------------- helpers
def make_cam(name: str, model: nn.Module, layers, **kwargs):
    """A registry method with the progress bar off and small perturbation batches."""
    cls = METHODS[name]
    if issubclass(cls, PerturbationCAM):
        kwargs.setdefault("progress", False)
        kwargs.setdefault("batch_size", 4)
    if name == "sscam":  # 4 noisy masks per channel, not 35: these tests check the engine, not the noise
        kwargs.setdefault("num_samples", 4)
    return cls(model, layers, **kwargs)


class Abort(BaseException):
    """A KeyboardInterrupt-like exception that ``except Exception`` would not catch."""


class RaisingTarget:
    """ClassifierOutputTarget(category) that raises ``error`` on its ``on_call``-th call."""

    def __init__(self, category: int, error: BaseException, on_call: int = 1) -> None:
        self.inner = ClassifierOutputTarget(category)
        self.error = error
        self.on_call = on_call
        self.calls = 0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.on_call:
            raise self.error
        return self.inner(output)


class HookProbe(nn.Module):
    """Identity that records, at every forward, how many forward hooks the watched
    module carries, and raises ``error`` on the ``raise_on``-th forward if armed."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: List[nn.Module] = []  # a list, so not registered as a child
        self.seen: List[int] = []
        self.raise_on = 0
        self.error: BaseException = Abort("probe")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(sum(len(m._forward_hooks) for m in self.watched))
        if self.raise_on and len(self.seen) == self.raise_on:
            raise self.error
        return x


class StateNet(nn.Module):
    """A small CNN with state to disturb: BatchNorm statistics, in-place ReLUs, a
    probe after the target layer ``conv2``."""

    def __init__(self, channels: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.probe = HookProbe()
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        self.probe.watched.append(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = self.relu2(self.probe(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def state_net(seed: int = 0) -> StateNet:
    """A StateNet in eval mode with non-trivial BatchNorm statistics, one submodule
    left in train mode, one frozen layer and one pre-existing .grad (all must survive)."""
    torch.manual_seed(seed)
    model = StateNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    model.fc.train()  # a mixed-mode model: no effect on the output, but must stay so
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)
    return model


def _hook_keys(container: object) -> object:
    return tuple(container.keys()) if isinstance(container, dict) else container


def hook_state(model: nn.Module) -> Dict[object, object]:
    """Every hook that could be left behind: module hooks of all kinds, tensor hooks on
    parameters and buffers, torch's global module hooks, active torch-function modes."""
    state: Dict[object, object] = {}
    for name, module in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
        ):
            state[(name, attr)] = _hook_keys(getattr(module, attr, {}))
        state[(name, "forward in __dict__")] = "forward" in module.__dict__
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        state[(name, "tensor hooks")] = (
            _hook_keys(tensor._backward_hooks or {}),
            _hook_keys(getattr(tensor, "_post_accumulate_grad_hooks", None) or {}),
        )
    from torch.nn.modules import module as module_module

    for attr in dir(module_module):
        if attr.startswith("_global_") and "hook" in attr:
            state[("global", attr)] = _hook_keys(getattr(module_module, attr))
    state["torch function modes"] = torch._C._len_torch_function_stack()
    return state


def model_state(model: nn.Module) -> Dict[str, object]:
    """Module objects and modes, parameter flags/values/grads, buffers, hooks."""
    return {
        "modules": [(name, id(m), type(m), m.training) for name, m in model.named_modules()],
        "relus": [(name, m.inplace) for name, m in model.named_modules() if isinstance(m, nn.ReLU)],
        "params": [
            (name, id(p), p.requires_grad, p.detach().clone(), None if p.grad is None else p.grad.clone())
            for name, p in model.named_parameters()
        ],
        "buffers": [(name, b.clone()) for name, b in model.named_buffers()],
        "hooks": hook_state(model),
    }


def assert_same_state(before: Dict[str, object], after: Dict[str, object]) -> None:
    assert after["modules"] == before["modules"], "a module was swapped or its mode changed"
    assert after["relus"] == before["relus"]
    assert after["hooks"] == before["hooks"], "a hook was left behind (or one of the user's removed)"
    for (name, pid, flag, value, grad), (name2, pid2, flag2, value2, grad2) in zip(before["params"], after["params"]):
        assert (name2, pid2, flag2) == (name, pid, flag), f"parameter {name} changed identity or requires_grad"
        assert torch.equal(value2, value), f"parameter {name} changed value"
        if grad is None:
            assert grad2 is None, f"the CAM call populated {name}.grad"
        else:
            assert grad2 is not None and torch.equal(grad2, grad), f"{name}.grad changed"
    for (name, value), (_, value2) in zip(before["buffers"], after["buffers"]):
        assert torch.equal(value2, value), f"buffer {name} changed (BatchNorm statistics?)"


def image(batch: int = 1, size=(16, 16), seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)


def assert_valid_maps(maps: np.ndarray, shape) -> None:
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == tuple(shape)
    assert np.isfinite(maps).all(), "NaN/Inf in a map"
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


# =========================================================================== hooks
EXIT_PATHS = ["with", "release", "garbage-collected", "exception-in-with"]


@pytest.mark.parametrize("exit_path", EXIT_PATHS)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_hooks_live_during_a_call_and_are_gone_after(name: str, exit_path: str) -> None:
    model = state_net()
    user_calls = []
    model.conv2.register_forward_hook(lambda m, i, o: user_calls.append(1))  # the user's own
    before = model_state(model)
    x = image()
    error = Abort("raised by the user inside the with block")

    if exit_path == "with":
        with make_cam(name, model, [model.conv2]) as cam:
            cam(x, [ClassifierOutputTarget(1)])
    elif exit_path == "release":
        cam = make_cam(name, model, [model.conv2])
        cam(x, [ClassifierOutputTarget(1)])
        cam.release()
        assert cam.outputs is None
    elif exit_path == "garbage-collected":
        cam = make_cam(name, model, [model.conv2])
        cam(x, [ClassifierOutputTarget(1)])
        alive = weakref.ref(cam)
        del cam
        gc.collect()
        assert alive() is None, "the CAM object is kept alive by something (a hook?)"
    else:
        with pytest.raises(Abort) as caught:
            with make_cam(name, model, [model.conv2]) as cam:
                cam(x, [ClassifierOutputTarget(1)])
                raise error
        assert caught.value is error, "the exception was replaced"

    # The check can fail: our hook was on the target layer during the main forward
    # pass (the user's own hook makes one; ours a second).
    assert model.probe.seen and model.probe.seen[0] == 2, model.probe.seen
    model.probe.seen.clear()
    assert_same_state(before, model_state(model))
    user_calls.clear()
    model(x)
    assert user_calls == [1], "the user's own hook was removed"
    assert model.probe.seen == [1]


EXCEPTIONS = [Abort("a custom BaseException"), KeyboardInterrupt(), ValueError("a plain error")]


@pytest.mark.parametrize(
    "source, error",
    [("target", error) for error in EXCEPTIONS] + [("model", Abort("raised in the forward pass"))],
    ids=[f"target-{type(e).__name__}" for e in EXCEPTIONS] + ["model-Abort"],
)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_an_exception_propagates_unchanged(name: str, source: str, error: BaseException) -> None:
    """Raised by a target, or by the model during the hooked forward pass."""
    if source == "target" and name in CLASS_AGNOSTIC:
        pytest.skip(f"{name} is class-agnostic: it never calls its targets")
    model = state_net()
    before = model_state(model)
    cam = make_cam(name, model, [model.conv2])
    targets = [ClassifierOutputTarget(1)]
    if source == "target":
        targets = [RaisingTarget(1, error, on_call=1)]
    else:
        model.probe.raise_on, model.probe.error = 1, error
    with pytest.raises(type(error)) as caught:
        cam(image(), targets)
    assert caught.value is error
    model.probe.raise_on = 0
    model.probe.seen.clear()
    assert_same_state(before, model_state(model))
    # The object is still usable after the failure.
    assert_valid_maps(cam(image(), [ClassifierOutputTarget(1)]), (1, 16, 16))


@pytest.mark.parametrize(
    "name, options",
    [("scorecam", {}), ("ablationcam", {}), ("ablationcam", {"tail_only": False})],
    ids=["scorecam", "ablationcam-tail", "ablationcam-whole-model"],
)
def test_failure_midway_through_perturbation_passes_leaves_model_as_found(name, options) -> None:
    """A target raising on its 3rd call, and the model itself raising on its 3rd
    forward (while AblationCAM's fallback replaces the layer output by a hook; the
    fx tail does not re-run the model, so only the target can fail there)."""
    reruns_the_model = not (name == "ablationcam" and options.get("tail_only", True))
    for where in ("target", "model") if reruns_the_model else ("target",):
        model = state_net()
        before = model_state(model)
        error = Abort(f"{where} fails mid-way")
        cam = make_cam(name, model, [model.conv2], batch_size=2, **options)
        targets = [ClassifierOutputTarget(1)]
        if where == "target":
            targets = [RaisingTarget(1, error, on_call=3)]
        else:
            model.probe.raise_on = 3
            model.probe.error = error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Abort) as caught:
                cam(image(), targets)
        assert caught.value is error
        if where == "target":
            assert targets[0].calls == 3
        else:
            assert len(model.probe.seen) == 3
        model.probe.raise_on = 0
        model.probe.seen.clear()
        assert_same_state(before, model_state(model))


# =========================================================================== model state
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_model_state_left_as_found(name: str) -> None:
    model = state_net()
    before = model_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an eval-mode model gives no warning
        maps = make_cam(name, model, [model.conv2])(image(2), [ClassifierOutputTarget(0)] * 2)
    assert_valid_maps(maps, (2, 16, 16))
    model.probe.seen.clear()
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "ablationcam"])
def test_train_mode_computes_in_eval_mode_and_every_mode_is_restored(name: str) -> None:
    """docs/decisions.md, D3: a model left in train mode gives the eval-mode model's map,
    without a warning; its BatchNorm statistics do not move, and every submodule gets
    its own flag back (a mixed-mode model stays mixed), also when the call raises
    midway (a target failing on its 3rd call: inside the extra passes of
    ScoreCAM/AblationCAM)."""
    x, chosen = image(2), [ClassifierOutputTarget(0)] * 2
    expected = make_cam(name, state_net(), ["conv2"])(x, chosen)
    model = state_net().train()
    model.conv2.eval()  # mixed: one submodule in eval mode inside a train-mode model
    before = model_state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = make_cam(name, model, [model.conv2])(x, chosen)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert maps.reshape(2, -1).max(axis=1).min() > 0.999
    model.probe.seen.clear()
    assert_same_state(before, model_state(model))  # modes, BatchNorm buffers, grads, hooks
    error = Abort("fails midway")
    target = RaisingTarget(0, error, on_call=1 if name == "gradcam" else 3)
    options = {} if name == "gradcam" else {"batch_size": 2}
    with pytest.raises(Abort) as caught:
        make_cam(name, model, [model.conv2], **options)(x[:1], [target])
    assert caught.value is error and target.calls == target.on_call
    model.probe.seen.clear()
    assert_same_state(before, model_state(model))


def test_guided_backprop_leaves_model_and_relus_as_found() -> None:
    model = state_net()
    before = model_state(model)
    relus = [(id(m), m.inplace) for m in model.modules() if isinstance(m, nn.ReLU)]
    gradient = GuidedBackpropReLUModel(model)(image(), target_category=1)
    assert gradient.shape == (16, 16, 3) and np.isfinite(gradient).all()
    with pytest.raises(IndexError):
        GuidedBackpropReLUModel(model)(image(), target_category=99)
    model.probe.seen.clear()
    assert_same_state(before, model_state(model))
    assert [(id(m), m.inplace) for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert torch._C._len_torch_function_stack() == 0


def plain_input_gradient(model: nn.Module, x: torch.Tensor, category: int) -> np.ndarray:
    x = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x)[0, category], x)
    return gradient[0].permute(1, 2, 0).numpy()


class _HandGuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients, where its input is positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _HandGuidedReLUModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _HandGuidedReLU.apply(x)


def hand_guided_gradient(model: StateNet, x: torch.Tensor, category: int) -> np.ndarray:
    """Guided backpropagation by hand: the input gradient of a copy of ``model`` whose
    two ReLUs are replaced by _HandGuidedReLU, (H, W, C)."""
    guided = copy.deepcopy(model)
    guided.relu = _HandGuidedReLUModule()
    guided.relu2 = _HandGuidedReLUModule()
    return plain_input_gradient(guided, x, category)


def test_guided_backprop_is_guided_only_inside_its_call() -> None:
    """The guided ReLU is really applied (the gradient equals guided backpropagation by
    hand, and differs from the plain one), and ordinary autograd is back after."""
    model = state_net()
    x = image()
    plain_before = plain_input_gradient(model, x, 1)
    guided = GuidedBackpropReLUModel(model)(x, target_category=1)
    plain_after = plain_input_gradient(model, x, 1)
    np.testing.assert_allclose(guided, hand_guided_gradient(model, x, 1), atol=1e-6, rtol=0)
    assert np.abs(guided - plain_before).max() > 0.1 * np.abs(plain_before).max()
    np.testing.assert_array_equal(plain_after, plain_before)


# =========================================================================== grad modes
GRAD_MODES = ["no_grad", "inference_mode", "input-from-inference_mode", "frozen", "frozen+no_grad"]


def _run_in_mode(mode: str, run, model: nn.Module, x: torch.Tensor):
    if mode.startswith("frozen"):
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    if mode.endswith("no_grad"):
        with torch.no_grad():
            return run(model, x)
    if mode == "inference_mode":
        with torch.inference_mode():
            return run(model, x)
    if mode == "input-from-inference_mode":
        with torch.inference_mode():
            x = x.clone()
        assert x.is_inference()
    return run(model, x)


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("name", DETERMINISTIC_METHODS)
def test_maps_equal_under_the_callers_grad_mode(name: str, mode: str) -> None:
    x = image(2)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]

    def run(model, x):
        return make_cam(name, model, [model.conv2])(x, targets)

    expected = run(state_net(), x)
    assert expected.max() > 0.99, "the plain case must give a real map"
    model = state_net()
    got = _run_in_mode(mode, run, model, x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert model.fc.weight.grad is not None and bool((model.fc.weight.grad == 7).all())
    if mode.startswith("frozen"):
        assert all(p.grad is None for n, p in model.named_parameters() if n != "fc.weight")


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_guided_backprop_equal_under_the_callers_grad_mode(mode: str) -> None:
    x = image()

    def run(model, x):
        return GuidedBackpropReLUModel(model)(x, target_category=2)

    expected = run(state_net(), x)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(_run_in_mode(mode, run, state_net(), x), expected, atol=1e-6)


class InPlaceAfterLayer(nn.Module):
    """conv2 (the target layer) is followed by in-place operations that would corrupt a
    recorded activation (with ``in_place``) or by the same operations out of place."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.in_place = in_place
        self.eval()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv2(F.relu(self.conv1(x)))
        if self.in_place:
            a = F.relu_(a.mul_(-2.0).add_(0.5))
        else:
            a = F.relu(a.mul(-2.0).add(0.5))
        return self.fc(a.mean(dim=(2, 3)))


@pytest.mark.parametrize("name", DETERMINISTIC_METHODS)
def test_in_place_ops_after_the_layer_do_not_corrupt_the_record(name: str) -> None:
    x = image(2)
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    models = [InPlaceAfterLayer(in_place).eval() for in_place in (False, True)]
    maps = [make_cam(name, m, [m.conv2])(x, targets) for m in models]
    assert maps[0].max() > 0.99
    np.testing.assert_allclose(maps[1], maps[0], atol=1e-5)


def _basic_block_out_of_place(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + identity)


@pytest.fixture(scope="module")
def resnet18_out_of_place(resnet18):
    """The same ResNet-18 with every in-place operation made out of place (a copy)."""
    from torchvision.models.resnet import BasicBlock

    model = copy.deepcopy(resnet18)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
        if isinstance(module, BasicBlock):
            module.forward = types.MethodType(_basic_block_out_of_place, module)
    return model


@pytest.mark.parametrize("name", ["gradcam", "eigencam"])
def test_torchvision_resnet_in_place_relus_and_residual_add(name: str, resnet18, resnet18_out_of_place) -> None:
    """layer3.1.bn2 is followed by `out += identity` and ReLU(inplace=True). (The
    recording mechanism is shared by all methods; all of them are checked on a small
    model in test_in_place_ops_after_the_layer_do_not_corrupt_the_record.)"""
    layer = "layer3.1.bn2"
    x = image(2, (64, 64))
    targets = [ClassifierOutputTarget(5), ClassifierOutputTarget(7)]
    before = model_state(resnet18)
    got = make_cam(name, resnet18, layer)(x, targets)
    expected = make_cam(name, resnet18_out_of_place, layer)(x, targets)
    assert expected.max() > 0.99
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert_same_state(before, model_state(resnet18))


def test_eigencam_records_the_true_layer_output_before_in_place_ops(resnet18) -> None:
    """An independent reference: the projection of bn2's output recorded by a clone."""
    x = image(1, (64, 64))
    block = resnet18.layer3[1]
    recorded = []
    handle = block.bn2.register_forward_hook(lambda m, i, o: recorded.append(o.detach().clone()))
    try:
        with torch.no_grad():
            resnet18(x)
    finally:
        handle.remove()
    # The reference's own principal component (numpy SVD), ReLU, min-max, OpenCV resize.
    expected = min_max(finish_layer(pc_projection(recorded[0][0].double().numpy()), (64, 64)))
    assert expected.max() > 0.99 and expected.std() > 0.05
    got = make_cam("eigencam", resnet18, [block.bn2])(x)
    np.testing.assert_allclose(got, expected[None], atol=1e-5)


@pytest.mark.parametrize(
    "name, options",
    [("scorecam", {}), ("ablationcam", {}), ("ablationcam", {"tail_only": False})],
    ids=["scorecam", "ablationcam-tail", "ablationcam-whole-model"],
)
def test_extra_passes_do_not_overwrite_the_record_of_the_next_layer(name, options) -> None:
    """Several target layers: ScoreCAM/AblationCAM's extra forward passes for the first
    layer must not replace what the main pass recorded for the second (the map is the
    min-max scaled mean of the single-layer maps)."""
    model = state_net()
    x, targets = image(2), [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = make_cam(name, model, [model.conv1, model.conv2], batch_size=4, **options)(x, targets)
        single = [
            make_cam(name, model, [layer], batch_size=4, **options)(x, targets) for layer in (model.conv1, model.conv2)
        ]
    expected = np.stack([min_max(m) for m in (single[0].astype(np.float64) + single[1]) / 2])
    np.testing.assert_allclose(both, expected, atol=1e-5)


# =========================================================================== memory
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_autograd_graph_or_activation_kept_after_a_call(name: str) -> None:
    model = state_net()
    kept = []
    # Registered before the CAM's own hook, so it sees the very tensor the CAM records.
    handle = model.conv2.register_forward_hook(lambda m, i, o: kept.append(weakref.ref(o)))

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x):
            out = self.inner(x)
            kept.append(weakref.ref(out))
            return out

    wrapper = Wrapper().eval()
    cam = make_cam(name, wrapper, [model.conv2])
    cam(image(), [ClassifierOutputTarget(1)])
    handle.remove()
    # Without gc.collect(): nothing may be held, not even by a reference cycle.
    assert cam.outputs is not None and cam.outputs.grad_fn is None and not cam.outputs.requires_grad
    assert not [name for name, value in vars(cam).items() if torch.is_tensor(value) and name != "outputs"]
    alive = [ref for ref in kept if ref() is not None]
    assert not alive, f"{len(alive)} tensors of the call (activations / graph) are still alive"


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, warnings
    import torch
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    from pytorch_grad_cam import METHODS, PerturbationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")

    def rss_kib(field):
        # Linux's /proc; elsewhere (or in a sandbox without it) the field is None.
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None

    if rss_kib("VmRSS") is None or rss_kib("VmHWM") is None:
        print(json.dumps({"unavailable": "no VmRSS/VmHWM in /proc/self/status"}))
        sys.exit(0)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    targets = [ClassifierOutputTarget(1)]
    result = {}
    for name in sys.argv[2:]:
        cls = METHODS[name]
        kwargs = {"progress": False, "batch_size": 8} if issubclass(cls, PerturbationCAM) else {}
        make = lambda: cls(model, [model[3]], **kwargs)
        def same_object(n, cam=make()):
            for _ in range(n):
                cam(x, targets)
        def cycles(n):
            for _ in range(n):
                with make() as cam:
                    cam(x, targets)
        for label, loop in (("repeated", same_object), ("cycles", cycles)):
            loop(20)  # warm-up: allocator pools, lazy imports, tqdm, fx
            gc.collect()
            start_rss, start_peak = rss_kib("VmRSS"), rss_kib("VmHWM")
            loop(200)
            gc.collect()
            result[f"{name}/{label}"] = {
                "rss_growth_kib": rss_kib("VmRSS") - start_rss,
                "peak_growth_kib": rss_kib("VmHWM") - start_peak,
            }
    print(json.dumps(result))
    """
)

#: "less than a few MB". Measured: 0-40 KiB per 200 calls; ~1 MiB per 200 AblationCAM
#: objects, because torch.fx keeps the source of every traced tail in linecache (a few
#: KiB per new object; documented). Keeping each call's 16x32x32 activation and its
#: graph (> 64 KiB a call) would exceed the bound many times over.
MAX_GROWTH_KIB = 3 * 1024
#: One method per mechanism: the gradient path (shared by GradCAM++, XGradCAM, LayerCAM,
#: EigenGradCAM) and the two perturbation loops (whose main pass is EigenCAM's path).
MEMORY_METHODS = ["gradcam", "scorecam", "ablationcam"]


def test_memory_is_flat_over_200_calls_and_200_object_cycles() -> None:
    if not os.path.isfile("/proc/self/status"):
        pytest.skip("resident memory is read from /proc/self/status (Linux), absent here")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(REPO), *MEMORY_METHODS],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    growth = json.loads(process.stdout.strip().splitlines()[-1])
    if "unavailable" in growth:
        pytest.skip(growth["unavailable"])
    print(json.dumps(growth, indent=1))  # shown with -s: the numbers of the report
    assert len(growth) == 2 * len(MEMORY_METHODS)
    for key, value in growth.items():
        assert value["rss_growth_kib"] < MAX_GROWTH_KIB, (key, value)
        assert value["peak_growth_kib"] < MAX_GROWTH_KIB, (key, value)


# =========================================================================== threads
class Rendezvous(nn.Module):
    """Identity that waits until the other thread reaches the same point, so the two
    threads' forward passes really overlap (a timeout fails instead of hanging)."""

    def __init__(self, barrier: threading.Barrier) -> None:
        super().__init__()
        self.barrier = barrier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.fx.Proxy) and threading.current_thread() is not threading.main_thread():
            self.barrier.wait(timeout=20)
        return x


def threaded_net(barrier: threading.Barrier) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        Rendezvous(barrier),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.ReLU(inplace=True),
        Rendezvous(barrier),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    ).eval()


def run_in_two_threads(jobs) -> list:
    results = [None, None]
    errors = []

    def worker(index):
        try:
            results[index] = jobs[index]()
        except BaseException as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("same_model", [False, True], ids=["independent-models", "one-shared-model"])
@pytest.mark.parametrize("name", DETERMINISTIC_METHODS)
def test_two_threads_give_the_maps_of_sequential_runs(name: str, same_model: bool) -> None:
    """Independent CAM objects in two threads, on independent models or on one shared
    eval-mode model: each thread's maps equal those of a run on its own.

    AblationCAM traces the model with torch.fx on its first call, and fx patches
    nn.Module.__call__ process-wide while it traces: that first call is made before
    the threads start (documented in docs/guarantees.md)."""
    barrier = threading.Barrier(2)
    models = [threaded_net(barrier), threaded_net(barrier)]
    if same_model:
        models[1] = models[0]
    inputs = [image(2, seed=11), image(2, seed=12)]
    targets = [[ClassifierOutputTarget(0), ClassifierOutputTarget(1)], [ClassifierOutputTarget(2)] * 2]
    layers = [m[3] for m in models]
    expected = [make_cam(name, models[i], layers[i])(inputs[i], targets[i]) for i in range(2)]
    cams = [make_cam(name, models[i], layers[i]) for i in range(2)]
    if name == "ablationcam":
        for i in range(2):
            cams[i](inputs[i], targets[i])
    jobs = [(lambda i=i: [cams[i](inputs[i], targets[i]) for _ in range(2)]) for i in range(2)]
    results = run_in_two_threads(jobs)
    for i in range(2):
        for maps in results[i]:
            np.testing.assert_allclose(maps, expected[i], atol=1e-6)
    for model in models:
        assert hook_state(model) == hook_state(threaded_net(barrier))


def test_two_cams_on_one_model_do_not_see_each_other() -> None:
    model = state_net()
    x1, x2 = image(1, seed=21), image(1, seed=22)
    alone_a = make_cam("gradcam", model, [model.conv2])(x1, [ClassifierOutputTarget(0)])
    alone_b = make_cam("eigencam", model, [model.conv1])(x2)
    cam_a = make_cam("gradcam", model, [model.conv2])
    cam_b = make_cam("eigencam", model, [model.conv1])
    for _ in range(2):
        np.testing.assert_allclose(cam_b(x2), alone_b, atol=1e-6)
        np.testing.assert_allclose(cam_a(x1, [ClassifierOutputTarget(0)]), alone_a, atol=1e-6)
    assert torch.equal(cam_a.outputs, model(x1).detach())


def test_guided_backprop_mode_is_per_thread() -> None:
    """Guided backprop's TorchFunctionMode is thread-local in torch: another thread's
    ordinary backward pass through the same ReLUs, at the same time, is unaffected."""
    barrier = threading.Barrier(2)
    models = [threaded_net(barrier), threaded_net(barrier)]
    x = image(1, seed=31)
    plain = plain_input_gradient(models[1], x, 1)
    guided = GuidedBackpropReLUModel(models[0])(x, target_category=1)
    assert not np.allclose(plain, guided)
    results = run_in_two_threads(
        [
            lambda: GuidedBackpropReLUModel(models[0])(x, target_category=1),
            lambda: plain_input_gradient(models[1], x, 1),
        ]
    )
    np.testing.assert_allclose(results[0], guided, atol=1e-6)
    np.testing.assert_allclose(results[1], plain, atol=1e-6)


# =========================================================================== degenerate maps
class Degenerate(nn.Module):
    """conv (target, ``channels`` out) -> optional pooling to 1x1 before it -> head.
    ``zero_head`` multiplies the logits by zero: every gradient is zero."""

    def __init__(self, channels: int = 4, one_by_one: bool = False, zero_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.squeeze = nn.AdaptiveAvgPool2d(1) if one_by_one else nn.Identity()
        self.target = nn.Conv2d(4, channels, 1)
        self.fc = nn.Linear(channels, 3)
        self.zero_head = zero_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.target(self.squeeze(F.relu(self.stem(x))))
        logits = self.fc(F.relu(a).mean(dim=(2, 3)))
        return logits * 0 if self.zero_head else logits


class ZeroTimes:
    """A target that does use the output, but is constant (gradient exactly 0)."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[0] * 0


DEGENERATE_CASES = {
    "constant-image": (dict(), lambda: torch.full((1, 3, 12, 12), 0.5), None),  # and all-zero
    "constant-target": (dict(), lambda: image(1, (12, 12)), ZeroTimes()),
    "zero-head": (dict(zero_head=True), lambda: image(1, (12, 12)), ClassifierOutputTarget(1)),
    "single-channel": (dict(channels=1), lambda: image(1, (12, 12)), ClassifierOutputTarget(1)),
    "1x1-spatial": (dict(one_by_one=True), lambda: image(2, (12, 12)), ClassifierOutputTarget(1)),
    "odd-non-square": (dict(), lambda: image(1, (37, 53)), ClassifierOutputTarget(2)),
    "tall-batch": (dict(), lambda: image(3, (53, 7)), None),
}


@pytest.mark.parametrize("case", list(DEGENERATE_CASES))
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_degenerate_inputs_give_finite_maps_in_unit_range(name: str, case: str) -> None:
    options, make_input, target = DEGENERATE_CASES[case]
    model = Degenerate(**options).eval()
    x = make_input()
    if case == "constant-image":
        x = torch.cat([x, torch.zeros_like(x)])
    targets = None if target is None else [target] * x.shape[0]
    if name in CLASS_ROW_METHODS and target is not None and not isinstance(target, ClassifierOutputTarget):
        with pytest.raises(TypeError, match="each target must name a class"):
            make_cam(name, model, [model.target])(x, targets)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for eigen_smooth in (False, True):
            maps = make_cam(name, model, [model.target])(x, targets, eigen_smooth=eigen_smooth)
            assert_valid_maps(maps, (x.shape[0], *x.shape[2:]))
            # A map is either all zeros or reaches 1 (min-max scaled), never in between.
            peaks = maps.reshape(len(maps), -1).max(axis=1)
            assert all(peak == 0 or peak > 0.999 for peak in peaks), peaks
            if case in ("constant-target", "zero-head") and name in GRADIENT_METHODS and name not in RANDOM_WEIGHTS:
                assert not maps.any(), "an all-zero gradient must give an all-zero map"


# =========================================================================== weights loading
def unsafe_loads(source: str) -> List[str]:
    """Calls in ``source`` that could unpickle untrusted data: torch.load without
    weights_only=True, pickle/cPickle/dill/joblib load(s), numpy load with allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if name == "load" and owner == "torch":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif name in ("load", "loads", "Unpickler") and owner in ("pickle", "cPickle", "dill", "joblib", "_pickle"):
            found.append(f"line {node.lineno}: {owner}.{name}")
        elif name == "load" and owner in ("np", "numpy"):
            flag = keywords.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"line {node.lineno}: numpy.load(allow_pickle=True)")
    return found


def test_the_unsafe_load_check_can_fail() -> None:
    bad = "import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\nnp.load(p, allow_pickle=True)\n"
    assert len(unsafe_loads(bad)) == 4
    assert unsafe_loads("torch.load(p, map_location='cpu', weights_only=True)\n") == []


def test_no_python_file_loads_weights_unsafely() -> None:
    skip = {".git", ".venv", "venv", "build", "dist", "node_modules", "__pycache__", ".pytest_cache"}
    problems = []
    checked = 0
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        for file in files:
            if file.endswith(".py"):
                path = Path(root, file)
                checked += 1
                for problem in unsafe_loads(path.read_text(encoding="utf-8")):
                    problems.append(f"{path.relative_to(REPO)} {problem}")
    assert checked > 10
    assert not problems, "\n".join(problems)
