"""Speed and memory of every CAM method, next to the cost floor it should sit on.

ResNet-50 (random weights: speed does not depend on them) on 224 x 224 inputs. Each
table compares its rows with a reference row measured in the same rounds:

* gradient methods (batch 1 and 8) against the *bare forward+backward*: ``model(x)``,
  the chosen logit of each image summed, ``.backward()`` through the whole network
  (parameter gradients included), which is what a training step of the model costs;
* AblationCAM (layer4[-1], 2048 channels, one image) against GradCAM on that image;
* ScoreCAM (one image) against its own K forward passes of masked inputs at
  ``batch_size``, without anything else;
* ``eigen_smooth`` on layer1[-1] (56 x 56 x 256) against the plain GradCAM call;
* ``aug_smooth`` (6 augmented copies) against the plain GradCAM call;
* with ``--metrics`` (not in the default run): ROADCombined (percentiles 20/40/60/80)
  and Deletion + Insertion (20 steps each) on ResNet-18 (random weights), 8 images,
  against the model forwards they cannot avoid, and ROAD's imputations alone (the part
  that is this library's work; the other library takes 13.7 s for the whole ROAD call).

Rows marked "floor" show the least work the method could do (for example one forward
and a backward that stops at the target layer), so that a ratio can be read as
"engine overhead" too.

Timing: every row of a table is warmed up, then the rows run round-robin for
``--repeats`` rounds (the order rotates each round); a row's time is its median, and
its ratio is the median over rounds of (row / reference in the same round), which
cancels most of the drift of a shared machine.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated()`` during one call minus
what was allocated before it. On the CPU (Linux), the peak resident set size
(``VmHWM``) of one call in a fresh subprocess, minus the resident size just before
the call (model and input built, the peak reset through ``/proc/self/clear_refs`` and
freed heap memory returned with ``malloc_trim``): the memory the call itself added,
as the operating system saw it, torch's allocations and everything else included.
The subprocess runs with glibc's mmap threshold fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``), so that a freed tensor goes back to the system at once;
with glibc's adaptive default, successive forward passes leave freed blocks in
malloc's heap, and even two bare forwards in a row peak ~40 % above one.

Usage::

    python benchmarks/bench.py                 # the full tables (several minutes on a CPU)
    python benchmarks/bench.py --quick         # fewer rounds, a smaller ScoreCAM
    python benchmarks/bench.py --device cuda
    python benchmarks/bench.py --metrics --only metrics --threads 2 --no-memory   # the metrics rows alone
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytorch_grad_cam.registry import METHODS  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

IMAGE_SIZE = 224
GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "eigengradcam"]
PERTURBATION_BATCH_SIZE = 32  # the default batch_size of ScoreCAM and AblationCAM
MMAP_THRESHOLD = 64 * 1024  # bytes; see "Peak memory" above


# =========================================================================== the cases
@dataclass
class Bench:
    """The model, inputs and options every case is built from."""

    device: torch.device
    scorecam_channels: int
    model: torch.nn.Module = field(init=False)

    def __post_init__(self) -> None:
        import torchvision

        torch.manual_seed(0)
        self.model = torchvision.models.resnet50(weights=None).eval().to(self.device)

    def images(self, batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch)
        return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(self.device)

    @staticmethod
    def categories(batch: int) -> List[int]:
        return [(7 * index + 3) % 1000 for index in range(batch)]

    def targets(self, batch: int) -> List[ClassifierOutputTarget]:
        return [ClassifierOutputTarget(c) for c in self.categories(batch)]


def bare_forward_backward(bench: Bench, batch: int) -> Callable[[], None]:
    """model(x); the chosen logits summed; .backward() through the whole network."""
    model, images = bench.model, bench.images(batch)
    rows = torch.arange(batch, device=bench.device)
    columns = torch.tensor(bench.categories(batch), device=bench.device)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(images)[rows, columns].sum().backward()

    return run


def forward_to_layer_floor(bench: Bench, batch: int, layer: str) -> Callable[[], None]:
    """The floor of a gradient method: one forward pass that records a graph only from
    the target layer on, and a backward pass that stops at the layer's output (the
    gradient of the summed chosen logits with respect to it)."""
    model, images = bench.model, bench.images(batch)
    module = dict(model.named_modules())[layer]
    rows = torch.arange(batch, device=bench.device)
    columns = torch.tensor(bench.categories(batch), device=bench.device)
    recorded: List[torch.Tensor] = []

    def leaf(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)
        recorded.append(output.detach().requires_grad_(True))
        return recorded[-1]

    def run() -> None:
        handle = module.register_forward_hook(leaf)
        try:
            with torch.no_grad():
                scores = model(images)[rows, columns].sum()
        finally:
            handle.remove()
        torch.autograd.grad(scores, recorded.pop())

    return run


def forward_only(bench: Bench, batch: int) -> Callable[[], None]:
    """One forward pass under no_grad (the floor of EigenCAM)."""
    model, images = bench.model, bench.images(batch)

    def run() -> None:
        with torch.no_grad():
            model(images)

    return run


def cam_call(bench: Bench, method: str, batch: int, layer: str = "layer4.2", **options) -> Callable[[], None]:
    """One call of a CAM method; ``options`` go to the call (aug_smooth, eigen_smooth)
    or, for ``batch_size``/``reshape_transform``, to the constructor."""
    constructor = {}
    for name in ("batch_size", "reshape_transform"):
        if name in options:
            constructor[name] = options.pop(name)
    cls = METHODS[method]
    if method in ("scorecam", "ablationcam"):
        constructor["progress"] = False
    cam = cls(bench.model, [layer], **constructor)
    images, targets = bench.images(batch), bench.targets(batch)
    return lambda: cam(images, targets, **options)


def first_channels(count: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A reshape_transform keeping the first ``count`` channels, so that ScoreCAM runs
    K = count masked forwards instead of 2048 (its cost is linear in K)."""
    return lambda activations: activations[:, :count]


def scorecam_floor(bench: Bench, channels: int) -> Callable[[], None]:
    """ScoreCAM's own K forwards: K masked copies of one image through the model, at
    batch_size, under no_grad, with the masked inputs made in advance."""
    model = bench.model
    generator = torch.Generator().manual_seed(1)
    size = min(PERTURBATION_BATCH_SIZE, channels)
    masks = torch.rand(size, 1, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(bench.device)
    inputs = bench.images(1) * masks

    def run() -> None:
        with torch.no_grad():
            for start in range(0, channels, PERTURBATION_BATCH_SIZE):
                model(inputs[: min(PERTURBATION_BATCH_SIZE, channels - start)])

    return run


def ablation_floor(bench: Bench) -> Callable[[], None]:
    """AblationCAM's floor: one forward, then ResNet-50's network after layer4[-1]
    (average pooling, the classifier) on its 2048 ablated activations, 32 at a time,
    with the ablated copies made in advance."""
    model, images = bench.model, bench.images(1)
    with torch.no_grad():
        recorded: List[torch.Tensor] = []
        handle = model.layer4[-1].register_forward_hook(lambda m, i, output: recorded.append(output))
        model(images)
        handle.remove()
    channels = recorded[0].shape[1]
    ablated = recorded[0].repeat(PERTURBATION_BATCH_SIZE, 1, 1, 1)
    ablated[torch.arange(PERTURBATION_BATCH_SIZE), torch.arange(PERTURBATION_BATCH_SIZE)] = 0

    def run() -> None:
        with torch.no_grad():
            model(images)
            for _ in range(0, channels, PERTURBATION_BATCH_SIZE):
                model.fc(torch.flatten(model.avgpool(ablated), 1))

    return run


class MetricCase:
    """The metrics rows' case: ResNet-18 (random weights, eval), 8 images 224 x 224,
    softmax targets, maps from a 7 x 7 random grid upsampled (the shape of a layer4 CAM)."""

    batch = 8
    percentiles = (20, 40, 60, 80)
    steps = 20

    def __init__(self, device: torch.device) -> None:
        import torch.nn.functional as F
        import torchvision

        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        torch.manual_seed(0)
        self.model = torchvision.models.resnet18(weights=None).eval().to(device)
        generator = torch.Generator().manual_seed(8)
        self.images = torch.rand(self.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device)
        grid = torch.rand(self.batch, 1, 7, 7, generator=generator)
        self.maps = F.interpolate(grid, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")[:, 0].numpy()
        self.targets = [ClassifierOutputSoftmaxTarget(c) for c in Bench.categories(self.batch)]

    def forwards(self, images: int, chunk: int) -> Callable[[], None]:
        """``images`` image forwards under no_grad, in chunks of ``chunk`` (inputs made in advance)."""
        inputs = self.images.repeat((chunk + self.batch - 1) // self.batch, 1, 1, 1)[:chunk]

        def run() -> None:
            with torch.no_grad():
                for start in range(0, images, chunk):
                    self.model(inputs[: min(chunk, images - start)])

        return run


_METRIC_CASES: Dict[torch.device, MetricCase] = {}


def metric_case(bench: Bench) -> MetricCase:
    if bench.device not in _METRIC_CASES:
        _METRIC_CASES[bench.device] = MetricCase(bench.device)
    return _METRIC_CASES[bench.device]


def road_call(bench: Bench) -> Callable[[], None]:
    from pytorch_grad_cam.metrics import ROADCombined

    case = metric_case(bench)
    metric = ROADCombined(case.percentiles)
    return lambda: metric(case.images, case.maps, case.targets, case.model)


def road_imputations(bench: Bench) -> Callable[[], None]:
    """ROADCombined's 2 x len(percentiles) imputations of the batch alone, no forwards:
    the part of its time that is the library's own work."""
    from pytorch_grad_cam.metrics.cams import as_cam_batch
    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    case = metric_case(bench)
    imputer = NoisyLinearImputer()
    maps = as_cam_batch(case.maps, case.images)

    def run() -> None:
        for removal in (RemoveLeastRelevantFirst, RemoveMostRelevantFirst):
            for percentile in case.percentiles:
                removal(percentile, imputer).perturb_batch(case.images, maps)

    return run


def deletion_insertion_call(bench: Bench) -> Callable[[], None]:
    from pytorch_grad_cam.metrics import DeletionMetric, InsertionMetric

    case = metric_case(bench)
    deletion, insertion = DeletionMetric(case.steps), InsertionMetric(case.steps)

    def run() -> None:
        deletion(case.images, case.maps, case.targets, case.model)
        insertion(case.images, case.maps, case.targets, case.model)

    return run


def metric_tables() -> List[Table]:
    batch, percentiles, steps = MetricCase.batch, MetricCase.percentiles, MetricCase.steps
    road_images = batch * len(percentiles) * 2
    curve_images = batch * steps * 2
    return [
        Table(
            f"metrics: ROADCombined, percentiles {list(percentiles)}, ResNet-18, {batch} images",
            "road-floor:8",
            f"the {road_images} image forwards alone ({2 * len(percentiles)} batches of {batch}), no_grad",
            [
                Row("road-floor:8", f"floor: {road_images} image forwards (reference)",
                    lambda b: metric_case(b).forwards(road_images, batch)),
                Row("road:8", "ROADCombined (imputation + forwards)", road_call),
                Row("road-impute:8", f"ROAD's {2 * len(percentiles)} imputations alone (no forwards)",
                    road_imputations),
            ],
        ),
        Table(
            f"metrics: Deletion + Insertion, {steps} steps each, ResNet-18, {batch} images",
            "curves-floor:8",
            f"the {batch} x {steps} x 2 = {curve_images} image forwards alone, batch_size 64, no_grad",
            [
                Row("curves-floor:8", f"floor: {curve_images} image forwards (reference)",
                    lambda b: metric_case(b).forwards(curve_images, 64)),
                Row("curves:8", "DeletionMetric + InsertionMetric", deletion_insertion_call),
            ],
        ),
    ]


@dataclass
class Row:
    key: str  # identifies the case, also in the memory subprocess
    label: str
    make: Callable[[Bench], Callable[[], None]]
    timed: bool = True


@dataclass
class Table:
    title: str
    reference: str  # key of the row the ratios are taken against
    reference_text: str
    rows: List[Row]


def tables(batches: Sequence[int], scorecam_channels: int, metrics: bool = False) -> List[Table]:
    result = metric_tables() if metrics else []
    for batch in batches:
        rows = [
            Row(f"bare:{batch}", "bare forward+backward (reference)", lambda b, n=batch: bare_forward_backward(b, n)),
            Row(
                f"floor:{batch}",
                "floor: graph from layer4[-1], backward to it",
                lambda b, n=batch: forward_to_layer_floor(b, n, "layer4.2"),
            ),
            Row(f"forward:{batch}", "floor: forward only, no_grad", lambda b, n=batch: forward_only(b, n)),
        ]
        rows += [
            Row(f"{m}:{batch}", f"{METHODS[m].__name__} layer4[-1]", lambda b, m=m, n=batch: cam_call(b, m, n))
            for m in GRADIENT_METHODS + ["eigencam"]
        ]
        result.append(
            Table(
                f"Gradient methods, batch {batch}",
                f"bare:{batch}",
                "bare forward+backward: model(x), the chosen logit of each image summed, "
                ".backward() through the whole network (parameter gradients included)",
                rows,
            )
        )
    result.append(
        Table(
            "AblationCAM, one image, layer4[-1] (2048 channels, batch_size 32)",
            "gradcam:1",
            "GradCAM on the same image",
            [
                Row("gradcam:1", "GradCAM layer4[-1] (reference)", lambda b: cam_call(b, "gradcam", 1)),
                Row("ablationcam:1", "AblationCAM layer4[-1]", lambda b: cam_call(b, "ablationcam", 1)),
                Row("ablation-floor:1", "floor: forward + 2048 tail passes", ablation_floor),
            ],
        )
    )
    k = scorecam_channels
    result.append(
        Table(
            f"ScoreCAM, one image, layer4[-1] limited to its first K = {k} channels, batch_size 32",
            f"scorecam-floor:{k}",
            f"the {k} forward passes of masked inputs at batch_size 32, nothing else",
            [
                Row(f"scorecam-floor:{k}", f"floor: {k} masked forwards (reference)", lambda b: scorecam_floor(b, k)),
                Row(
                    f"scorecam:{k}",
                    f"ScoreCAM, K = {k}",
                    lambda b: cam_call(b, "scorecam", 1, reshape_transform=first_channels(k)),
                ),
                Row(
                    f"forward:{PERTURBATION_BATCH_SIZE}",
                    f"one forward at batch {PERTURBATION_BATCH_SIZE}, no_grad (memory reference)",
                    lambda b: forward_only(b, PERTURBATION_BATCH_SIZE),
                    timed=False,
                ),
            ],
        )
    )
    for batch in batches:
        result.append(
            Table(
                f"eigen_smooth on layer1[-1] (56 x 56 x 256), batch {batch}",
                f"gradcam-l1:{batch}",
                "the plain GradCAM call on layer1[-1]",
                [
                    Row(
                        f"gradcam-l1:{batch}",
                        "GradCAM layer1[-1] (reference)",
                        lambda b, n=batch: cam_call(b, "gradcam", n, "layer1.2"),
                    ),
                    Row(
                        f"gradcam-l1-eigen:{batch}",
                        "GradCAM layer1[-1], eigen_smooth",
                        lambda b, n=batch: cam_call(b, "gradcam", n, "layer1.2", eigen_smooth=True),
                    ),
                ],
            )
        )
    result.append(
        Table(
            "aug_smooth (6 augmented copies), one image",
            "gradcam:1",
            "the plain GradCAM call on layer4[-1]",
            [
                Row("gradcam:1", "GradCAM layer4[-1] (reference)", lambda b: cam_call(b, "gradcam", 1)),
                Row(
                    "gradcam-aug:1",
                    "GradCAM layer4[-1], aug_smooth",
                    lambda b: cam_call(b, "gradcam", 1, aug_smooth=True),
                ),
                Row(
                    "floor:6",
                    "floor: graph from layer4[-1], backward to it, 6 images",
                    lambda b: forward_to_layer_floor(b, 6, "layer4.2"),
                ),
            ],
        )
    )
    return result


#: The issue's targets: (kind, row key, reference key, largest ratio, description);
#: {m}, {b} and {k} stand for the method, the batch and ScoreCAM's K.
TARGETS = [
    ("gradient", "{m}:8", "bare:8", 1.10, "{name} <= 1.10x bare forward+backward (batch 8)"),
    ("ablation", "ablationcam:1", "gradcam:1", 3.0, "AblationCAM <= 3x GradCAM (one image)"),
    ("scorecam", "scorecam:{k}", "scorecam-floor:{k}", 1.05, "ScoreCAM <= 1.05x its own K forwards"),
    ("eigen", "gradcam-l1-eigen:{b}", "gradcam-l1:{b}", 1.25, "eigen_smooth on layer1[-1] adds <= 25% (batch {b})"),
    ("aug", "gradcam-aug:1", "gradcam:1", 5.0, "aug_smooth <= 5x the plain call"),
    ("metric", "curves:8", "curves-floor:8", 1.2, "Deletion + Insertion <= 1.2x their forwards alone"),
]
#: The other library's ROADCombined on this case (2 CPU threads), and our target: 5x faster.
ROAD_REFERENCE_SECONDS = 13.7
ROAD_TARGET_SPEEDUP = 5.0


# =========================================================================== timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_table(
    bench: Bench, table: Table, repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> Dict[str, dict]:
    """Times (s) of each timed row over ``repeats`` round-robin rounds, and the ratios
    to the reference row of the same round."""
    rows = [row for row in table.rows if row.timed]
    calls = {row.key: row.make(bench) for row in rows}
    for call in calls.values():
        for _ in range(warmup):
            call()
    synchronize(bench.device)
    times: Dict[str, List[float]] = {row.key: [] for row in rows}
    for round_index in range(repeats):
        shift = round_index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            synchronize(bench.device)
            start = clock()
            calls[row.key]()
            synchronize(bench.device)
            times[row.key].append(clock() - start)
    reference = times[table.reference]
    return {
        key: {
            "seconds": statistics.median(values),
            "ratio": statistics.median(v / r for v, r in zip(values, reference)),
            "all": values,
        }
        for key, values in times.items()
    }


# =========================================================================== memory
def _resident_kib(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def cpu_memory_supported() -> bool:
    return platform.system() == "Linux" and os.access("/proc/self/clear_refs", os.W_OK)


def measure_row_memory(bench: Bench, row: Row) -> float:
    """MB added at the peak of one call of ``row`` (see the module docstring)."""
    call = row.make(bench)
    if bench.device.type == "cuda":
        synchronize(bench.device)
        before = torch.cuda.memory_allocated(bench.device)
        torch.cuda.reset_peak_memory_stats(bench.device)
        call()
        synchronize(bench.device)
        return (torch.cuda.max_memory_allocated(bench.device) - before) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident size
    before = _resident_kib("VmRSS")
    call()
    return (_resident_kib("VmHWM") - before) / 1024


def memory_in_subprocess(row_key: str, args: argparse.Namespace) -> Optional[float]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-row",
        row_key,
        "--device",
        args.device,
        "--scorecam-channels",
        str(args.scorecam_channels),
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        print(f"  (memory of {row_key} failed: {done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def find_row(key: str, scorecam_channels: int) -> Row:
    for table in tables([1, 8], scorecam_channels, metrics=True):
        for row in table.rows:
            if row.key == key:
                return row
    raise KeyError(key)


# =========================================================================== report
def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, load average {load}; torch {torch.__version__}"
    )


def print_table(
    table: Table,
    timings: Dict[str, dict],
    memory: Dict[str, Optional[float]],
) -> None:
    """The table as Markdown: ms per image, ratio to the reference row, peak MB."""
    width = max(len(row.label) for row in table.rows)
    print(f"\n### {table.title}")
    print(f"ratio: median over rounds of (row time / {table.reference_text})\n")
    print(f"| {'row':<{width}} | ms/image |  ratio | peak MB |")
    print(f"|{'-' * (width + 2)}|---------:|-------:|--------:|")
    for row in table.rows:
        timing = timings.get(row.key)
        per_image = f"{1000 * timing['seconds'] / batch_of(row.key):8.1f}" if timing else f"{'-':>8}"
        ratio = f"{timing['ratio']:5.2f}x" if timing else f"{'-':>6}"
        peak = memory.get(row.key)
        peak_text = f"{peak:7.0f}" if peak is not None else f"{'n/a':>7}"
        print(f"| {row.label:<{width}} | {per_image} | {ratio} | {peak_text} |")


def batch_of(key: str) -> int:
    """Images per call of a row: its batch, 6 for aug_smooth's floor, 1 for K-copy rows."""
    kind, _, value = key.partition(":")
    if kind in ("scorecam", "scorecam-floor", "ablation-floor", "ablationcam"):
        return 1
    if kind == "forward" and value == str(PERTURBATION_BATCH_SIZE):
        return PERTURBATION_BATCH_SIZE
    return int(value)


def check_targets(
    ratios: Dict[Tuple[str, str], float],
    memory: Dict[str, Optional[float]],
    batches: Sequence[int],
    scorecam_channels: int,
    seconds: Optional[Dict[str, float]] = None,
) -> List[str]:
    """One line per target of the issue that this run measured: the ratio and met/MISSED."""
    lines = []
    road = (seconds or {}).get("road:8")
    if road is not None:
        speedup = ROAD_REFERENCE_SECONDS / road
        verdict = "met" if speedup >= ROAD_TARGET_SPEEDUP else "MISSED"
        lines.append(
            f"ROADCombined >= {ROAD_TARGET_SPEEDUP:.0f}x faster than the other library's {ROAD_REFERENCE_SECONDS} s "
            f"(2 threads): {road:.2f} s = {speedup:.1f}x  {verdict}"
        )
    for kind, key, reference, limit, text in TARGETS:
        if kind == "gradient":
            cases = [(key.format(m=m), reference, text.format(name=METHODS[m].__name__)) for m in GRADIENT_METHODS]
        elif kind == "metric":
            cases = [(key, reference, text)]
        elif kind == "eigen":
            cases = [(key.format(b=b), reference.format(b=b), text.format(b=b)) for b in batches]
        else:
            k = scorecam_channels
            cases = [(key.format(k=k), reference.format(k=k), text)]
        for row_key, reference_key, description in cases:
            value = ratios.get((row_key, reference_key))
            if value is None:
                continue
            verdict = "met" if value <= limit else "MISSED"
            lines.append(f"{description}: {value:.2f}x  {verdict}")
    scorecam_peak = memory.get(f"scorecam:{scorecam_channels}")
    forward_peak = memory.get(f"forward:{PERTURBATION_BATCH_SIZE}")
    if scorecam_peak is not None and forward_peak:
        value = scorecam_peak / forward_peak
        verdict = "met" if value <= 1.5 else "MISSED"
        lines.append(
            f"ScoreCAM peak memory <= 1.5x one forward at batch_size: {scorecam_peak:.0f} / "
            f"{forward_peak:.0f} MB = {value:.2f}x  {verdict}"
        )
    return lines


# =========================================================================== main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3 rounds, ScoreCAM with K = 32")
    parser.add_argument("--repeats", type=int, help="timed rounds per table (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each row first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time (default); cpu: this process's CPU time, which other "
        "programs on a shared machine barely disturb (use with --threads 1, CPU only)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--scorecam-channels", type=int, help="ScoreCAM's K (default 64, quick 32)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--metrics", action="store_true", help="also the metrics tables (ROAD, Deletion/Insertion)")
    parser.add_argument("--only", nargs="+", help="only tables whose title contains one of these words")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--memory-row", help=argparse.SUPPRESS)  # internal: one row's memory
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.scorecam_channels = args.scorecam_channels or (32 if args.quick else 64)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    warnings.filterwarnings("ignore", message="the model is in training mode")
    bench = Bench(device, args.scorecam_channels)

    if args.memory_row:
        peak = measure_row_memory(bench, find_row(args.memory_row, args.scorecam_channels))
        print(json.dumps({"peak_mb": peak}))
        return 0

    selected = [
        table
        for table in tables(args.batches, args.scorecam_channels, args.metrics)
        if not args.only or any(word.lower() in table.title.lower() for word in args.only)
    ]
    measure_memory = not args.no_memory and (device.type == "cuda" or cpu_memory_supported())
    print("# pytorch_grad_cam benchmark: ResNet-50 (random weights), 224 x 224")
    print(f"machine: {describe_machine(device)}")
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    clock_text = "process CPU time" if clock is time.process_time else "wall-clock time"
    print(
        f"timing: {clock_text}; {args.warmup} warm-up call(s) per row, then {args.repeats} "
        "round-robin rounds; median"
    )
    if measure_memory:
        how = (
            "torch.cuda.max_memory_allocated() during one call, minus what was allocated before"
            if device.type == "cuda"
            else "peak resident memory (VmHWM) added by one call, in a fresh subprocess per row, "
            "glibc mmap threshold 64 KiB"
        )
        print(f"peak MB: {how}")
    ratios: Dict[Tuple[str, str], float] = {}  # (row, reference) -> ratio
    seconds: Dict[str, float] = {}  # row -> median seconds
    memory: Dict[str, Optional[float]] = {}  # row -> peak MB, measured once per row
    report = []
    started = time.perf_counter()
    for table in selected:
        timings = time_table(bench, table, args.repeats, args.warmup, clock)
        ratios.update({(key, table.reference): value["ratio"] for key, value in timings.items()})
        seconds.update({key: value["seconds"] for key, value in timings.items() if "seconds" in value})
        if measure_memory:
            for row in table.rows:
                if row.key not in memory:
                    in_process = device.type == "cuda"
                    memory[row.key] = (
                        measure_row_memory(bench, row) if in_process else memory_in_subprocess(row.key, args)
                    )
        print_table(table, timings, memory)
        report.append({"title": table.title, "reference": table.reference, "timings": timings})
        sys.stdout.flush()
    targets = check_targets(ratios, memory, args.batches, args.scorecam_channels, seconds)
    print("\n### Targets")
    for line in targets:
        print(f"- {line}")
    print(f"\n(total {time.perf_counter() - started:.0f} s; {describe_machine(device)})")
    if args.json:
        summary = {"tables": report, "memory_mb": memory, "targets": targets, "machine": describe_machine(device)}
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
