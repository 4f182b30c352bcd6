"""1D signals (B, C, L): maps (B, L) at the input's length for every method that has
one, the float64 reference's formulas, localisation of a class-defining bump, the
overlay picture, deletion/insertion along time, and the errors (docs/decisions.md, G24)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cam_reference import reference_cam, single_thread_module  # noqa: F401 - one thread for the module
from method_sets import CNN_METHODS
from signal_models import LENGTH, SignalNet, bump_signals, trained_signal_net
from torch import nn

from pytorch_grad_cam import GradCAM, get_method
from pytorch_grad_cam.metrics.deletion_insertion import DeletionMetric, InsertionMetric
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.signal import show_cam_on_signal

FORMULA_METHODS = ["gradcam", "gradcam++", "hirescam", "layercam", "xgradcam"]


@pytest.fixture(scope="module")
def trained() -> tuple:
    return trained_signal_net()


@pytest.fixture(scope="module")
def net() -> SignalNet:
    return SignalNet().eval()


@pytest.mark.parametrize("method", FORMULA_METHODS)
def test_formulas_match_the_float64_reference(net: SignalNet, method: str) -> None:
    signals = torch.randn(3, 1, LENGTH, generator=torch.Generator().manual_seed(4))
    classes = [0, 1, 1]
    result = get_method(method)(net, [net.conv2])(signals, [ClassifierOutputTarget(c) for c in classes])
    reference = reference_cam(method, net, [net.conv2], signals, classes)
    assert result.shape == (3, LENGTH)
    np.testing.assert_allclose(result, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", list(CNN_METHODS))
def test_every_method_gives_maps_at_the_signal_length(net: SignalNet, method: str) -> None:
    signals = torch.randn(2, 1, LENGTH, generator=torch.Generator().manual_seed(5))
    kwargs = {"batch_size": 16, "progress": False} if method in ("scorecam", "ablationcam") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AblationCAM's tail fallback note
        maps = get_method(method)(net, [net.conv2], **kwargs)(signals)
    assert maps.shape == (2, LENGTH) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and np.isclose(maps.max(axis=1), 1, atol=1e-5).all()


def test_the_map_peaks_at_the_class_defining_bump(trained: tuple) -> None:
    model, margin = trained
    assert margin > 2  # measured 9.7: every held-out signal right by a wide margin
    signals, labels, centres = bump_signals(64, seed=3)
    bumps, where = signals[labels == 1], centres[labels == 1]
    for layer, allowed in ((model.conv2, 3), (model.conv1, 2)):
        maps = GradCAM(model, [layer])(bumps, [ClassifierOutputTarget(1)] * len(bumps))
        error = (torch.as_tensor(maps.argmax(axis=1)) - where).abs()
        # measured over these 32 signals: conv2 (half length) max 2, mean 1.31; conv1 max 1, mean 0.47
        assert int(error.max()) <= allowed, error.tolist()


def test_layer_search_picks_the_last_conv1d(net: SignalNet) -> None:
    cam = GradCAM(net)
    with pytest.warns(UserWarning, match=r"using 'conv2' \(Conv1d\)"):
        maps = cam(torch.randn(2, 1, LENGTH))
    assert cam.target_layers == [net.conv2] and maps.shape == (2, LENGTH)


def test_aug_smooth_flips_time(trained: tuple) -> None:
    model, _ = trained
    signals, labels, centres = bump_signals(8, seed=6)
    maps = GradCAM(model, [model.conv2])(signals[labels == 1], aug_smooth=True)
    assert maps.shape == (4, LENGTH)
    assert (np.abs(maps.argmax(axis=1) - centres[labels == 1].numpy()) <= 3).all()


def test_token_sequences_with_a_transposing_reshape_transform() -> None:
    torch.manual_seed(0)
    embed, block = nn.Conv1d(1, 8, 4, stride=4), nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.block, self.head = embed, block, nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.embed(x).transpose(1, 2)).mean(dim=1))

    model = Tokens().eval()
    maps = GradCAM(model, [model.block], reshape_transform=lambda t: t.transpose(1, 2))(torch.randn(2, 1, LENGTH))
    assert maps.shape == (2, LENGTH) and np.isclose(maps.max(axis=1), 1, atol=1e-5).all()
    with pytest.raises(ValueError, match=r"activations of shape \(2, 16, 8, 1\) for a \(B, C, L\) signal.*transpose"):
        GradCAM(model, [model.block], reshape_transform=lambda t: t[:, :, :, None])(torch.randn(2, 1, LENGTH))


def test_a_3d_image_to_a_2d_model_keeps_the_batch_hint() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\); add the batch dimension with input_tensor\[None\]"):
        GradCAM(model, [model[0]])(torch.randn(3, 8, 8))


def test_overlay_draws_the_signal_over_its_map() -> None:
    signal = np.sin(np.linspace(0, 6, 100))
    cam = np.exp(-((np.arange(100) - 70) ** 2) / 50.0)
    picture = show_cam_on_signal(signal, cam, width=200, height=80, strip=20)
    assert picture.shape == (100, 200, 3) and picture.dtype == np.uint8
    hot, cold = picture[90, 141], picture[90, 10]  # the strip at sample 70 and at sample 5
    assert hot[0] > 100 and hot[2] < 50 and cold[2] > 100 and cold[0] < 50  # JET: red high, blue low
    assert (picture[:80].min(axis=2) < 60).any()  # the curve is drawn dark
    with pytest.raises(ValueError, match=r"got shapes \(1, 100\) and \(99,\)"):
        show_cam_on_signal(signal, cam[:99])
    with pytest.raises(ValueError, match=r"cam must be finite and in \[0, 1\]"):
        show_cam_on_signal(signal, cam * 2)


def test_deletion_and_insertion_along_time(trained: tuple) -> None:
    model, _ = trained
    signals, labels, _ = bump_signals(8, seed=7)
    bumps = signals[labels == 1]
    targets = [ClassifierOutputTarget(1)] * len(bumps)
    maps = GradCAM(model, [model.conv1])(bumps, targets)
    flipped = 1 - maps  # the worst order: the bump last
    deletion, insertion = DeletionMetric(steps=16), InsertionMetric(steps=16, baseline="constant")
    good, bad = deletion(bumps, maps, targets, model), deletion(bumps, flipped, targets, model)
    assert good.shape == (4,) and (good < bad).all()
    assert (insertion(bumps, maps, targets, model) > insertion(bumps, flipped, targets, model)).all()
    with pytest.raises(ValueError, match=r"cams of \(B, C, L\) signals must be \(B, L\)"):
        deletion(bumps, maps[:, None], targets, model)


def test_the_inputs_page_sections_run_and_its_picture_is_there() -> None:
    """docs/inputs.md's "Several inputs" and "1D signals" sections run, with the shapes they state."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "inputs.md").read_text(encoding="utf-8")
    section = text.split("## Several inputs\n", 1)[1].split("\n## Video\n", 1)[0]
    namespace: dict = {}
    torch.manual_seed(0)
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        exec(compile(block, "docs/inputs.md", "exec"), namespace)  # noqa: S102 - our own page's code
    assert namespace["two_input_maps"].shape == (2, 32, 32) and namespace["dict_maps"].shape == (2, 32, 32)
    assert namespace["signal_maps"].shape == (4, 256) and namespace["deletion_scores"].shape == (4,)
    assert namespace["signal_picture"].shape == (240, 640, 3) and namespace["signal_picture"].dtype == np.uint8
    picture = cv2.imread(str(root / "docs" / "signal_overlay.png"))
    assert picture is not None and picture.shape == (448, 720, 3)
