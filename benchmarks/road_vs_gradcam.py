"""ROADCombined (percentiles 20/40/60/80) on ResNet-18 (random weights, seed 0), 8 images
224 x 224, 2 threads, wall clock: this library or grad-cam 1.5.7, whichever the argument
names, with the 64 model forwards alone beside it for scale.

    python benchmarks/road_vs_gradcam.py ours
    /tmp/gradcam157/bin/python benchmarks/road_vs_gradcam.py theirs   # grad-cam 1.5.7 in a throwaway venv

Run both one after the other on a quiet machine; the ratio of the ROADCombined lines is
the comparison. grad-cam is never a dependency of this project.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(library: str) -> None:
    """Print two timed calls of ROADCombined and of the forwards alone for ``library``
    ("ours": this repository's package; "theirs": the interpreter's installed one)."""
    if library == "ours":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    elif library != "theirs":
        raise SystemExit(f"library must be 'ours' or 'theirs', got {library!r}")
    import torch
    import torch.nn.functional as F
    import torchvision

    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.rand(8, 3, 224, 224)
    maps = F.interpolate(torch.rand(8, 1, 7, 7), size=(224, 224), mode="bilinear")[:, 0].numpy()
    targets = [ClassifierOutputSoftmaxTarget(c) for c in range(8)]
    metric = ROADCombined(percentiles=[20, 40, 60, 80])

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(8):
                model(x)

    forwards()
    for _ in range(2):
        start = time.perf_counter()
        forwards()
        forward_seconds = time.perf_counter() - start
        start = time.perf_counter()
        metric(x, maps, targets, model)
        road_seconds = time.perf_counter() - start
        print(
            f"{library}: ROADCombined {road_seconds:.2f} s, its 64 forwards alone {forward_seconds:.2f} s", flush=True
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ours")
