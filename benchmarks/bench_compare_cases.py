"""The side-by-side tables' rows: the CAM calls both libraries can make, and the other
libraries (grad-cam 1.5.7, torchcam 0.5.0), each in an interpreter of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from bench_cases import DFF_COMPONENTS, NEW_METHOD_BATCH, REFINE_LAYERS, SHAPLEY_LAYER


@dataclass
class CompareCase:
    """One row of a side-by-side table: a CAM call that both libraries can make."""

    key: str
    label: str
    model: str  # resnet50 (the bench model), resnet18 (random weights), efficientnet (pretrained, cat)
    batch: int
    method: str  # this library's class name (grad-cam's too; compare_runner maps torchcam's)
    layers: Tuple[str, ...]
    batch_size: Optional[int] = None
    options: Dict[str, object] = field(default_factory=dict)
    no_targets: bool = False
    head: Optional[str] = None  # DFF's computation_on_concepts
    theirs_layers: Optional[Tuple[str, ...]] = None  # grad-cam's layers, where they must differ
    init: Dict[str, object] = field(default_factory=dict)  # constructor options, the same in both libraries
    noise_seed: Optional[int] = None  # torch.manual_seed before each call: both libraries draw the same noise
    calls: int = 2  # timed calls per process
    warmup: int = 1
    time_target: Optional[float] = None  # ours / theirs at most
    memory_target: Optional[float] = None


@dataclass
class OtherLibrary:
    """The library a side-by-side table compares with, and where it is installed."""

    name: str  # as printed, with its version
    short: str  # column headers
    distribution: str  # the pip name, looked up in ``python``
    runner_library: str  # compare_runner's --library
    option: str  # bench.py's option naming the interpreter
    python: Optional[str]
    correlate: bool = False  # also the correlation of the two libraries' maps


def gradcam_library(python: Optional[str]) -> OtherLibrary:
    """grad-cam 1.5.7 in ``python`` (``--compare-with``)."""
    return OtherLibrary("grad-cam 1.5.7", "grad-cam", "grad-cam", "theirs", "--compare-with", python)


def torchcam_library(python: Optional[str]) -> OtherLibrary:
    """torchcam 0.5.0 in ``python`` (``--torchcam-with``); its rows add the maps' correlation."""
    return OtherLibrary("torchcam 0.5.0", "torchcam", "torchcam", "torchcam", "--torchcam-with", python, correlate=True)


def comparison_cases() -> List[CompareCase]:
    """The rows of the table with grad-cam 1.5.7, with the issue's targets where it set some."""
    n = NEW_METHOD_BATCH
    heavy = dict(calls=1, warmup=0)
    cases = [
        CompareCase(
            "scorecam-r18",
            "ScoreCAM, ResNet-18 layer4, 1 image, batch_size 64",
            "resnet18",
            1,
            "ScoreCAM",
            ("layer4",),
            batch_size=64,
            time_target=0.9,
            memory_target=0.5,
            **heavy,
        ),
        # `_swish` is called twice (stem, then head): this library explains its last call
        # (1280 channels), grad-cam 1.5.7 its first (the stem's 32 channels), so the
        # second row gives grad-cam the head's 1280 channels through `_bn1`, called once.
        CompareCase(
            "scorecam-effnet",
            "ScoreCAM, EfficientNet-Lite0 _swish, cat.jpg, batch_size 64",
            "efficientnet",
            1,
            "ScoreCAM",
            ("_swish",),
            batch_size=64,
            time_target=0.65,
            **heavy,
        ),
        CompareCase(
            "scorecam-effnet-head",
            "ScoreCAM, EfficientNet-Lite0 head (1280 channels), cat.jpg: ours at _swish, grad-cam at _bn1",
            "efficientnet",
            1,
            "ScoreCAM",
            ("_swish",),
            batch_size=64,
            theirs_layers=("_bn1",),
            time_target=0.65,
            **heavy,
        ),
    ]
    return _drop_in_cases_second_half(n, heavy, cases)


def _drop_in_cases_second_half(n: int, heavy: Dict[str, int], cases: List[CompareCase]) -> List[CompareCase]:
    """The drop-in methods' rows, continued: FullGrad, ShapleyCAM, KPCA-CAM, FEM, DFF, FinerCAM, RefineCAM."""
    cases = cases + [
        CompareCase(
            f"fullgrad:{n}", f"FullGrad, batch {n}", "resnet50", n, "FullGrad", (), time_target=1.0, **heavy
        ),  # grad-cam's FullGrad takes minutes per call on a CPU
        CompareCase(
            f"shapleycam:{n}",
            f"ShapleyCAM {SHAPLEY_LAYER}, batch {n}",
            "resnet50",
            n,
            "ShapleyCAM",
            (SHAPLEY_LAYER,),
            time_target=1.0,
        ),
        CompareCase(
            f"kpcacam:{n}", f"KPCA_CAM layer4[-1], batch {n}", "resnet50", n, "KPCA_CAM", ("layer4.2",), time_target=1.0
        ),
        CompareCase(f"fem:{n}", f"FEM layer4[-1], batch {n}", "resnet50", n, "FEM", ("layer4.2",), time_target=1.0),
        CompareCase(
            f"dff:{n}",
            f"DeepFeatureFactorization layer4, {DFF_COMPONENTS} components, batch {n}",
            "resnet50",
            n,
            "DeepFeatureFactorization",
            ("layer4",),
            head="fc",
            time_target=1.0,
        ),
        CompareCase(
            f"finercam:{n}",
            f"FinerCAM layer4[-1], targets=None, batch {n}",
            "resnet50",
            n,
            "FinerCAM",
            ("layer4.2",),
            no_targets=True,
            time_target=1.0,
        ),
        CompareCase(
            f"refinecam:{n}",
            f"RefineCAM layer3[-1] x layer4[-1], batch {n}",
            "resnet50",
            n,
            "RefineCAM",
            REFINE_LAYERS,
            time_target=1.0,
        ),
    ]
    return _drop_in_cases_rest(n, heavy, cases)


def _drop_in_cases_rest(n: int, heavy: Dict[str, int], cases: List[CompareCase]) -> List[CompareCase]:
    """The rows of the methods grad-cam and this library both had from the start."""
    existing = [
        ("gradcam", "GradCAM"),
        ("gradcam++", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("layercam", "LayerCAM"),
        ("eigengradcam", "EigenGradCAM"),
        ("eigencam", "EigenCAM"),
    ]
    cases += [
        CompareCase(f"{key}:{n}", f"{name} layer4[-1], batch {n}", "resnet50", n, name, ("layer4.2",))
        for key, name in existing
    ]
    return cases + _existing_method_cases(n, heavy)


def _existing_method_cases(n: int, heavy: Dict[str, int]) -> List[CompareCase]:
    """The rows of the methods both libraries had before the drop-in additions."""
    return [
        CompareCase(
            "ablationcam:1",
            "AblationCAM layer4[-1], 1 image, batch_size 32",
            "resnet50",
            1,
            "AblationCAM",
            ("layer4.2",),
            batch_size=32,
            **heavy,
        ),
        CompareCase(
            f"gradcam-l1-eigen:{n}",
            f"GradCAM layer1[-1], eigen_smooth, batch {n}",
            "resnet50",
            n,
            "GradCAM",
            ("layer1.2",),
            options={"eigen_smooth": True},
        ),
        CompareCase(
            "gradcam-aug:1",
            "GradCAM layer4[-1], aug_smooth, 1 image",
            "resnet50",
            1,
            "GradCAM",
            ("layer4.2",),
            options={"aug_smooth": True},
        ),
    ]


def torchcam_cases() -> List[CompareCase]:
    """The rows of the table with torchcam 0.5.0: the four gradient methods it shares with
    this library on ResNet-50 layer4[-1] at batch 1 and 8, and ScoreCAM on ResNet-18
    layer4 (the same keys, models and inputs as the grad-cam table's rows)."""
    methods = [
        ("gradcam", "GradCAM"),
        ("gradcam++", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("layercam", "LayerCAM"),
    ]
    cases = [
        CompareCase(f"{key}:{n}", f"{name} layer4[-1], batch {n}", "resnet50", n, name, ("layer4.2",))
        for key, name in methods
        for n in (1, NEW_METHOD_BATCH)
    ]
    cases.append(
        CompareCase(
            "scorecam-r18",
            "ScoreCAM, ResNet-18 layer4, 1 image, batch_size 64",
            "resnet18",
            1,
            "ScoreCAM",
            ("layer4",),
            batch_size=64,
            calls=1,
            warmup=0,
        )
    )
    return cases + torchcam_extra_cases()


def torchcam_extra_cases() -> List[CompareCase]:
    """torchcam's extra methods: CAM (batch 8: the random network's batch-1 map is all
    negative, zero after the ReLU) and SmoothGradCAM++ on ResNet-50 layer4[-1], SS-CAM and
    IS-CAM on ScoreCAM's case with 2 samples per channel (1024 forwards, not 17920 and
    5120 with their defaults); the noisy ones draw from torch's global generator seeded 0
    in both libraries (ours with ``seed=None``)."""
    heavy = dict(calls=1, warmup=0, time_target=0.8)
    return [
        CompareCase(
            f"cam:{NEW_METHOD_BATCH}",
            f"CAM layer4[-1] (fc), batch {NEW_METHOD_BATCH}",
            "resnet50",
            NEW_METHOD_BATCH,
            "CAM",
            ("layer4.2",),
            init={"fc_layer": "fc"},
        ),
        CompareCase(
            "smoothgradcam++:1",
            "SmoothGradCAM++ layer4[-1], 4 samples, std 0.3, batch 1",
            "resnet50",
            1,
            "SmoothGradCAMPlusPlus",
            ("layer4.2",),
            init={"num_samples": 4, "std": 0.3},
            noise_seed=0,
        ),
        CompareCase(
            "sscam-r18",
            "SS-CAM, ResNet-18 layer4, 1 image, batch_size 64, 2 samples, std 2",
            "resnet18",
            1,
            "SSCAM",
            ("layer4",),
            batch_size=64,
            init={"num_samples": 2, "std": 2.0},
            noise_seed=0,
            **heavy,
        ),
        CompareCase(
            "iscam-r18",
            "IS-CAM, ResNet-18 layer4, 1 image, batch_size 64, 2 steps",
            "resnet18",
            1,
            "ISCAM",
            ("layer4",),
            batch_size=64,
            init={"num_samples": 2},
            **heavy,
        ),
    ]
