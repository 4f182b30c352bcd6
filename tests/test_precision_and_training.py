"""Mixed precision (docs/decisions.md, G10) and maps you can train with (G25).

A half-precision model or a call under ``torch.autocast`` gives every method's map close
to the float32 model's; the map step itself runs with autocast off, the perturbed copies
under it. ``cam.differentiable`` gives the same maps as a tensor with gradients: checked
with ``gradcheck`` in float64, by an attention-guided training loop that moves the map
onto a marked region, and by 1,000 calls whose memory stays flat.
"""

from __future__ import annotations

import gc
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_reference import single_thread_module  # noqa: F401 - autouse fixture
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.precision import autocast_state, callers_precision, full_precision
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

DIFFERENTIABLE = [
    "gradcam",
    "gradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "gradcamelementwise",
    "finercam",
    "refinecam",
]

#: How far a bfloat16 model's (or a CPU-autocast call's) map may be from the float32
#: model's: per image, correlation >= 0.97 and mean |difference| < 0.06. Measured on this
#: file's network over 8 seeds of weights and images, every method: the worst correlation
#: is 0.9908 (FullGrad; FEM 0.9959, AblationCAM 0.9972, the others >= 0.9994) and the
#: worst mean |difference| 0.022 (FullGrad), both the same for a bfloat16 model and for
#: autocast. Before the map step ran with autocast off, SegEigenCAM under bfloat16
#: autocast flipped sign (correlation 0.17) and FullGrad under float16 autocast gave NaN.
MIN_CORRELATION, MAX_MEAN_DIFFERENCE = 0.97, 0.06


def network(seed: int = 0, channels: int = 3, classes: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


def maps_of(name: str, model: nn.Module, x: torch.Tensor, autocast: object = None) -> np.ndarray:
    options = {"progress": False} if name in ("scorecam", "ablationcam") else {}
    if name == "fem":
        options = {"k": 1}  # FEM's default k=2 leaves nothing on a 16x16 grid of noise
    torch.manual_seed(0)  # RandomCAM: the same weights in every precision
    cam = METHODS[name](model, [model[2]], **options)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    if autocast is None:
        return cam(x, targets)
    with torch.autocast(autocast, dtype=torch.bfloat16 if autocast == "cpu" else torch.float16):
        return cam(x, targets)


def assert_close_to_float32(maps: np.ndarray, reference: np.ndarray, name: str) -> None:
    assert maps.dtype == np.float32 and np.isfinite(maps).all(), name
    for image in range(len(maps)):
        correlation = np.corrcoef(maps[image].ravel(), reference[image].ravel())[0, 1]
        assert correlation >= MIN_CORRELATION, (name, image, correlation)
        assert np.abs(maps[image] - reference[image]).mean() < MAX_MEAN_DIFFERENCE, (name, image)


@pytest.mark.parametrize("name", list(CNN_METHODS))
def test_bfloat16_model_and_cpu_autocast_give_the_float32_maps(name):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(100))
    reference = maps_of(name, network(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close_to_float32(maps_of(name, network().bfloat16(), x), reference, name)
        assert_close_to_float32(maps_of(name, network(), x, autocast="cpu"), reference, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a CUDA device; none here")
@pytest.mark.parametrize("name", list(CNN_METHODS))
def test_cuda_autocast_and_half_models_give_the_float32_maps(name):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(100)).cuda()
    reference = maps_of(name, network().cuda(), x)
    assert_close_to_float32(maps_of(name, network().cuda(), x, autocast="cuda"), reference, name)
    assert_close_to_float32(maps_of(name, network().cuda().half(), x), reference, name)


class AutocastProbe(nn.Module):
    """The network, recording whether CPU autocast was on at each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.net, self.seen = network(), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.is_autocast_enabled("cpu"))
        return self.net(x)


def test_maps_compute_without_autocast_and_the_model_runs_with_it():
    seen_in_map_step = []

    class Probing(GradCAM):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            seen_in_map_step.append((torch.is_autocast_enabled("cpu"), activations.dtype, grads.dtype))
            return super().get_cam_weights(input_tensor, target_layer, targets, activations, grads)

    probe, x = AutocastProbe(), torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        Probing(probe, [probe.net[2]])(x)
        ScoreCAM(probe, [probe.net[2]], progress=False, batch_size=4)(x)
        assert torch.is_autocast_enabled("cpu")  # the caller's state is back
    assert seen_in_map_step == [(False, torch.float32, torch.float32)]
    # GradCAM's pass, then ScoreCAM's own pass and its 2 x (16 masks + 0 mask) / 4 chunks
    assert len(probe.seen) >= 1 + 1 + 8 and all(probe.seen)


def test_autocast_is_read_with_the_functions_of_torch_before_2_4(monkeypatch):
    """torch < 2.4 has no ``get_autocast_dtype(device_type)`` (a TypeError or an
    AttributeError); the CPU's and CUDA's own functions say the same. (torch.autocast
    itself needs the function, so it is taken away only while the state is read.)"""

    def before_2_4(*args: object) -> None:
        raise TypeError("get_autocast_dtype() takes no arguments")

    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = autocast_state()
        with warnings.catch_warnings(), monkeypatch.context() as patch:
            warnings.simplefilter("ignore", DeprecationWarning)  # the old functions, on new torch
            patch.setattr(torch, "get_autocast_dtype", before_2_4, raising=False)
            assert autocast_state() == expected == [("cpu", torch.bfloat16)]
        with full_precision():
            assert autocast_state() == [] and not torch.is_autocast_enabled("cpu")
            with callers_precision():
                assert autocast_state() == [("cpu", torch.bfloat16)]
    assert autocast_state() == []


def test_show_cam_on_image_takes_half_precision_maps():
    rng = np.random.default_rng(0)
    image, mask = rng.random((8, 8, 3), dtype=np.float32), rng.random((8, 8), dtype=np.float32)
    expected = show_cam_on_image(image, mask)
    for half_mask in (mask.astype(np.float16), torch.from_numpy(mask).bfloat16()):
        drawn = show_cam_on_image(image, half_mask)
        assert drawn.dtype == np.uint8 and drawn.shape == (8, 8, 3)
        # float16 / bfloat16 keep 11 / 8 bits: the colour index moves by at most 1 / 2 of 255.
        assert np.abs(drawn.astype(int) - expected).max() <= 8
    assert show_cam_on_image(torch.from_numpy(image).half(), mask).dtype == np.uint8


# ======================================================================= differentiable
@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_differentiable_maps_equal_the_call_and_reach_the_parameters(name):
    model, x = network(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    cam = METHODS[name](model, [model[2]])
    maps = cam.differentiable(x, targets)
    assert maps.dtype == torch.float32 and maps.shape == (2, 16, 16) and maps.grad_fn is not None
    np.testing.assert_allclose(maps.detach().numpy(), cam(x, targets), atol=1e-6)
    # Every parameter but the classifier's bias, which moves no score's gradient.
    grads = torch.autograd.grad(maps[:, :8].sum(), list(model.parameters())[:-1])
    assert all(grad.abs().sum() > 0 for grad in grads)


@pytest.mark.parametrize("name", sorted(set(CNN_METHODS) - set(DIFFERENTIABLE)))
def test_methods_without_differentiable_maps_say_why_and_what_to_use(name):
    model = network()
    options = {"progress": False} if name in ("scorecam", "ablationcam") else {}
    cam = METHODS[name](model, [model[2]], **options)
    with pytest.raises(TypeError, match=f"{type(cam).__name__} has no differentiable maps: .+; use GradCAM"):
        cam.differentiable(torch.rand(1, 3, 16, 16))


class HeadFromOutside(nn.Module):
    """A float64 network whose classifier weights are a tensor handed in (gradcheck's input)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1).double()
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1).double()
        self.head = torch.zeros(5, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv2(torch.tanh(self.conv1(x)))
        return torch.tanh(features).mean(dim=(2, 3)) @ self.head


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM])
def test_gradcheck_of_the_maps_in_float64(cls):
    model = HeadFromOutside()
    cam = cls(model, [model.conv2])
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    head = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = [ClassifierOutputTarget(1)]

    def maps(x: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        model.head = head
        return cam.differentiable(x, targets)

    assert maps(x, head).dtype == torch.float64
    assert torch.autograd.gradcheck(maps, (x, head), eps=1e-6, atol=1e-5)


def marked_images(count: int, generator: torch.Generator):
    """Two classes (horizontal / vertical stripes, 4 x 4), each drawn twice: once in the
    marked half (channel 1 is +1 there, -1 in the other half) and once, as a distractor
    that predicts the class as well, in the other half. Returns images, labels, masks."""
    stripes = torch.zeros(2, 4, 4)
    stripes[0, ::2, :], stripes[1, :, ::2] = 1, 1
    labels = torch.randint(0, 2, (count,), generator=generator)
    images = 0.1 * torch.randn(count, 2, 16, 16, generator=generator)
    masks = torch.zeros(count, 16, 16)
    for index in range(count):
        marked, other = (0, 8) if torch.rand((), generator=generator) < 0.5 else (8, 0)
        for left in (marked, other):
            row, column = (
                torch.randint(0, 12, (1,), generator=generator),
                torch.randint(0, 4, (1,), generator=generator),
            )
            images[index, 0, row : row + 4, left + column : left + column + 4] += stripes[labels[index]]
        masks[index, :, marked : marked + 8] = 1
    images[:, 1] += 2 * masks - 1
    return images, labels, masks


def mass_inside(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return (maps * masks).sum(dim=(1, 2)) / (maps.sum(dim=(1, 2)) + 1e-7)


def test_attention_guided_training_moves_the_map_onto_the_marked_region():
    """200 steps of cross-entropy + (1 - the map's mass inside the marked half). Measured
    over 5 seeds of weights and data: the held-out mass goes from 0.22-0.96 (0.54 at this
    seed) to 0.994-1.000; cross-entropy alone ends at 0.46-0.55 (0.46 at this seed)."""
    seed = 2
    model = network(seed, channels=2, classes=2).train()
    cam = GradCAM(model, [model[2]])
    images, labels, masks = marked_images(64, torch.Generator().manual_seed(1000 + seed))
    held_out = [ClassifierOutputTarget(int(label)) for label in labels]
    before = mass_inside(torch.from_numpy(cam(images, held_out)), masks).mean().item()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(200):
        x, y, m = marked_images(16, generator)
        maps, logits = cam.differentiable(x, [ClassifierOutputTarget(int(c)) for c in y], with_outputs=True)
        loss = F.cross_entropy(logits, y) + (1 - mass_inside(maps, m)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = mass_inside(torch.from_numpy(cam(images, held_out)), masks).mean().item()
    accuracy = (model.eval()(images).argmax(dim=1) == labels).float().mean().item()
    print(f"mass inside the marked half: before {before:.3f}, after {after:.3f}, accuracy {accuracy:.2f}")
    assert before < 0.6 and after > 0.9 and after - before > 0.3, (before, after)
    assert accuracy > 0.9


def resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@pytest.mark.skipif(not os.path.isfile("/proc/self/statm"), reason="resident memory is read from Linux's /proc")
def test_memory_is_flat_over_1000_differentiable_calls():
    """Measured: growth 0 KiB between call 200 and call 1,000; keeping each call's maps
    (and so its graph) instead grows by ~44 KiB per call, 35 MiB over these 800 calls."""
    model, x = network().train(), torch.rand(1, 3, 8, 8)
    cam = GradCAM(model, [model[2]])
    targets = [ClassifierOutputTarget(1)]
    cuda = torch.cuda.is_available()
    for call in range(1000):
        if call == 200:
            gc.collect()
            start = resident_kib()
        maps = cam.differentiable(x, targets)
        maps.mean().backward()
    gc.collect()
    growth = resident_kib() - start
    print(f"resident memory growth over calls 200-1000: {growth} KiB")
    assert growth < 4096, growth
    assert all(p.grad is not None and p.grad.grad_fn is None for p in list(model.parameters())[:-1])
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert not any(torch.is_tensor(value) for value in vars(cam).values())
    if cuda:
        model.cuda()
        cam.differentiable(x.cuda(), targets).mean().backward()
        allocated = torch.cuda.memory_allocated()
        for _ in range(200):
            cam.differentiable(x.cuda(), targets).mean().backward()
        assert torch.cuda.memory_allocated() - allocated < 1 << 20


def test_differentiable_maps_under_autocast_are_float32_with_gradients():
    model, x = network(), torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    reference = GradCAM(model, [model[2]]).differentiable(x, targets).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = GradCAM(model, [model[2]]).differentiable(x, targets)
    assert maps.dtype == torch.float32 and maps.grad_fn is not None
    assert np.corrcoef(maps.detach().ravel(), reference.ravel())[0, 1] > MIN_CORRELATION
    maps.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in list(model.parameters())[:-1])


def test_a_frozen_model_and_a_plain_input_is_a_clear_error():
    model = network().requires_grad_(False)
    with pytest.raises(ValueError, match="not in an autograd graph.+requires_grad_"):
        GradCAM(model, [model[2]]).differentiable(torch.rand(1, 3, 16, 16))


def test_differentiable_maps_of_an_input_made_under_no_grad_or_inference_mode():
    model = network()
    cam = GradCAM(model, [model[2]])
    with torch.inference_mode():
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        maps = cam.differentiable(x, [ClassifierOutputTarget(1)] * 2)
    with torch.no_grad():
        again = cam.differentiable(x.clone(), [ClassifierOutputTarget(1)] * 2)
    assert maps.grad_fn is not None and again.grad_fn is not None
    np.testing.assert_allclose(maps.detach().numpy(), cam(x.clone(), [ClassifierOutputTarget(1)] * 2), atol=1e-6)
