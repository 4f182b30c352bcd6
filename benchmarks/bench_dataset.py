"""The data-set rows: the bundled photos repeated to 64 images, explained with GradCAM on
EfficientNet-Lite0 (pretrained) by a Python loop calling the library one image at a time,
by ``cam.py --image-dir`` (one process, torchrun, held to one core), and the ceiling
(folder mode's CAM calls alone). Each row runs in a fresh subprocess; the loop and the
ceiling through bench.py's internal ``--dataset-loop`` and ``--dataset-ceiling``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from bench_harness import BENCH_SCRIPT, median_ratio

#: cam.py --image-dir on the bundled photos repeated to this many images.
DATASET_IMAGES = 64
DATASET_BATCH = 4
ROOT = Path(__file__).resolve().parents[1]
#: (row, reference row, smallest ratio of images/s, description)
DATASET_TARGETS = [
    ("folder", "loop", 2.0, "folder mode >= 2x the images/s of a loop calling the library one image at a time"),
    ("process-1x1", "loop-1", 2.0, "the same, both with 1 thread"),
    (
        "torchrun-2x1",
        "process-1x1",
        1.6,
        "torchrun --nproc-per-node 2 (1 thread each) >= 1.6x one process with 1 thread",
    ),
    ("torchrun-2x1", "process-1core", 1.6, "the same against one process with 1 thread held to one core"),
]


def dataset_folder(directory: Path, count: int = DATASET_IMAGES) -> Path:
    """``examples/*.jpg`` copied round-robin into ``directory`` until it holds ``count`` images."""
    import shutil

    photos = sorted((ROOT / "examples").glob("*.jpg"))
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        photo = photos[index % len(photos)]
        shutil.copyfile(photo, directory / f"{index:03d}_{photo.name}")
    return directory


class LibraryLoop:
    """The baseline: a Python loop calling the library on one image at a time, as a user
    writes it: one GradCAM object on EfficientNet-Lite0 (pretrained, ``_swish``), and for
    each photo cam.py's reading and resizing, one call with ``targets=None`` (the top
    class), the overlay at the photo's size and the map written as in folder mode."""

    def __init__(self) -> None:
        from pytorch_grad_cam.cli.model_zoo import MODELS, load_model

        self.entry = MODELS["efficientnet_lite0"]
        self.model = load_model(self.entry, "efficientnet_lite0", progress=False)

    def images_per_second(self, folder: Path, out: Path, threads: int, device: str = "cpu") -> float:
        import numpy as np

        from pytorch_grad_cam.cli.app import cam_overlay, model_input, read_photo
        from pytorch_grad_cam.cli.folder import encode_jpeg, encode_map
        from pytorch_grad_cam.registry import get_method

        photos = sorted(folder.glob("*.jpg"))
        out.mkdir(parents=True, exist_ok=True)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            model = self.model.to(device)
            started = time.perf_counter()
            with get_method("gradcam")(model, [self.entry.target_layer(model)]) as cam:
                for path in photos:
                    photo = read_photo(path)
                    grayscale = cam(model_input(photo, self.entry).to(device), targets=None)[0]
                    (out / f"{path.stem}.gradcam.jpg").write_bytes(encode_jpeg(cam_overlay(photo, grayscale)))
                    (out / f"{path.stem}.gradcam.npz").write_bytes(encode_map(np.asarray(grayscale)))
            return len(photos) / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(before)


class CamCallsAlone:
    """The ceiling of any folder pipeline: folder mode's CAM calls (batches of
    :data:`DATASET_BATCH`, channels_last, top class) on photos decoded and resized
    beforehand, with nothing read or written while the clock runs."""

    def __init__(self) -> None:
        from pytorch_grad_cam.cli.model_zoo import MODELS, load_model

        self.entry = MODELS["efficientnet_lite0"]
        self.model = load_model(self.entry, "efficientnet_lite0", progress=False)

    def images_per_second(self, folder: Path, threads: int, device: str = "cpu") -> float:
        from pytorch_grad_cam.cli.app import model_input, read_photo
        from pytorch_grad_cam.registry import get_method

        inputs = torch.cat([model_input(read_photo(path), self.entry) for path in sorted(folder.glob("*.jpg"))])
        inputs, model = inputs.to(device), self.model.to(device)
        memory_format = torch.channels_last if inputs.device.type == "cpu" else torch.contiguous_format
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            started = time.perf_counter()
            with get_method("gradcam")(model, [self.entry.target_layer(model)]) as cam:
                for start in range(0, len(inputs), DATASET_BATCH):
                    cam(inputs[start : start + DATASET_BATCH].contiguous(memory_format=memory_format), targets=None)
            return len(inputs) / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(before)


def loop_rate(folder: Path, out: Path, threads: int, ceiling: bool = False, device: str = "cpu") -> float:
    """images/s of :class:`LibraryLoop` (or with ``ceiling``, :class:`CamCallsAlone`) in a
    fresh subprocess (started cold, as cam.py is),
    from the first image to the last, without Python's start, the imports and the model's loading."""
    import shutil

    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    command = [
        sys.executable,
        str(BENCH_SCRIPT),
        "--dataset-ceiling" if ceiling else "--dataset-loop",
        str(folder),
        str(out),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"the loop failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def folder_mode_rate(
    folder: Path,
    out: Path,
    processes: int,
    threads: Optional[int],
    workers: int,
    one_core: bool = False,
    device: str = "cpu",
) -> float:
    """images/s of ``cam.py --image-dir`` (GradCAM, EfficientNet-Lite0, batches of
    :data:`DATASET_BATCH`) in a subprocess, as the command reports it: from the first batch
    to the merged CSV, without Python's start, the imports and the model's loading; under
    torchrun for ``processes`` > 1; with ``one_core``, the process (its writer threads
    included) held to one core with ``sched_setaffinity``."""
    import re
    import shutil

    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    program = [
        str(ROOT / "cam.py"),
        "--image-dir",
        str(folder),
        "--output-dir",
        str(out),
        "--model",
        "efficientnet_lite0",
        "--method",
        "gradcam",
        "--batch-size",
        str(DATASET_BATCH),
        "--num-workers",
        str(workers),
        "--no-progress",
        "--device",
        device,
    ]
    launcher = (
        [sys.executable]
        if processes == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    )
    shutil.rmtree(out, ignore_errors=True)
    cores = sorted(os.sched_getaffinity(0))[:1] if one_core else None
    done = subprocess.run(
        launcher + program,
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
    )
    shutil.rmtree(out, ignore_errors=True)
    match = re.search(r"([0-9.]+) images/s", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"cam.py --image-dir failed: {done.stderr.strip()[-2000:]}")
    return float(match.group(1))


#: Each data-set row's reference row (the loop where the reference does not run).
DATASET_REFERENCES = {
    "loop": "loop",
    "folder": "loop",
    "loop-1": "loop",
    "process-1x1": "loop-1",
    "torchrun-2x1": "process-1x1",
    "process-1core": "process-1x1",
    "ceiling": "loop",
}
#: A data-set row: (label, rate(folder, out) in images/s).
DatasetRow = Tuple[str, Callable[[Path, Path], float]]


def dataset_rows(device: str = "cpu") -> Dict[str, DatasetRow]:
    """The data-set rows by key. On a GPU (``device`` "cuda") only the loop, folder mode and
    the ceiling: the one-thread and torchrun rows are about CPU cores (torchrun's second
    rank would want a second GPU)."""
    threads = torch.get_num_threads()
    rows = {
        "loop": (
            f"Python loop, the library on one image at a time, {threads} threads, {device} (reference)",
            lambda folder, out: loop_rate(folder, out, threads, device=device),
        ),
        "folder": (
            f"cam.py --image-dir, batch {DATASET_BATCH}, {threads} threads, 2 DataLoader workers, {device}",
            lambda folder, out: folder_mode_rate(folder, out, 1, threads, 2, device=device),
        ),
        "loop-1": (
            "Python loop, the library on one image at a time, 1 thread",
            lambda folder, out: loop_rate(folder, out, 1),
        ),
        "process-1x1": (
            f"cam.py --image-dir, batch {DATASET_BATCH}, 1 thread, no workers",
            lambda folder, out: folder_mode_rate(folder, out, 1, 1, 0),
        ),
        "torchrun-2x1": (
            f"torchrun --nproc-per-node 2, batch {DATASET_BATCH}, 1 thread each, no workers",
            lambda folder, out: folder_mode_rate(folder, out, 2, 1, 0),
        ),
        "process-1core": (
            f"cam.py --image-dir, batch {DATASET_BATCH}, 1 thread, no workers, held to one core",
            lambda folder, out: folder_mode_rate(folder, out, 1, 1, 0, one_core=True),
        ),
        "ceiling": (
            f"ceiling: the CAM calls alone (batch {DATASET_BATCH}, channels_last on the CPU), {threads} "
            f"threads, {device}, nothing read or written",
            lambda folder, out: loop_rate(folder, out, threads, ceiling=True, device=device),
        ),
    }
    if device != "cpu":
        rows = {key: rows[key] for key in ("loop", "folder", "ceiling")}
    return rows


def dataset_rates(rows: Dict[str, DatasetRow], repeats: int) -> Dict[str, List[float]]:
    """Each row's images/s in ``repeats`` round-robin rounds (the order rotates each
    round), on the photos copied into a temporary folder."""
    import tempfile

    rates: Dict[str, List[float]] = {key: [] for key in rows}
    with tempfile.TemporaryDirectory() as scratch:
        folder = dataset_folder(Path(scratch) / "photos")
        out = Path(scratch) / "out"
        keys = list(rows)
        for round_index in range(repeats):
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                rates[key].append(rows[key][1](folder, out))
    return rates


def dataset_table(repeats: int, device: str = "cpu") -> List[str]:
    """The data-set rows (:func:`dataset_rows`), round-robin over ``repeats`` rounds;
    prints the table and returns the target lines (met/MISSED)."""
    rows = dataset_rows(device)
    rates = dataset_rates(rows, repeats)
    photos = len(list((ROOT / "examples").glob("*.jpg")))
    print(
        f"\n### Data sets: GradCAM on EfficientNet-Lite0 (pretrained), the {photos} "
        f"bundled photos repeated to {DATASET_IMAGES} images"
    )
    print("images/s: median over rounds; ratio: median over rounds of (row / its reference in the same round)\n")
    width = max(len(label) for label, _ in rows.values())
    print(f"| {'row':<{width}} | images/s |  ratio | reference |")
    print(f"|{'-' * (width + 2)}|---------:|-------:|-----------|")
    for key, (label, _) in rows.items():
        reference = DATASET_REFERENCES[key] if DATASET_REFERENCES[key] in rows else "loop"
        print(
            f"| {label:<{width}} | {statistics.median(rates[key]):8.2f} | "
            f"{median_ratio(rates[key], rates[reference]):5.2f}x | {reference} |"
        )
    lines = []
    for key, reference, least, text in DATASET_TARGETS:
        if key in rows and reference in rows:
            value = median_ratio(rates[key], rates[reference])
            lines.append(f"{text}: {value:.2f}x  {'met' if value >= least else 'MISSED'}")
    return lines
