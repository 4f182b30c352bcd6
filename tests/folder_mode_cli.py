"""cam.py's command line with a tiny classifier, for tests/test_folder_mode.py: run as a
script (``python tests/folder_mode_cli.py --image-dir ...``, also under torchrun) it is
``cam.py`` with ``--model tiny``; imported, it gives the same model entry to in-process calls.

The tiny model is built with fixed random weights (the same in every process). With the
environment variable ``FOLDER_TEST_DELAY`` (seconds) each forward pass sleeps that long
first, so that a test can kill a run halfway through.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytorch_grad_cam.cli import main  # noqa: E402
from pytorch_grad_cam.cli.model_zoo import ModelEntry  # noqa: E402

INPUT_SIZE = (48, 48)
CLASSES = 10


class TinyClassifier(nn.Module):
    """Two convolutions, global average pooling, a linear head: 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        # Seed 2: the test's ten photos get two classes (it asserts they differ, so that
        # explaining a batch with one image's class would fail). Of seeds 0-7, five give
        # two classes, three (3, 5, 6) one. The closest top-two probabilities of a photo
        # differ by 3e-4, 1e4 times the spread between batch sizes and kernel sets (3e-8).
        torch.manual_seed(2)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))
        with torch.no_grad():
            self.head[2].weight.mul_(10)  # probabilities further from uniform
        torch.random.set_rng_state(generator_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay = float(os.environ.get("FOLDER_TEST_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)
        return self.head(self.features(x))


TINY = ModelEntry(
    architecture=TinyClassifier,
    target_layer=lambda model: model.features[-1],
    pretrained=lambda progress: TinyClassifier(),
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    input_size=INPUT_SIZE,
)
MODELS = {"tiny": TINY}

if __name__ == "__main__":
    sys.exit(main(models=MODELS, default_model="tiny", prog="cam.py"))
