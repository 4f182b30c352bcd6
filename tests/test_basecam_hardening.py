"""BaseCAM hardening: eval mode for every call, layers the score does not depend on,
model outputs that are not a tensor, and models wrapped for data parallelism.

Each test compares against the plain case (the same weights, eval mode, no wrapper, a
tensor output), so it fails when the property does not hold.
"""

from __future__ import annotations

import socket
import threading
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, PerturbationCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.model_wrappers import (
    HuggingfaceToTensorModelWrapper,
    OutputSelector,
    select_output,
)

GRADIENT_METHODS = [name for name, cls in CNN_METHODS.items() if cls.uses_gradients]
#: FullGrad ignores the target layers it is given (its layers are every bias layer,
#: and a bias layer off the scored path legitimately adds nothing), so no layer of the
#: caller's can be disconnected from its score.
IGNORES_TARGET_LAYERS = {"fullgrad"}


def make_cam(name: str, model: nn.Module, layers, **kwargs):
    cls = METHODS[name]
    if issubclass(cls, PerturbationCAM):
        kwargs.setdefault("progress", False)
        kwargs.setdefault("batch_size", 4)
    else:
        kwargs.pop("batch_size", None)
    return cls(model, layers, **kwargs)


def image(batch: int = 2, size=(10, 10), seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def targets(*classes: int):
    return [ClassifierOutputTarget(c) for c in classes]


# =========================================================================== 6. eval mode
class ModeNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> conv (target) -> Dropout -> pooled head: in train
    mode its output is different (batch statistics, random dropout) from eval mode."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv2(F.relu(self.bn(self.conv1(x))))
        return self.fc(self.drop(F.relu(a)).mean(dim=(2, 3)))


def modes(model: nn.Module):
    return [(name, module.training) for name, module in model.named_modules()]


def buffers(model: nn.Module):
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


def assert_buffers_equal(before, model: nn.Module) -> None:
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), f"buffer {name} changed"


class FailOnCall:
    """ClassifierOutputTarget(category) that raises on its ``on_call``-th call."""

    def __init__(self, category: int, on_call: int) -> None:
        self.inner, self.on_call, self.calls = ClassifierOutputTarget(category), on_call, 0

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.on_call:
            raise RuntimeError("target fails mid-way")
        return self.inner(output)


MODE_METHODS = ["gradcam", "scorecam", "ablationcam", "eigencam", "layercam"]


@pytest.mark.parametrize("aug_smooth", [False, True], ids=["plain", "aug_smooth"])
@pytest.mark.parametrize("name", MODE_METHODS)
def test_a_train_mode_model_gives_the_eval_mode_map_and_keeps_its_modes(name: str, aug_smooth: bool) -> None:
    expected = make_cam(name, ModeNet().eval(), ["conv2"])(image(), targets(0, 2), aug_smooth=aug_smooth)
    model = ModeNet().train()
    model.fc.eval()  # a mixed-mode model stays mixed
    before_modes, before_buffers = modes(model), buffers(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning any more: eval mode is the behaviour
        maps = make_cam(name, model, ["conv2"])(image(), targets(0, 2), aug_smooth=aug_smooth)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert maps.max() > 0.5  # (aug_smooth averages six maps: its peak may be below 1)
    assert modes(model) == before_modes
    assert_buffers_equal(before_buffers, model)  # BatchNorm statistics untouched


@pytest.mark.parametrize("name, on_call", [("gradcam", 1), ("scorecam", 3), ("ablationcam", 3)])
def test_modes_are_restored_when_the_call_raises_midway(name: str, on_call: int) -> None:
    model = ModeNet().train()
    model.bn.eval()
    before_modes, before_buffers = modes(model), buffers(model)
    seen_modes = []
    model.conv2.register_forward_pre_hook(lambda module, inputs: seen_modes.append(module.training))
    target = FailOnCall(1, on_call)
    with pytest.raises(RuntimeError, match="target fails mid-way"):
        make_cam(name, model, [model.conv2], batch_size=2)(image(1), [target])
    assert target.calls == on_call
    assert seen_modes and not any(seen_modes), "a pass ran in train mode"
    assert modes(model) == before_modes
    assert_buffers_equal(before_buffers, model)


def test_ablationcam_on_a_train_mode_resnet18(resnet18) -> None:
    """Used to crash in BatchNorm ('Expected more than 1 value per channel when
    training') on the single-image ablation passes; now it gives the eval-mode map."""
    layers = [resnet18.layer3[-1]]
    x = image(2, (32, 32))  # layer3 is 2x2, layer4 1x1: one image has one value per channel
    expected = make_cam("ablationcam", resnet18, layers, batch_size=64)(x, targets(5, 9))
    before_buffers = buffers(resnet18)
    resnet18.train()
    try:
        maps = make_cam("ablationcam", resnet18, layers, batch_size=64)(x, targets(5, 9))
        assert all(module.training for module in resnet18.modules())
    finally:
        resnet18.eval()
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert maps.max() > 0.999
    assert_buffers_equal(before_buffers, resnet18)


# =========================================================================== 4. disconnected layers
class TwoHeads(nn.Module):
    """A trunk whose features feed the returned head, and an auxiliary branch that is
    computed but never returned. ``dead_bias`` makes the trunk's last ReLU dead (its
    gradient exactly zero, legitimately)."""

    def __init__(self, dead_bias: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.aux = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.fc = nn.Linear(4, 3)
        self.aux_fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.trunk[2].bias.add_(dead_bias)
        self.aux_scores = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        self.aux_scores = self.aux_fc(self.aux(features).mean(dim=(2, 3)))  # never returned
        return self.fc(F.relu(features).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", [n for n in GRADIENT_METHODS if n not in IGNORES_TARGET_LAYERS])
def test_a_layer_the_score_does_not_depend_on_is_an_error(name: str) -> None:
    model = TwoHeads().eval()
    message = (
        r"the target's score does not depend on target layer 'aux\.0' \(Conv2d\): no gradient "
        r"reaches its output .*; choose a layer on the path from the input to the scored output"
    )
    with pytest.raises(ValueError, match=message):
        make_cam(name, model, [model.aux[0]])(image(), targets(0, 1))
    with pytest.raises(ValueError, match=message):  # next to a connected layer
        make_cam(name, model, ["trunk.2", "aux.0"])(image(), targets(0, 1))
    with pytest.raises(ValueError, match=message):  # with aug_smooth and targets=None
        make_cam(name, model, ["aux.0"])(image(), aug_smooth=True)


def test_a_disconnected_layer_of_a_frozen_model_is_named() -> None:
    """No parameter requires grad, so the score has no graph at all: the error names
    the layer (not the targets)."""
    model = TwoHeads().eval().requires_grad_(False)
    with pytest.raises(ValueError, match=r"does not depend on target layer 'aux\.0' \(Conv2d\)"):
        make_cam("gradcam", model, [model.aux[0]])(image(), targets(0, 1))
    maps = make_cam("gradcam", model, [model.trunk[2]])(image(), targets(0, 1))
    assert maps.reshape(2, -1).max(axis=1).min() > 0.999


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_a_legitimately_zero_gradient_still_gives_an_all_zero_map(name: str) -> None:
    """A dead ReLU after the layer: the layer is on the path, its gradient is exactly 0."""
    model = TwoHeads(dead_bias=-1e4).eval()
    maps = make_cam(name, model, [model.trunk[2]])(image(), targets(0, 1))
    assert maps.shape == (2, 10, 10) and not maps.any()


@pytest.mark.parametrize("name", ["scorecam", "eigencam"])
def test_gradient_free_methods_accept_a_side_branch(name: str) -> None:
    """They never take a gradient, so a layer off the scored path is no error, and the map
    there is the method's definition: ScoreCAM's softmax-of-scores weighted mean of A (the
    input masked by each channel still changes the score), EigenCAM's first component."""
    from test_fast_paths import finish, layer_output, numpy_projection, scorecam_reference

    model = TwoHeads().eval()
    x = image()
    maps = make_cam(name, model, [model.aux[0]])(x, targets(0, 1))
    if name == "scorecam":
        expected = scorecam_reference(model, model.aux[0], x, [0, 1])
    else:
        expected = finish(torch.from_numpy(numpy_projection(layer_output(model, model.aux[0], x).numpy())), (10, 10))
    assert maps.shape == (2, 10, 10) and expected.reshape(2, -1).max(axis=1).min() > 0.999
    np.testing.assert_allclose(maps, expected, atol=1e-5)


# =========================================================================== 8. non-tensor outputs
class FakeModelOutput(OrderedDict):
    """A HuggingFace-style ModelOutput: a dict whose fields are also attributes."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class OutputNet(nn.Module):
    """A small CNN returning its logits as a tensor, a dict, a ModelOutput or a tuple."""

    def __init__(self, kind: str = "tensor") -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.conv2 = nn.Conv2d(5, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)
        self.kind = kind

    def forward(self, x: torch.Tensor):
        features = F.relu(self.conv2(F.relu(self.conv1(x))))
        logits = self.fc(features.mean(dim=(2, 3)))
        if self.kind == "dict":
            return {"logits": logits, "pooled": features.mean(dim=(2, 3))}
        if self.kind == "model-output":
            return FakeModelOutput(logits=logits, hidden=features)
        if self.kind == "tuple":
            return logits, features
        if self.kind == "list":  # one entry per image
            return list(logits)
        return logits


TARGETED = ["gradcam", "gradcam++", "scorecam", "ablationcam"]


@pytest.mark.parametrize(
    "kind, shown",
    [
        ("dict", r"dict with keys \['logits', 'pooled'\]"),
        ("model-output", r"FakeModelOutput with keys \['logits', 'hidden'\]"),
    ],
)
@pytest.mark.parametrize("name", TARGETED)
def test_a_non_tensor_output_with_tensor_targets_is_a_clear_error(name: str, kind: str, shown: str) -> None:
    model = OutputNet(kind).eval()
    hint = r"OutputSelector\(model, 'logits'\)"
    with pytest.raises(
        ValueError,
        match=rf"targets=None explains the top class of a \(B, classes\) tensor output, but the model returns {shown}; .*{hint}",
    ):
        make_cam(name, model, ["conv2"])(image())
    if name == "ablationcam":
        # Its torch.fx tail of the network returns a ModelOutput's fields as a plain dict.
        shown = shown.replace("FakeModelOutput", "(FakeModelOutput|dict)")
    with pytest.raises(
        TypeError,
        match=rf"ClassifierOutputTarget\(1\) needs the model output to be a tensor of scores, but the model returns {shown}; .*{hint}",
    ):
        make_cam(name, model, ["conv2"])(image(), targets(1, 1))


@pytest.mark.parametrize("kind", ["dict", "model-output", "tuple"])
@pytest.mark.parametrize("name", TARGETED + ["eigencam"])
def test_output_selector_gives_the_tensor_models_map(name: str, kind: str) -> None:
    expected = make_cam(name, OutputNet().eval(), ["conv2"])(image(), targets(1, 3))
    select = 0 if kind == "tuple" else "logits"
    wrapped = OutputSelector(OutputNet(kind).eval(), select)
    maps = make_cam(name, wrapped, ["model.conv2"])(image(), targets(1, 3))
    np.testing.assert_array_equal(maps, expected)
    assert maps.reshape(2, -1).max(axis=1).min() > 0.999


@pytest.mark.parametrize("kind, other", [("dict", "pooled"), ("model-output", "hidden")])
@pytest.mark.parametrize("name", TARGETED)
def test_targets_of_ones_own_can_read_a_dict_output(name: str, kind: str, other: str) -> None:
    """Each target gets its image's dict: every batched value's own row."""
    expected = make_cam(name, OutputNet().eval(), ["conv2"])(image(), targets(1, 3))
    seen = set()

    def logit(category: int):
        def target(output):
            seen.add((type(output), tuple(output["logits"].shape), tuple(output[other].shape)))
            return output["logits"][category]

        return target

    cam = make_cam(name, OutputNet(kind).eval(), ["conv2"])
    maps = cam(image(), [logit(1), logit(3)])
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert seen == {(dict, (4,), (5,) if kind == "dict" else (5, 10, 10))}
    assert type(cam.outputs) is type(OutputNet(kind)(image()))
    assert cam.outputs["logits"].grad_fn is None and cam.outputs["logits"].shape == (2, 4)


def test_a_list_output_holds_one_entry_per_image() -> None:
    """As in the reference (detectors return a list of per-image dicts): the library's
    targets take list entries that are tensors; a tuple that is not per image is an error."""
    expected = make_cam("gradcam", OutputNet().eval(), ["conv2"])(image(), targets(1, 3))
    maps = make_cam("gradcam", OutputNet("list").eval(), ["conv2"])(image(), targets(1, 3))
    np.testing.assert_array_equal(maps, expected)
    model = OutputNet("tuple").eval()
    with pytest.raises(
        ValueError,
        match=r"the model returns tuple of 2, but the batch has 3 images; a list/tuple output must hold one entry per image, else wrap the model",
    ):
        make_cam("gradcam", model, ["conv2"])(image(3), [lambda out: out.sum()] * 3)


def test_output_selector_selections() -> None:
    logits, hidden = torch.arange(3.0), torch.ones(2)
    output = FakeModelOutput(logits=logits, hidden=hidden)
    assert select_output(output, "logits") is logits
    assert select_output(output, "hidden") is hidden
    assert select_output((logits, hidden), 1) is hidden
    assert select_output(output, lambda out: out.logits * 2).tolist() == [0.0, 2.0, 4.0]

    class WithAttribute:
        logits = hidden

    assert select_output(WithAttribute(), "logits") is hidden
    with pytest.raises(
        KeyError,
        match=r"the model output \(FakeModelOutput\) has no key or attribute 'scores'; its keys are \['logits', 'hidden'\]",
    ):
        select_output(output, "scores")
    with pytest.raises(TypeError, match="select must be a key name, an index or a function, not float"):
        OutputSelector(nn.Identity(), 1.5)
    wrapper = OutputSelector(OutputNet("model-output"))
    assert HuggingfaceToTensorModelWrapper is OutputSelector
    assert list(wrapper.parameters()) == list(wrapper.model.parameters())
    assert torch.equal(wrapper(image()), OutputNet()(image()))


# =========================================================================== 9. DataParallel / DDP
class ThreadedDataParallel(nn.DataParallel):
    """What nn.DataParallel does on several GPUs, on the CPU: the replica runs in a
    worker thread (here the module itself, in one thread)."""

    def forward(self, *inputs):
        result = []
        worker = threading.Thread(target=lambda: result.append(self.module(*inputs)))
        worker.start()
        worker.join()
        return result[0]


PARALLEL_METHODS = ["gradcam", "eigencam", "scorecam"]


def bare_maps(name: str) -> np.ndarray:
    return make_cam(name, OutputNet().eval(), ["conv2"])(image(), targets(2, 0))


def assert_wrapped_maps(name: str, wrap) -> None:
    expected = bare_maps(name)
    assert expected.reshape(2, -1).max(axis=1).min() > 0.999
    model = OutputNet().eval()
    wrapped = wrap(model)
    for layers in ([model.conv2], ["module.conv2"], ["conv2"]):
        for _ in range(2):  # twice: nothing of the wrapper's state breaks a second call
            maps = make_cam(name, wrapped, layers)(image(), targets(2, 0))
            np.testing.assert_array_equal(maps, expected)


@pytest.mark.parametrize("name", PARALLEL_METHODS)
def test_data_parallel_is_unwrapped(name: str) -> None:
    assert_wrapped_maps(name, nn.DataParallel)
    assert_wrapped_maps(name, ThreadedDataParallel)


def test_the_wrapped_model_is_computed_in_eval_mode_and_restored() -> None:
    model = ModeNet().train()
    wrapped = nn.DataParallel(model).train()
    expected = make_cam("gradcam", ModeNet().eval(), ["conv2"])(image(), targets(0, 1))
    maps = make_cam("gradcam", wrapped, ["conv2"])(image(), targets(0, 1))
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert all(module.training for module in wrapped.modules())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("name", PARALLEL_METHODS)
def test_distributed_data_parallel_is_unwrapped(name: str) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        assert_wrapped_maps(name, nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
