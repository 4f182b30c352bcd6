"""Render the README's 1D picture, docs/signal_overlay.png: a tiny Conv1d classifier,
trained here on synthetic signals (noise; class 1 has a bump at a random place), and
the GradCAM of class 1 for three held-out signals, each drawn with
``pytorch_grad_cam.utils.signal.show_cam_on_signal`` (the map tints the plot and is the
colour strip under it). Prints where each map peaks and where its bump is.

    python docs/make_signal_overlay.py            # a few seconds on a CPU
    python docs/make_signal_overlay.py --output /tmp/overlay.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.signal import show_cam_on_signal

LENGTH = 256


def signals(count: int, seed: int) -> tuple:
    """(signals (N, 1, 256), labels (N,), bump centres (N,)): a wandering baseline plus
    noise; class 1 adds a bump (height 2, sd 4 samples) at a random centre."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(LENGTH).float()
    phase = torch.rand(count, 1, generator=generator) * 6.28
    base = 0.5 * torch.sin(time / 20 + phase) + 0.25 * torch.randn(count, LENGTH, generator=generator)
    labels = torch.arange(count) % 2
    centres = torch.randint(24, LENGTH - 24, (count,), generator=generator)
    bumps = 2.0 * torch.exp(-((time - centres[:, None].float()) ** 2) / (2 * 4.0**2))
    return (base + bumps * labels[:, None])[:, None], labels, centres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("signal_overlay.png"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 8, 9, padding=4),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 9, padding=4),
        nn.ReLU(),
        nn.AdaptiveMaxPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    train, labels, _ = signals(256, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(train), labels).backward()
        optimiser.step()
    model.eval()
    test, test_labels, centres = signals(6, seed=5)
    chosen = test[test_labels == 1]
    maps = GradCAM(model, target_layers=[model[3]])(chosen, [ClassifierOutputTarget(1)] * len(chosen))
    rows = []
    for signal, cam, centre in zip(chosen, maps, centres[test_labels == 1]):
        print(f"bump at {int(centre)}, map peaks at {int(cam.argmax())}")
        rows.append(show_cam_on_signal(signal[0].numpy(), cam, width=720, height=120, strip=24))
        rows.append(np.full((8, 720, 3), 255, np.uint8))
    picture = np.concatenate(rows[:-1])
    cv2.imwrite(str(args.output), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.output} {picture.shape}")


if __name__ == "__main__":
    main()
