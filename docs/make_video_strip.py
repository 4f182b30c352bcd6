"""Render the README's video picture, docs/video_strip.jpg: a tiny 3D CNN, trained here
on synthetic clips (a textured background; class 1 has a red disc crossing a few
consecutive frames, at a random place in time), and the GradCAM of class 1 for a
held-out clip whose disc is in frames 4-7 of 12, drawn with
``pytorch_grad_cam.utils.video.video_strip`` (each frame over its overlay). Prints the
map's share of its mass in the disc's frames.

    python docs/make_video_strip.py            # about 20 s on a CPU
    python docs/make_video_strip.py --output /tmp/strip.jpg
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
from pytorch_grad_cam.utils.video import moving_object_clip, video_strip

FRAMES, SIZE, SHOWN = 12, 40, (4, 8)


def clips(count: int, seed: int) -> tuple:
    """(clips (N, 3, T, H, W), labels (N,)): the odd clips hold the disc for 3 to 5 frames
    starting at a random frame; the even ones are a background without it."""
    generator = np.random.default_rng(seed)
    batch, labels = [], []
    for index in range(count):
        start = int(generator.integers(0, FRAMES - 5))
        stop = start + int(generator.integers(3, 6))
        clip = moving_object_clip(FRAMES, SIZE, (start, stop), seed=int(generator.integers(1 << 30)))
        if index % 2 == 0:
            clip = np.repeat(clip[stop : stop + 1] if stop < FRAMES else clip[:1], FRAMES, axis=0)
        batch.append(clip)
        labels.append(index % 2)
    return as_input(np.stack(batch)), torch.tensor(labels)


def as_input(frames: np.ndarray) -> torch.Tensor:
    """(N, T, H, W, 3) RGB in [0, 1] as the model's (N, 3, T, H, W) input, centred on 0
    (uncentred, the tiny network does not learn)."""
    return torch.from_numpy(frames - 0.5).permute(0, 4, 1, 2, 3).contiguous()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("video_strip.jpg"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(6, 8, 3, padding=1, stride=(1, 2, 2)),
        nn.ReLU(),
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    train, labels = clips(48, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(40):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(train), labels).backward()
        optimiser.step()
    model.eval()
    test, test_labels = clips(32, seed=2)
    with torch.no_grad():
        accuracy = float((model(test).argmax(1) == test_labels).float().mean())
    frames = moving_object_clip(FRAMES, SIZE, SHOWN, seed=7)
    clip = as_input(frames[None])
    maps = GradCAM(model, [model[2]])(clip, [ClassifierOutputTarget(1)])[0]
    mass = maps.sum(axis=(1, 2))
    share = mass[SHOWN[0] : SHOWN[1]].sum() / mass.sum()
    print(f"held-out accuracy {accuracy:.3f}; map mass in frames {SHOWN[0]}-{SHOWN[1] - 1}: {share:.3f}")
    print("mass per frame:", " ".join(f"{value / mass.sum():.2f}" for value in mass))
    scale = 2  # 80-pixel frames, for the page
    big = np.stack([cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for frame in frames])
    big_maps = np.stack([cv2.resize(m, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) for m in maps])
    strip = video_strip(big, np.clip(big_maps, 0, 1), every=1, gap=4)
    cv2.imwrite(str(args.output), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print(f"wrote {args.output} ({strip.shape[1]}x{strip.shape[0]})")


if __name__ == "__main__":
    main()
