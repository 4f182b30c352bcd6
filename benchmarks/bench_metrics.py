"""Speed of ROADCombined next to the model forwards it cannot avoid.

ROADCombined with percentiles (20, 40, 60, 80) on torchvision's resnet18 (random weights,
eval), 8 images 224 x 224, ClassifierOutputSoftmaxTarget, maps from a 7 x 7 random grid
upsampled (the shape of a layer4 CAM). Rows: the whole metric, the 8 x 4 x 2 image
forwards alone (what any implementation must run), and the imputation alone.

Usage::

    python benchmarks/bench_metrics.py [--threads 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def bench_road_combined(threads: int = 2, repeats: int = 3, device: str = "cpu") -> dict:
    """Median wall times (s) of ROADCombined, its forwards alone, and its imputations alone."""
    import torchvision

    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer, ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x = torch.rand(8, 3, 224, 224, device=device)
    maps = F.interpolate(torch.rand(8, 1, 7, 7, device=device), size=(224, 224), mode="bilinear")[:, 0]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in range(8)]
    percentiles = (20, 40, 60, 80)
    imputer = NoisyLinearImputer()
    metric = ROADCombined(percentiles, imputer=imputer)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def forwards() -> None:
        with torch.no_grad():
            for _ in range(2 * len(percentiles)):
                model(x)

    iterations = []

    def imputations() -> None:
        for removal in (RemoveLeastRelevantFirst, RemoveMostRelevantFirst):
            for p in percentiles:
                removal(p, imputer).perturb_batch(x, maps)
                iterations.append(imputer.last_iterations)

    rows = {
        "ROADCombined": lambda: metric(x, maps.cpu().numpy(), targets, model),
        "forwards alone (8 x 4 x 2 images)": forwards,
        "imputations alone": imputations,
    }
    times = {name: [] for name in rows}
    for name, run in rows.items():  # warm-up
        run()
    for _ in range(repeats):
        for name, run in rows.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    result = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    result["CG iterations per batch (min..max)"] = (min(iterations), max(iterations))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = bench_road_combined(args.threads, args.repeats, args.device)
    for name, value in result.items():
        text = f"{value:.2f} s" if isinstance(value, float) else str(value)
        print(f"{name:40s} {text}")


if __name__ == "__main__":
    main()
