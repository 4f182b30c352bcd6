"""AblationCAM hardening (issue 11): every method at the README's transformer layers,
AblationCAM's torch.fx tail against its whole-model fallback, the fallback replacing
only the last call of a shared module, the one-time check of a tail against the whole
model, re-tracing after a submodule is replaced, the ablation value before a
LayerNorm / Linear, and a target layer the output does not depend on.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_reference import (  # noqa: F401 - single_thread_module: autouse fixture
    RANDOM_SEED,
    ablationcam_reference_and_tolerances,
    finercam_reference,
    float64_copy,
    raw_layer_output,
    reference_cam,
    refinecam_reference,
    run_with_layer_output,
    single_thread_module,
)
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, AblationCAM, FinerCAM, RefineCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.network_tail import extract_tail, replaced_output_runner
from pytorch_grad_cam.utils.reshape_transforms import swin_reshape_transform, vit_reshape_transform

ATOL = 1e-4  # maps in [0, 1] from 224x224 transformer passes in float32
CHANNELS = 4  # ScoreCAM / AblationCAM score one copy per channel: keep a few (suite time)


class RecordingAblationCAM(AblationCAM):
    """AblationCAM that keeps the channel weights of its last call."""

    def ablation_weights(self, *args, **kwargs):
        self.weights = super().ablation_weights(*args, **kwargs)
        return self.weights


def first_channels(transform):
    """A reshape_transform keeping the first CHANNELS channels (AblationCAM/ScoreCAM fast)."""

    def select(tensor: torch.Tensor) -> torch.Tensor:
        return transform(tensor)[:, :CHANNELS]

    return select


def randomised_norms(model: nn.Module, seed: int) -> nn.Module:
    """A copy whose LayerNorms are as after training: with timm's initial weight 1 /
    bias 0 every token of norm1's output sums to zero over the channels, and the
    principal-component sign rule would have nothing to go by."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.3)
    return model.eval()


# ---------------------------------------------------------------- the README's transformer layers
def vit_ablate(raw: torch.Tensor, value: float) -> torch.Tensor:
    """Channel k of the first CHANNELS: feature k of every patch token, set to 0 (norm1
    feeds the attention's Linear layers, so AblationCAM ablates to 0 there)."""
    ablated = raw.repeat(CHANNELS, 1, 1)
    for k in range(CHANNELS):
        ablated[k, 1:, k] = 0.0
    return ablated


def swin_ablate(raw: torch.Tensor, value: float) -> torch.Tensor:
    """Channel k of timm Swin's (1, h, w, C) output, set to 0 (norm1 feeds a pad and the
    window attention's Linear layers)."""
    ablated = raw.repeat(CHANNELS, 1, 1, 1)
    for k in range(CHANNELS):
        ablated[k, ..., k] = 0.0
    return ablated


TRANSFORMERS = {
    # name: (fixture, README layer, reshape_transform, ablate)
    "deit": ("deit_tiny", "blocks.11.norm1", vit_reshape_transform, vit_ablate),
    "swin": ("swin_tiny", "layers.3.blocks.1.norm1", swin_reshape_transform, swin_ablate),
}


@pytest.fixture(scope="module")
def transformers(request) -> dict:
    return {
        name: randomised_norms(request.getfixturevalue(fixture), seed=index)
        for index, (name, (fixture, *_)) in enumerate(TRANSFORMERS.items())
    }


@pytest.fixture(scope="module")
def image_224() -> torch.Tensor:
    return torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(11)) * 2 - 1


#: FinerCAM and RefineCAM wrap a base method: with given targets and one layer they
#: would repeat GradCAM's and GradCAM++'s checks; their own references are below.
WRAPPERS = {"finercam", "refinecam"}
#: torchcam's extra methods: their references (noise draws, path steps, the classifier's
#: rows) are in tests/test_torchcam_methods.py.
TORCHCAM_EXTRAS = {"cam", "smoothgradcam++", "sscam", "iscam"}
#: A deeper layer before each README layer, for RefineCAM's product (Swin: 14x14 and 7x7).
REFINE_WITH = {"deit": "blocks.10.norm1", "swin": "layers.2.blocks.5.norm1"}


@pytest.mark.parametrize("method", sorted(set(CNN_METHODS) - WRAPPERS - TORCHCAM_EXTRAS))
@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_every_method_at_the_readme_transformer_layers(name, method, transformers, image_224):
    """Every registered method on DeiT-tiny and Swin-tiny at the README's layers equals
    the formula computed independently (ScoreCAM/AblationCAM on CHANNELS channels)."""
    _, layer_name, transform, ablate = TRANSFORMERS[name]
    model = transformers[name]
    layer = model.get_submodule(layer_name)
    perturbing = method in ("scorecam", "ablationcam")
    if perturbing:
        transform = first_channels(transform)
    classes = [281]
    tolerance = ATOL
    if method == "ablationcam":
        # norm1 feeds the attention's Linear layers: no ReLU switches an ablated channel
        # off. The reference ablates in float64: the float32 library's weights carry the
        # rounding of (s - s_k) / s, bounded (doubled) as cam_reference measures it.
        reference, rounding = ablationcam_reference_and_tolerances(
            model, layer, image_224, classes, False, transform=transform, ablate=ablate
        )
        tolerance = max(ATOL, 2 * max(rounding))
        assert tolerance < 0.01, rounding  # far below a formula error (~0.1)
    else:
        reference = reference_cam(method, model, [layer], image_224, classes, transform=transform)
    assert reference.max() > 0.99 and reference.std() > 0.05
    extra = {"progress": False} if perturbing else {}
    torch.manual_seed(RANDOM_SEED)  # RandomCAM draws the reference's weights
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # AblationCAM: the tail serves, no fallback
        maps = METHODS[method](model, [layer], reshape_transform=transform, **extra)(
            image_224, targets=[ClassifierOutputTarget(c) for c in classes]
        )
    assert maps.shape == (1, 224, 224) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps, reference, atol=tolerance, rtol=0)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_finercam_and_refinecam_at_the_readme_transformer_layers(name, transformers, image_224):
    """FinerCAM's default target (the top class against the 2nd-4th closest logits,
    alpha = 1, in float64 by hand) at the README layer, and RefineCAM's product of the
    GradCAM++ maps of an earlier layer and the README layer."""
    _, layer_name, transform, _ = TRANSFORMERS[name]
    model = transformers[name]
    layer = model.get_submodule(layer_name)
    reference, _ = finercam_reference(model, [layer], image_224, transform=transform)
    assert reference.max() > 0.99 and reference.std() > 0.05
    maps = FinerCAM(model, [layer], reshape_transform=transform)(image_224)
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)

    layers = [model.get_submodule(REFINE_WITH[name]), layer]
    classes = [281]
    reference = refinecam_reference(model, layers, image_224, classes, transform=transform)
    assert reference.max() > 0.99 and reference.std() > 0.05
    maps = RefineCAM(model, layers, reshape_transform=transform)(image_224, [ClassifierOutputTarget(281)])
    np.testing.assert_allclose(maps, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_transformer_tail_equals_whole_model_fallback(name, transformers):
    """AblationCAM's tail (B, H, W, C = x.shape read before Swin's norm1 is recomputed
    per batch of copies) gives the weights of re-running the whole model."""
    _, layer_name, transform, _ = TRANSFORMERS[name]
    model = transformers[name]
    layer = model.get_submodule(layer_name)
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5)) * 2 - 1
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(917)]
    results = {}
    for tail_only in (True, False):
        cam = RecordingAblationCAM(
            model, [layer], first_channels(transform), progress=False, batch_size=3, tail_only=tail_only
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            maps = cam(images, targets)
        results[tail_only] = (cam.weights, maps, cam)
    tail_weights, whole_weights = results[True][0], results[False][0]
    assert tail_weights.shape == (2, CHANNELS) and tail_weights.abs().max() > 1e-4
    scale = float(whole_weights.abs().max())
    assert float((tail_weights - whole_weights).abs().max()) <= 1e-4 * scale
    np.testing.assert_allclose(results[True][1], results[False][1], atol=1e-5, rtol=0)
    assert results[True][2]._tails[layer].trusted is True  # the tail was checked and used


# ---------------------------------------------------------------- a module called several times
class SharedReluNet(nn.Module):
    """One ReLU applied twice, to tensors of different shapes (as torchvision's
    BasicBlock shares its ``relu``); the CAM records, and ablates, the last call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def shared_relu_reference(model: SharedReluNet, image: torch.Tensor, category: int) -> np.ndarray:
    """AblationCAM written out: channel k of the second ReLU's output set to 0."""
    with torch.no_grad():
        activations = model.act(model.conv2(model.act(model.conv1(image))))[0]  # (6, h, w)
        score = model.fc(activations.mean(dim=(1, 2)))[category]
        weights = []
        for k in range(activations.shape[0]):
            ablated = activations.clone()
            ablated[k] = 0
            weights.append((score - model.fc(ablated.mean(dim=(1, 2)))[category]) / score)
    raw = torch.relu((torch.stack(weights)[:, None, None] * activations).sum(0))
    raw = (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
    resized = F.interpolate(raw[None, None], size=image.shape[2:], mode="bilinear", align_corners=False)[0, 0]
    resized = resized - resized.min()
    return (resized / (resized.max() + 1e-7)).numpy()


def test_fallback_replaces_only_the_last_call_of_a_shared_module():
    torch.manual_seed(3)
    model = SharedReluNet().eval()
    image = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(4)) * 2 - 1
    category = 1
    reference = shared_relu_reference(model, image, category)
    assert reference.max() == pytest.approx(1, abs=1e-5) and reference.std() > 0.05
    maps = {}
    for tail_only in (True, False):
        cam = AblationCAM(model, [model.act], progress=False, batch_size=4, tail_only=tail_only)
        maps[tail_only] = cam(image, target_category=category)
    np.testing.assert_allclose(maps[False], maps[True], atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps[False], reference[None], atol=1e-5, rtol=0)
    # The runner itself: replacing the last call by the recorded output gives the model's output.
    with torch.no_grad():
        recorded = model.act(model.conv2(model.act(model.conv1(image))))
        run = replaced_output_runner(model, model.act, image)
        torch.testing.assert_close(run(recorded.expand(3, -1, -1, -1)), model(image).expand(3, -1))


# ---------------------------------------------------------------- the check of a tail
class TransposedSkipNet(nn.Module):
    """The network after ``conv2`` reads a tensor from before it whose leading dimension
    is not the batch (a (1, B, h, w) transpose): the traced tail broadcasts it along
    the wrong dimension and fails on several ablated copies (not on one), so the whole
    model is re-run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 1, 3, padding=1)
        self.conv2 = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = self.conv1(x)  # (B, 1, h, w)
        sideways = early.transpose(0, 1)  # (1, B, h, w)
        x = self.conv2(torch.relu(early))  # (B, 6, h, w)
        x = torch.relu((x.transpose(0, 1) + sideways).transpose(0, 1))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_failing_tail_falls_back_with_one_warning_and_equals_the_whole_model():
    torch.manual_seed(6)
    model = TransposedSkipNet().eval()
    images = torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(2)) * 2 - 1
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    cam = RecordingAblationCAM(model, [model.conv2], progress=False, batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        maps = cam(images, targets)
        cam(images, targets)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "torch.fx tail fails on ablated copies" in messages[0], messages
    assert "\n" not in messages[0]
    whole = RecordingAblationCAM(model, [model.conv2], progress=False, batch_size=4, tail_only=False)
    np.testing.assert_allclose(maps, whole(images, targets), atol=1e-6, rtol=0)
    torch.testing.assert_close(cam.weights, whole.weights)


def test_the_tail_check_compares_scores_within_a_scaled_tolerance(small_cnn):
    cam = AblationCAM(small_cnn, [small_cnn.features[-1]], progress=False)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    layer = small_cnn.features[-1]
    with torch.no_grad():
        recorded = []
        handle = layer.register_forward_hook(lambda m, i, out: recorded.append(out))
        small_cnn(image)
        handle.remove()
        original, value, target = recorded[0], torch.tensor(0.0), ClassifierOutputTarget(1)
        whole = replaced_output_runner(small_cnn, layer, image)
        tail = extract_tail(small_cnn, layer)[0].bind(image)
        scale = float(whole(original.expand(2, -1, -1, -1).clone())[:, 1].abs().max())

    def off_by(fraction: float):
        return lambda copies: whole(copies) + fraction * scale

    assert cam._compare_with_whole_model(tail, whole, original, None, value, target) == ""
    assert cam._compare_with_whole_model(off_by(1e-5), whole, original, None, value, target) == ""
    mismatch = cam._compare_with_whole_model(off_by(1e-2), whole, original, None, value, target)
    assert "other scores than the whole model" in mismatch


# ---------------------------------------------------------------- stale tails
def test_replacing_a_submodule_retraces_the_tail(small_cnn):
    model = copy.deepcopy(small_cnn)
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(3)]
    cam = RecordingAblationCAM(model, [model.features[-1]], progress=False)
    first = cam(image, targets)
    torch.manual_seed(9)
    model.fc = nn.Linear(32, 4)
    second = cam(image, targets)
    fresh_cam = RecordingAblationCAM(model, [model.features[-1]], progress=False)
    fresh = fresh_cam(image, targets)
    assert np.abs(first - fresh).max() > 0.05  # the new head changes the map
    np.testing.assert_allclose(second, fresh, atol=1e-6, rtol=0)
    torch.testing.assert_close(cam.weights, fresh_cam.weights)


# ---------------------------------------------------------------- the ablation value
class NormHeadNet(nn.Module):
    """A signed convolution (the target) whose output goes into a LayerNorm over the
    channels: ablating to min - 1e7 there would dominate the normalisation."""

    def __init__(self, after: str = "layernorm") -> None:
        super().__init__()
        self.after = after
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.linear = nn.Linear(8, 8)
        self.bn = nn.BatchNorm2d(8)
        with torch.no_grad():  # statistics as after training; a negative scale flips -1e7
            self.bn.weight.uniform_(-1, 1)
            self.bn.bias.normal_()
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x)))
        if self.after == "layernorm":
            x = torch.relu(self.norm(x.permute(0, 2, 3, 1))).mean(dim=(1, 2))
        elif self.after == "linear":
            x = torch.relu(self.linear(x.permute(0, 2, 3, 1))).mean(dim=(1, 2))
        elif self.after == "batchnorm":
            x = torch.relu(self.bn(x)).mean(dim=(2, 3))
        elif self.after == "residual-relu":
            x = x + 0.5
            x = F.gelu(x).mean(dim=(2, 3))
        return self.fc(x)


@pytest.mark.parametrize(
    "after, switched_off",
    [("layernorm", False), ("linear", False), ("batchnorm", False), ("residual-relu", True)],
)
def test_ablation_value_is_zero_unless_an_activation_switches_it_off(after, switched_off):
    torch.manual_seed(2)
    model = NormHeadNet(after).eval()
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    category = 0
    # The oracle: the float64 model with conv2's output replaced by a hook (not the
    # library's runner), channel k set to the value of the documented rule.
    model64, (conv64,) = float64_copy(model, [model.conv2])
    image64 = image.double()
    activations = raw_layer_output(model64, conv64, image64)
    assert activations.min() < 0
    value = float(activations.min()) - 1e7 if switched_off else 0.0
    ablated = activations.repeat(8, 1, 1, 1)
    for k in range(8):
        ablated[k, k] = value
    score = run_with_layer_output(model64, conv64, image64, activations)[0, category]
    scores = run_with_layer_output(model64, conv64, image64, ablated)[:, category]
    expected = torch.from_numpy((score - scores) / score).float()
    cam = RecordingAblationCAM(model, [model.conv2], progress=False)
    cam(image, target_category=category)
    assert torch.isfinite(cam.weights).all()
    torch.testing.assert_close(cam.weights[0], expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-5)
    assert extract_tail(model, model.conv2)[0].switched_off is switched_off


def test_readme_layers_of_transformers_ablate_to_zero(deit_tiny, swin_tiny, small_cnn):
    assert extract_tail(deit_tiny, deit_tiny.blocks[-1].norm1)[0].switched_off is False
    assert extract_tail(swin_tiny, swin_tiny.layers[-1].blocks[-1].norm1)[0].switched_off is False
    assert extract_tail(small_cnn, small_cnn.features[-2])[0].switched_off is True  # conv -> ReLU


# ---------------------------------------------------------------- a layer the output does not read
class UnreadBranchNet(nn.Module):
    """``aux`` is computed but the output never reads it (a dropped second head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.aux = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.conv(x))
        self.last_aux = self.aux(features)  # kept for a loss elsewhere, never returned
        return self.fc(features.mean(dim=(2, 3)))


@pytest.mark.parametrize("tail_only", [True, False], ids=["tail", "whole-model"])
def test_a_layer_the_output_does_not_read_is_an_error(tail_only):
    torch.manual_seed(1)
    model = UnreadBranchNet().eval()
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cam = AblationCAM(model, [model.aux], progress=False, tail_only=tail_only)
    with pytest.raises(ValueError, match=r"does not depend on target layer 'aux'"):
        cam(image, target_category=0)
    # A layer on the path still works.
    maps = AblationCAM(model, [model.conv], progress=False, tail_only=tail_only)(image, target_category=0)
    assert maps.max() == pytest.approx(1, abs=1e-5)
