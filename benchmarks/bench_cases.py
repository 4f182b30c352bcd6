"""The benchmark's cases: the model and inputs every row is built from (:class:`Bench`),
the floor rows (the least work a method could do, without the library), one call of a
CAM method (:func:`cam_call`), and the metrics rows' case. Each function returns the
call that a row times; bench_tables.py puts them into tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from pytorch_grad_cam.registry import METHODS
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

IMAGE_SIZE = 224
GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "eigengradcam"]
PERTURBATION_BATCH_SIZE = 32  # the default batch_size of ScoreCAM and AblationCAM


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
        """``batch`` standard-normal images (seeded by ``batch``) on the device."""
        generator = torch.Generator().manual_seed(batch)
        return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(self.device)

    @staticmethod
    def categories(batch: int) -> List[int]:
        """The class explained for each of ``batch`` images: (7 i + 3) mod 1000."""
        return [(7 * index + 3) % 1000 for index in range(batch)]

    def targets(self, batch: int) -> List[ClassifierOutputTarget]:
        """One ClassifierOutputTarget per image, for :meth:`categories`."""
        return [ClassifierOutputTarget(c) for c in self.categories(batch)]

    def chosen(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns) on the device: indexing a (batch, 1000) output with them picks
        each image's logit of :meth:`categories` (the floors' scores)."""
        return (torch.arange(batch, device=self.device), torch.tensor(self.categories(batch), device=self.device))


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
    model: torch.nn.Module,
    images: torch.Tensor,
    rows: torch.Tensor,
    columns: torch.Tensor,
    handles: List[object],
) -> torch.Tensor:
    """The sum of the chosen logits from one forward pass under no_grad, with the hooks in
    ``handles`` (a graph only from the layers :func:`_leaf_at` hooks); the hooks are removed
    afterwards, also on an error."""
    return hooked_call(lambda: model(images)[rows, columns].sum(), handles)


def hooked_call(score: Callable[[], torch.Tensor], handles: List[object]) -> torch.Tensor:
    """``score()`` (a forward pass and the score taken from its output) under no_grad, with
    the hooks in ``handles``, so that only the layers :func:`_leaf_at` hooks start a graph;
    the hooks are removed afterwards, also on an error."""
    try:
        with torch.no_grad():
            return score()
    finally:
        for handle in handles:
            handle.remove()


def graph_from_first(modules: Sequence[torch.nn.Module], recorded: List[torch.Tensor]) -> List[object]:
    """Hooks that record the outputs of ``modules`` (in forward order) in ``recorded``: the
    first one's output made a leaf (the graph starts there), the others' as they are."""
    return _leaf_at(modules[:1], recorded) + [
        module.register_forward_hook(lambda m, i, output: recorded.append(output)) for module in modules[1:]
    ]


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
        handles = graph_from_first(modules, recorded)
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
    """One DeepFeatureFactorization call on layer4, concepts scored by the fc head."""
    from pytorch_grad_cam import DeepFeatureFactorization

    model = bench.model
    explainer = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
    images = bench.images(batch)
    return lambda: explainer(images, n_components=DFF_COMPONENTS)


# ----------------------------------------------------------------- the perturbation methods' floors
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


# ----------------------------------------------------------------- the metrics rows
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
    """The metrics rows' case on the bench's device, built once per device."""
    if bench.device not in _METRIC_CASES:
        _METRIC_CASES[bench.device] = MetricCase(bench.device)
    return _METRIC_CASES[bench.device]


def road_call(bench: Bench) -> Callable[[], None]:
    """One ROADCombined call (imputations and forwards) on the metrics case."""
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
    """One DeletionMetric and one InsertionMetric call on the metrics case."""
    from pytorch_grad_cam.metrics import DeletionMetric, InsertionMetric

    case = metric_case(bench)
    deletion, insertion = DeletionMetric(case.steps), InsertionMetric(case.steps)

    def run() -> None:
        deletion(case.images, case.maps, case.targets, case.model)
        insertion(case.images, case.maps, case.targets, case.model)

    return run
