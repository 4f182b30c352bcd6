"""Tiny models and synthetic data for the 1D-signal and several-input tests."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

LENGTH = 64


def bump_signals(count: int, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(signals (N, 1, 64), labels (N,), bump centres (N,)): noise (sd 0.3); class 1 has a
    Gaussian bump (height 2, sd 2 samples) at a random centre in [8, 56), class 0 none."""
    generator = torch.Generator().manual_seed(seed)
    signals = 0.3 * torch.randn(count, 1, LENGTH, generator=generator)
    labels = torch.arange(count) % 2
    centres = torch.randint(8, LENGTH - 8, (count,), generator=generator)
    positions = torch.arange(LENGTH).float()
    bumps = 2.0 * torch.exp(-((positions[None] - centres[:, None].float()) ** 2) / (2 * 2.0**2))
    signals[:, 0] += bumps * labels[:, None]
    return signals, labels, centres


class SignalNet(nn.Module):
    """Conv1d -> ReLU -> MaxPool(2) -> Conv1d -> ReLU -> global max -> Linear(2)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, 5, padding=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool1d(torch.relu(self.conv1(x)), 2)
        return self.fc(torch.relu(self.conv2(x)).amax(dim=-1))


def trained_signal_net(steps: int = 40) -> Tuple[SignalNet, float]:
    """A SignalNet trained on :func:`bump_signals` (Adam, fixed seed), in eval mode, and
    its smallest logit margin on 64 held-out signals (positive: all right)."""
    model = SignalNet()
    signals, labels, _ = bump_signals(128, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(signals), labels).backward()
        optimiser.step()
    model.eval()
    test, test_labels, _ = bump_signals(64, seed=2)
    with torch.no_grad():
        logits = model(test)
    rows = torch.arange(64)
    margin = (logits[rows, test_labels] - logits[rows, 1 - test_labels]).min()
    return model, float(margin)


class ImageAndMeta(nn.Module):
    """model(image (B, 3, 8, 8), meta (B, 2), scale=1.0): conv -> ReLU -> conv -> ReLU ->
    mean, plus a linear term of ``meta`` times ``scale`` (a non-tensor argument)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.meta = nn.Linear(2, 5)
        self.fc = nn.Linear(5, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(image))))
        return self.fc(x.mean(dim=(2, 3)) + scale * self.meta(meta))
