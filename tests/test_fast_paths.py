"""The fast paths equal the plain definitions they replace.

- AblationCAM through the torch.fx tail = AblationCAM re-running the whole model
  (``tail_only=False``) = ablation written out in the test; also where the model
  cannot be traced or the tail reuses values from before the layer (fallback, one
  warning), and where the network after the layer works in place on the buffer of
  ablated copies;
- ScoreCAM in chunks of ``batch_size`` = all K masked inputs at once = the formula
  written out in the test, never more than ``batch_size`` masked images per forward;
  ScoreCAM scoring each distinct mask once = one forward per channel;
- the torch principal-component projection = numpy's SVD, with the sign rule;
- float16 / bfloat16 models give finite float32 maps close to the float32 ones;
- gradient-free methods build no autograd graph, gradient methods fill no ``.grad``;
- ``aug_smooth`` runs the model once, on all augmented copies.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable, List

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, AblationCAM, GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

CLASSES = [1, 3]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Deterministic float sums, and no fight for the cores with other test workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def targets(batch: int = 2) -> List[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(CLASSES[i % len(CLASSES)]) for i in range(batch)]


# =========================================================================== models
class InPlaceTailNet(nn.Module):
    """The target ``conv2`` gives signed activations; the network after it works in
    place on them (ReLU(inplace=True), ``+=``), which must not corrupt AblationCAM's
    reused buffer of ablated copies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x)))
        x = self.relu(x)
        x += 0.5
        return self.fc(x.mean(dim=(2, 3)))


class UntraceableNet(InPlaceTailNet):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x)))
        if x.sum() > -1e30:
            x = torch.relu(x)
        return self.fc(x.mean(dim=(2, 3)))


class SkipNet(InPlaceTailNet):
    """The network after ``conv2`` also uses ``conv1``'s output (a skip connection)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        early = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(early))
        return self.fc(x.mean(dim=(2, 3)) + early.mean(dim=(1, 2, 3))[:, None])


class ScalarSkipNet(InPlaceTailNet):
    """The network after ``conv2`` uses a value from before it that has no batch
    dimension (a statistic of the whole input batch): no tail can reproduce it per
    ablated copy, so the whole model is re-run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().mean()
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)) * scale)


def seeded(cls: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "flags": [p.requires_grad for p in model.parameters()],
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
        "modules": [id(m) for m in model.modules()],
        "training": model.training,
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before["tensors"]:
        assert torch.equal(before["tensors"][key], after["tensors"][key]), key
    assert before["flags"] == after["flags"]
    assert before["hooks"] == after["hooks"]
    assert before["modules"] == after["modules"]
    assert before["training"] == after["training"]


# =========================================================================== plain definitions
def layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    recorded = []
    handle = layer.register_forward_hook(lambda m, i, out: recorded.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return recorded[0]


def run_with_output(model: nn.Module, layer: nn.Module, x: torch.Tensor, replacement: torch.Tensor) -> torch.Tensor:
    handle = layer.register_forward_hook(lambda m, i, out: replacement.clone())
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def min_max(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.reshape(maps.shape[0], -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (flat.max(dim=1, keepdim=True).values + 1e-7)).reshape(maps.shape)


def layer_map(raw: torch.Tensor, size) -> torch.Tensor:
    """One layer's map: ReLU, min-max, bilinear resize with half-pixel centres."""
    maps = min_max(torch.relu(raw.float()))
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def finish(raw: torch.Tensor, size) -> np.ndarray:
    """A one-layer CAM: the layer's map, min-max scaled again."""
    return min_max(layer_map(raw, size)).numpy()


def ablation_reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, categories: List[int]) -> np.ndarray:
    """AblationCAM by its definition: the whole model re-run once per ablated channel."""
    activations = layer_output(model, layer, x)
    raws = []
    for index, category in enumerate(categories):
        image, original = x[index : index + 1], activations[index : index + 1]
        low = float(original.min())
        value = 0.0 if low >= 0 else low - 1e7
        score = run_with_output(model, layer, image, original)[0, category]
        weights = []
        for channel in range(original.shape[1]):
            ablated = original.clone()
            ablated[:, channel] = value
            weights.append((score - run_with_output(model, layer, image, ablated)[0, category]) / score)
        raws.append((torch.stack(weights)[:, None, None] * original[0]).sum(dim=0))
    return finish(torch.stack(raws), x.shape[2:])


def scorecam_reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, categories: List[int]) -> np.ndarray:
    """ScoreCAM by its definition, every masked input made at once."""
    activations = layer_output(model, layer, x)
    raws = []
    for index, category in enumerate(categories):
        upsampled = F.interpolate(activations[index][:, None], size=x.shape[2:], mode="bilinear", align_corners=True)
        low = upsampled.amin(dim=(1, 2, 3), keepdim=True)
        high = upsampled.amax(dim=(1, 2, 3), keepdim=True)
        masks = (upsampled - low) / (high - low + 1e-8)
        with torch.no_grad():
            scores = model(x[index : index + 1] * masks)[:, category]
        weights = torch.softmax(scores, dim=0)
        raws.append((weights[:, None, None] * activations[index]).sum(dim=0))
    return finish(torch.stack(raws), x.shape[2:])


# =========================================================================== AblationCAM
def ablation(model: nn.Module, layer: nn.Module, x: torch.Tensor, **options) -> np.ndarray:
    cam = AblationCAM(model, [layer], progress=False, **options)
    return cam(x, targets(x.shape[0]))


@pytest.mark.parametrize("layer_index", [-1, -2], ids=["relu-output", "signed-conv-output"])
def test_tail_ablation_equals_whole_model_ablation_and_the_definition(small_cnn, layer_index):
    layer = small_cnn.features[layer_index]
    x = images()
    before = model_state(small_cnn)
    forwards = []
    handle = small_cnn.features[0].register_forward_hook(lambda m, i, out: forwards.append(out.shape[0]))
    try:
        cam = AblationCAM(small_cnn, [layer], progress=False, batch_size=5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the tail exists: no fallback warning
            cam(x, targets(2))  # the first call also checks the tail against the whole model
            forwards.clear()
            tail = cam(x, targets(2))
        assert forwards == [2], "the tail path must not re-run the network before the layer"
        whole = ablation(small_cnn, layer, x, batch_size=5, tail_only=False)
    finally:
        handle.remove()
    reference = ablation_reference(small_cnn, layer, x, CLASSES)
    assert reference.max() == pytest.approx(1, abs=1e-5) and reference.std() > 0.05
    np.testing.assert_allclose(tail, whole, atol=1e-5)
    np.testing.assert_allclose(tail, reference, atol=1e-4)
    assert_same_state(before, model_state(small_cnn))


def test_ablated_copies_go_through_the_tail_in_chunks_of_batch_size(small_cnn):
    layer = small_cnn.features[-1]  # 32 channels
    sizes = []
    cam = AblationCAM(small_cnn, [layer], progress=False, batch_size=7)
    cam(images(1), targets(1))  # the first call also checks the tail on two ablated copies
    handle = small_cnn.fc.register_forward_hook(lambda m, i, out: sizes.append(out.shape[0]))
    try:
        cam(images(1), targets(1))
    finally:
        handle.remove()
    # The forward pass, the unablated score through the tail, then 32 copies by 7.
    assert sizes == [1, 1, 7, 7, 7, 7, 4]


@pytest.mark.parametrize(
    "net, fallback",
    [(UntraceableNet, "cannot trace"), (ScalarSkipNet, "re-runs the whole model"), (SkipNet, None)],
    ids=["untraceable", "value-without-batch-dimension", "skip-connection"],
)
def test_fallback_warns_once_and_equals_the_definition(net, fallback):
    """Where no tail can be isolated the whole model is re-run after a one-line
    warning; either way the weights are those of the definition. (A skip connection
    around the layer may be served by a tail or by the fallback.)"""
    model = seeded(net)
    x = images()
    before = model_state(model)
    cam = AblationCAM(model, [model.conv2], progress=False, batch_size=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a user sees: repeats from one place once
        result = cam(x, targets())
        cam(images(seed=1), targets())
    messages = [str(w.message) for w in caught]
    if fallback is not None:
        assert len(messages) == 1 and fallback in messages[0], messages
    assert len(messages) <= 1 and all("\n" not in message for message in messages), messages
    whole = ablation(model, model.conv2, x, batch_size=5, tail_only=False)
    # Both float32, but the weights (s - s_k) / s subtract logits that the tail and the
    # whole model sum in different orders (other batch shapes, other kernels): 2.6e-6
    # apart under AVX2 and AVX-512, 5.7e-7 with scalar kernels; 5e-5 leaves 20x.
    np.testing.assert_allclose(result, whole, atol=5e-5)
    np.testing.assert_allclose(result, ablation_reference(model, model.conv2, x, CLASSES), atol=1e-4)
    assert_same_state(before, model_state(model))


def test_in_place_work_after_the_layer_does_not_leak_between_chunks():
    """ReLU(inplace=True) and ``+=`` write into the ablated copies: the buffer must be
    refilled, on the tail path as on the whole-model path."""
    model = seeded(InPlaceTailNet)
    x = images()
    reference = ablation_reference(model, model.conv2, x, CLASSES)
    assert reference.std() > 0.05
    for options in ({}, {"tail_only": False}):
        for batch_size in (1, 5, 64):
            result = ablation(model, model.conv2, x, batch_size=batch_size, **options)
            np.testing.assert_allclose(result, reference, atol=1e-4, err_msg=f"{options} {batch_size}")


def test_ablation_value_stays_finite_in_float16():
    value = AblationCAM._ablation_value(torch.tensor([-1.5, 2.0]), torch.float16)
    assert value.dtype == torch.float16 and torch.isfinite(value) and value < -1e4
    assert AblationCAM._ablation_value(torch.tensor([-1.5, 2.0]), torch.float32) == pytest.approx(-1.5 - 1e7)
    assert AblationCAM._ablation_value(torch.tensor([0.0, 2.0]), torch.float16) == 0


# =========================================================================== ScoreCAM
def test_chunked_scorecam_equals_all_at_once_and_the_definition(small_cnn):
    layer = small_cnn.features[-1]  # K = 32 channels
    x = images()
    seen = []
    handle = small_cnn.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape[0]))
    try:
        chunked = ScoreCAM(small_cnn, [layer], batch_size=3, progress=False)(x, targets())
        chunk_sizes, seen[:] = list(seen), []
        at_once = ScoreCAM(small_cnn, [layer], batch_size=64, progress=False)(x, targets())
    finally:
        handle.remove()
    assert max(chunk_sizes[1:]) == 3 and sum(chunk_sizes[1:]) == 2 * 32  # never all K at once
    reference = scorecam_reference(small_cnn, layer, x, CLASSES)
    assert reference.std() > 0.05
    np.testing.assert_allclose(chunked, at_once, atol=1e-5)
    np.testing.assert_allclose(chunked, reference, atol=1e-4)


def test_vectorised_class_scores_equal_one_call_per_copy(small_cnn):
    """Class-score targets score a chunk in one indexing operation; any other callable
    is called per copy. Both give the same weights."""
    layer = small_cnn.features[-1]
    x = images(1)
    for target in (ClassifierOutputTarget(2), ClassifierOutputSoftmaxTarget(2)):
        fast = ScoreCAM(small_cnn, [layer], batch_size=5, progress=False)(x, [target])
        calls = []

        def per_copy(output, target=target):
            calls.append(output.shape)
            return target(output)

        slow = ScoreCAM(small_cnn, [layer], batch_size=5, progress=False)(x, [per_copy])
        # One call on the real input (a target's errors come from it), then one per masked copy.
        assert len(calls) == 1 + 32 and all(shape == (4,) for shape in calls)
        np.testing.assert_allclose(fast, slow, atol=1e-6)


# =========================================================================== projection
def numpy_projection(activations: np.ndarray) -> np.ndarray:
    """The projection: X = (positions, K), NaN -> 0, columns centred, X @ v1 (numpy SVD), sign
    chosen to correlate non-negatively with the row sums of X."""
    batch, channels = activations.shape[:2]
    maps = []
    for image in np.nan_to_num(activations.astype(np.float64)):
        matrix = image.reshape(channels, -1).T
        matrix = matrix - matrix.mean(axis=0)
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)
        projection = matrix @ vt[0]
        if projection @ matrix.sum(axis=1) < 0:
            projection = -projection
        maps.append(projection.reshape(activations.shape[2:]))
    return np.stack(maps)


def low_rank_activations(shape, seed: int) -> np.ndarray:
    """Activations with a dominant component (as in real networks) plus noise, so that
    the first singular vector is well defined."""
    rng = np.random.default_rng(seed)
    batch, channels, *spatial = shape
    positions = int(np.prod(spatial))
    strong = rng.normal(size=(batch, channels, 1)) * rng.normal(size=(batch, 1, positions)) * 3
    return (strong + rng.normal(size=(batch, channels, positions))).reshape(shape).astype(np.float32)


@pytest.mark.parametrize(
    "shape",
    [(3, 16, 8, 8), (2, 200, 4, 4), (2, 64, 8, 8), (2, 8, 3, 4, 5)],
    ids=["K<positions (Gram)", "K>positions (SVD)", "K=positions", "3D volume"],
)
def test_projection_equals_numpy_svd_with_the_sign_rule(shape):
    activations = low_rank_activations(shape, seed=sum(shape))
    expected = numpy_projection(activations)
    result = get_2d_projection(torch.from_numpy(activations))
    assert isinstance(result, torch.Tensor) and result.dtype == torch.float32
    assert result.shape == (shape[0], *shape[2:])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-4 * scale)
    # The sign rule: non-negative correlation with the channel sum of the centred matrix.
    matrix = activations.reshape(shape[0], shape[1], -1)
    centred_sum = (matrix - matrix.mean(axis=2, keepdims=True)).sum(axis=1)
    assert (np.einsum("bp,bp->b", result.numpy().reshape(shape[0], -1), centred_sum) >= 0).all()
    # numpy in, numpy out.
    np.testing.assert_allclose(get_2d_projection(activations), result.numpy())


def test_projection_of_real_activations_and_of_nan(small_cnn):
    activations = layer_output(small_cnn, small_cnn.features[-2], images(3, 16)).numpy()
    expected = numpy_projection(activations)
    np.testing.assert_allclose(get_2d_projection(activations), expected, atol=1e-4 * np.abs(expected).max())
    with_nan = activations.copy()
    with_nan[0, 0, 0, 0] = np.nan
    np.testing.assert_allclose(
        get_2d_projection(with_nan), numpy_projection(with_nan), atol=1e-4 * np.abs(expected).max()
    )
    zeros = get_2d_projection(np.zeros((1, 4, 3, 3), np.float32))
    assert np.array_equal(zeros, np.zeros((1, 3, 3), np.float32))


# =========================================================================== half precision
def first_channels(activations: torch.Tensor) -> torch.Tensor:
    """Keeps ScoreCAM/AblationCAM to 8 channels of resnet18's 512 so that the test is fast."""
    return activations[:, :8]


def resnet18_maps(model: nn.Module) -> dict:
    x = images(2, 64, seed=3)
    maps = {}
    for name, cls in CNN_METHODS.items():
        options, transform = {}, None
        if name in ("scorecam", "ablationcam", "sscam", "iscam"):
            options, transform = {"progress": False, "batch_size": 8}, first_channels
        if name in ("sscam", "iscam"):
            options["num_samples"] = 2
        if name == "fem":
            # FEM's default k=2 never fires on layer4's 2x2 grid: a z-score over 4
            # positions is at most sqrt(3), so the map would be all zero.
            options = {"k": 1}
        torch.manual_seed(0)  # RandomCAM: the same weights in every precision
        maps[name] = cls(model, [model.layer4[-1]], transform, **options)(x, targets())
    return maps


@pytest.fixture(scope="module")
def float32_maps(resnet18) -> dict:
    return resnet18_maps(resnet18)


#: How far a half-precision model's map may be from the float32 one: the mean |difference|
#: over the maps' pixels, and 1 - correlation. Measured on this test's resnet18 over 8
#: inputs (image seeds 0-7) under three CPU kernel sets (ATEN_CPU_CAPABILITY=default,
#: avx2, avx512): the worst mean |difference| of every method is 0.036 in bfloat16
#: (AblationCAM; FullGrad 0.026) and 0.0099 in float16 (FullGrad); the worst correlation
#: 0.963 in bfloat16 and 0.994 in float16 (both FullGrad; every other method 0.986 /
#: 0.9999). The limits leave 1.6x that or more. FullGrad is the worst because it reads
#: the gradient of every bias layer down to the first convolution (the others read
#: layer4's only): through resnet18's 20 layers a bfloat16 backward pass ends 10-19 % off
#: float32 at layer1/conv1 (median over channels).
#: The largest single-pixel difference is no measure here: a pixel where a ReLU input
#: sits at ~0 flips, and the per-channel min-max stretches it; it ranged 0.17-0.33
#: (FullGrad, bfloat16) and 0.03-0.17 (AblationCAM) over the same inputs and kernel sets.
HALF_PRECISION_LIMITS = {torch.bfloat16: (0.06, 0.94), torch.float16: (0.02, 0.985)}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_models_give_finite_float32_maps(resnet18, float32_maps, dtype):
    """torchvision's resnet18 in half precision, every method: float32 maps close to the
    float32 model's (HALF_PRECISION_LIMITS)."""
    half_maps = resnet18_maps(copy.deepcopy(resnet18).to(dtype))
    mean_limit, correlation_limit = HALF_PRECISION_LIMITS[dtype]
    for name, half in half_maps.items():
        full = float32_maps[name]
        assert half.dtype == np.float32, name
        assert np.isfinite(half).all(), name
        assert np.abs(half - full).mean() < mean_limit, (name, np.abs(half - full).mean())
        assert np.corrcoef(half.ravel(), full.ravel())[0, 1] > correlation_limit, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_ablation_of_signed_activations(small_cnn, dtype):
    """A signed layer (a convolution) ablated to min - 1e7 would overflow float16."""
    model = copy.deepcopy(small_cnn).to(dtype)
    layer = model.features[-2]
    x = images()
    for options in ({}, {"tail_only": False}):
        half = ablation(model, layer, x, **options)
        full = ablation(small_cnn, small_cnn.features[-2], x, **options)
        assert half.dtype == np.float32 and np.isfinite(half).all()
        assert np.corrcoef(half.ravel(), full.ravel())[0, 1] > 0.95


# =========================================================================== graphs
class GradProbe:
    """Forward hooks that record whether autograd was recording during each call."""

    def __init__(self, modules: List[nn.Module]) -> None:
        self.seen: List[tuple] = []
        self.handles = [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.seen.append((torch.is_grad_enabled(), output.requires_grad, output.grad_fn is not None))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize(
    "name, options",
    [("eigencam", {}), ("scorecam", {}), ("ablationcam", {}), ("ablationcam", {"tail_only": False})],
    ids=["eigencam", "scorecam", "ablationcam-tail", "ablationcam-whole-model"],
)
def test_gradient_free_methods_build_no_graph(small_cnn, name, options):
    assert all(p.requires_grad for p in small_cnn.parameters())
    extra = {"progress": False} if name != "eigencam" else {}
    cam = METHODS[name](small_cnn, [small_cnn.features[-1]], **extra, **options)
    probe = GradProbe([small_cnn.features[0], small_cnn.features[-1], small_cnn.fc])
    try:
        cam(images(), targets())
    finally:
        probe.remove()
    assert probe.seen and not any(any(record) for record in probe.seen), probe.seen
    assert not cam.outputs.requires_grad
    assert all(p.grad is None for p in small_cnn.parameters())


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "xgradcam", "layercam", "eigengradcam"])
def test_gradient_methods_record_the_graph_only_from_the_target_layer(small_cnn, name):
    """No graph (and no activations kept for backward) before the first target layer,
    a graph after it, and no parameter .grad filled by the backward pass."""
    cam = METHODS[name](small_cnn, [small_cnn.features[2]])
    before = GradProbe([small_cnn.features[0], small_cnn.features[1]])
    after = GradProbe([small_cnn.features[3], small_cnn.fc])
    try:
        cam(images(), targets())
    finally:
        before.remove()
        after.remove()
    assert before.seen and not any(any(record) for record in before.seen), before.seen
    assert after.seen and all(all(record) for record in after.seen), after.seen
    assert all(p.grad is None for p in small_cnn.parameters())
    assert not cam.outputs.requires_grad
    assert torch.is_grad_enabled()


def gradcam_reference(model: nn.Module, layers: List[nn.Module], x: torch.Tensor, categories: List[int]) -> np.ndarray:
    """GradCAM with gradients from a full autograd graph (every parameter requiring
    grad), the way a training step records it."""
    outputs = {}

    def keep(module, inputs, output):
        outputs[module] = output

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        scores = model(x)[torch.arange(x.shape[0]), torch.tensor(categories)].sum()
    finally:
        for handle in handles:
            handle.remove()
    grads = torch.autograd.grad(scores, [outputs[layer] for layer in layers])
    maps = []
    for layer, grad in zip(layers, grads):
        activations = outputs[layer].detach()
        raw = (grad.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)
        maps.append(layer_map(raw, x.shape[2:]))
    return min_max(torch.stack(maps).mean(dim=0)).numpy()


@pytest.mark.parametrize("order", ["forward-order", "reversed"])
def test_graph_from_the_target_layers_gives_the_full_graph_gradients(small_cnn, order):
    """Several target layers, given in either order: each one's gradient is the one a
    full graph gives (the graph starts at whichever layer runs first)."""
    layers = [small_cnn.features[2], small_cnn.features[-1]]
    if order == "reversed":
        layers = layers[::-1]
    x = images()
    result = GradCAM(small_cnn, layers)(x, targets())
    categories = [CLASSES[i % len(CLASSES)] for i in range(2)]
    reference = gradcam_reference(small_cnn, layers, x, categories)
    assert reference.std() > 0.05
    np.testing.assert_allclose(result, reference, atol=1e-5)


# =========================================================================== aug_smooth
@pytest.mark.parametrize("name", ["gradcam", "eigencam", "layercam"])
def test_aug_smooth_runs_the_model_once_on_all_copies(small_cnn, name):
    calls = []
    handle = small_cnn.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].shape[0]))
    try:
        cam = METHODS[name](small_cnn, [small_cnn.features[-1]])
        result = cam(images(2), targets(), aug_smooth=True)
    finally:
        handle.remove()
    assert calls == [12]  # 2 images x (flip x 3 multipliers), one forward
    assert result.shape == (2, 16, 16) and np.isfinite(result).all()


# =========================================================================== ScoreCAM: distinct masks
class RepeatedChannelsNet(nn.Module):
    """The target ``mix`` outputs 16 channels on a 4 x 4 grid: 5 distinct maps, 3 copies
    of them (one ahead of its original), 2 all-zero channels, 2 constant non-zero ones
    (0.3 and 5.1: upsampled, they may or may not stay exactly constant), a gated channel
    that is zero for images of negative mean only, and 3 copies of channel 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.mix = nn.Identity()
        self.head = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        gate = (x.mean(dim=(1, 2, 3)) > 0).float()[:, None, None, None]
        constant = torch.ones_like(a[:, :2]) * torch.tensor([0.3, 5.1]).view(1, 2, 1, 1)
        features = torch.cat(
            [
                a[:, 2:3],
                a,
                a[:, :2],
                torch.zeros_like(a[:, :2]),
                constant,
                gate * a[:, 4:5],
                a[:, :1].repeat(1, 3, 1, 1),
            ],
            dim=1,
        )
        features = self.mix(features)
        return self.fc(
            torch.tanh(self.head(F.interpolate(features, size=x.shape[2:])) * x.mean(dim=1, keepdim=True)).mean(
                dim=(2, 3)
            )
        )


def plain_scorecam_weights(model: nn.Module, layer: nn.Module, x: torch.Tensor, categories: List[int]) -> torch.Tensor:
    """softmax_k(score of input x mask_k), one forward per channel (ScoreCAM's definition)."""
    activations = layer_output(model, layer, x)
    weights = []
    for index, category in enumerate(categories):
        scores = []
        for channel in range(activations.shape[1]):
            upsampled = F.interpolate(
                activations[index, channel][None, None], size=x.shape[2:], mode="bilinear", align_corners=True
            )
            mask = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min() + 1e-8)
            with torch.no_grad():
                scores.append(model(x[index : index + 1] * mask)[0, category])
        weights.append(torch.softmax(torch.stack(scores), dim=0))
    return torch.stack(weights)


def test_scorecam_scores_each_distinct_mask_once_and_equals_one_score_per_channel():
    """Channels with equal maps and constant channels (all-zero masks) share one score:
    the weights equal one forward per channel, on a batch whose images differ in which
    channels are constant, with fewer masked forwards."""
    model = seeded(RepeatedChannelsNet)
    x = images(3, size=12)
    x[1] = -x[1].abs()  # negative mean: the gated channel is zero for this image only
    x[0], x[2] = x[0].abs(), x[2].abs() * 0.5
    categories = [1, 2, 3]
    activations = layer_output(model, model.mix, x)
    assert float(activations[1, 12].abs().max()) == 0 and float(activations[0, 12].std()) > 0
    copies = []
    handle = model.register_forward_pre_hook(lambda m, inputs: copies.append(inputs[0].shape[0]))
    try:
        cam = ScoreCAM(model, [model.mix], batch_size=4, progress=False)
        weights = cam.get_cam_weights(x, model.mix, [ClassifierOutputTarget(c) for c in categories], activations, None)
    finally:
        handle.remove()
    expected = plain_scorecam_weights(model, model.mix, x, categories)
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-6)
    assert weights.shape == (3, 16) and max(copies) <= 4
    # per image: 5 distinct maps, the 2 constant non-zero maps (on this 4 -> 12 upsampling
    # their masks are rounding noise, not zero: scored as they are) and the zero mask
    assert sum(copies) == 3 * 8
    # and the whole map equals the definition
    maps = ScoreCAM(model, [model.mix], batch_size=5, progress=False)(
        x, [ClassifierOutputTarget(c) for c in categories]
    )
    np.testing.assert_allclose(maps, scorecam_reference(model, model.mix, x, categories), atol=1e-5)


def test_scorecam_distinct_masks_plan():
    """The plan: one channel per distinct non-zero mask, in channel order; each channel's
    group; the all-zero mask (constant channels that upsample to a constant) shared."""
    from pytorch_grad_cam.score_cam import distinct_masks

    base = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(3))
    maps = torch.stack([base[1], torch.zeros(4, 4), base[0], base[1], torch.full((4, 4), 2.0), base[2], base[0]])
    kept, group, has_zero = distinct_masks(maps, (4, 4))  # no upsampling: constants stay constant
    assert kept.tolist() == [0, 2, 5] and has_zero
    assert group.tolist() == [0, 3, 1, 0, 3, 2, 1]
    kept, group, has_zero = distinct_masks(torch.zeros(5, 2, 2), (8, 8))
    assert kept.numel() == 0 and has_zero and group.tolist() == [0] * 5


class ViewNet(nn.Module):
    """Flattens with ``.view``, which a channels_last tensor cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 4)
        return self.fc(a.view(a.shape[0], -1))


def test_scorecam_channels_last_masked_images_equal_contiguous_ones(small_cnn):
    """The masked images go to the model in channels_last on the CPU; the maps equal
    those of contiguous images, and a model that cannot take them falls back."""
    layer = small_cnn.features[-1]
    x = images()
    fast = ScoreCAM(small_cnn, [layer], progress=False)(x, targets())
    plain = ScoreCAM(small_cnn, [layer], progress=False)
    plain.channels_last = False
    np.testing.assert_allclose(fast, plain(x, targets()), atol=1e-5)
    model = seeded(ViewNet)
    with pytest.raises(RuntimeError), torch.no_grad():
        model(x.contiguous(memory_format=torch.channels_last))
    maps = ScoreCAM(model, [model.conv], progress=False)(x, targets())
    np.testing.assert_allclose(maps, scorecam_reference(model, model.conv, x, CLASSES), atol=1e-5)
