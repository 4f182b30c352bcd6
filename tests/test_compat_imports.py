"""Every public name that code written for grad-cam 1.5.x imports, from the path that
code uses, and what it should be there.

For each name (one table, below):
- it imports from its grad-cam path, and where grad-cam also exports it from the package
  top level it is the very same object there (one class, not a copy);
- it takes grad-cam 1.5.7's arguments: the same parameter names in the same order, with
  the same defaults, so calls written by position or by keyword bind the same way. Our
  additions come after them, with a default or keyword-only. Where a default differs on
  purpose the table of deviations says what ours means and why;
- it does what grad-cam documents on a known input: a method class is a BaseCAM subclass
  that runs on a tiny convolutional model, a target returns the documented number on a
  known tensor, a utility the documented value.
The reference facts (parameter lists, numbers) are written here as data.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import pytorch_grad_cam

ADDED_BY_ENGINE = pytest.mark.xfail(strict=False, reason="added by the engine change")

# =========================================================================== the table
CAM = "model, target_layers, reshape_transform=None"
TOP, SUB = True, False  # the same object as pytorch_grad_cam.<name>, or only at its path

#: (import path, name, grad-cam's parameters (None: not checked), the top-level object?)
NAMES: List[Tuple[str, str, Optional[str], bool]] = [
    # ---------------------------------------------------------------- CAM methods
    *[
        ("pytorch_grad_cam", name, CAM, TOP)
        for name in (
            "GradCAM",
            "ScoreCAM",
            "GradCAMPlusPlus",
            "XGradCAM",
            "EigenCAM",
            "EigenGradCAM",
            "LayerCAM",
            "FullGrad",
            "ShapleyCAM",
            "HiResCAM",
            "GradCAMElementWise",
            "RandomCAM",
            "SegEigenCAM",
        )
    ],
    (
        "pytorch_grad_cam",
        "AblationCAM",
        CAM + ", ablation_layer=AblationLayer(), batch_size=32, ratio_channels_to_ablate=1.0",
        TOP,
    ),
    ("pytorch_grad_cam", "FEM", CAM + ", k=2", TOP),
    ("pytorch_grad_cam", "KPCA_CAM", CAM + ", kernel='sigmoid', gamma=None", TOP),
    ("pytorch_grad_cam", "FinerCAM", CAM + ", base_method=GradCAM", TOP),
    ("pytorch_grad_cam", "RefineCAM", CAM + ", base_method=GradCAMPlusPlus", TOP),
    ("pytorch_grad_cam.fullgrad_cam", "FullGrad", CAM, TOP),
    (
        "pytorch_grad_cam.base_cam",
        "BaseCAM",
        CAM + ", compute_input_gradient=False, uses_gradients=True, tta_transforms=None, detach=True",
        TOP,
    ),
    # ---------------------------------------------------------------- DFF
    (
        "pytorch_grad_cam",
        "DeepFeatureFactorization",
        "model, target_layer, reshape_transform=None, computation_on_concepts=None",
        TOP,
    ),
    (
        "pytorch_grad_cam.feature_factorization.deep_feature_factorization",
        "DeepFeatureFactorization",
        "model, target_layer, reshape_transform=None, computation_on_concepts=None",
        TOP,
    ),
    ("pytorch_grad_cam.feature_factorization.deep_feature_factorization", "dff", "activations, n_components=5", SUB),
    (
        "pytorch_grad_cam",
        "run_dff_on_image",
        "model, target_layer, classifier, img_pil, img_tensor, reshape_transform=Optional[Callable], "
        "n_components=5, top_k=2",
        TOP,
    ),
    # ---------------------------------------------------------------- hooks, guided backprop
    ("pytorch_grad_cam", "ActivationsAndGradients", "model, target_layers, reshape_transform, detach=True", TOP),
    (
        "pytorch_grad_cam.activations_and_gradients",
        "ActivationsAndGradients",
        "model, target_layers, reshape_transform, detach=True",
        TOP,
    ),
    ("pytorch_grad_cam", "GuidedBackpropReLUModel", "model, device=None", TOP),
    ("pytorch_grad_cam.guided_backprop", "GuidedBackpropReLUModel", "model, device=None", TOP),
    ("pytorch_grad_cam.guided_backprop", "GuidedBackpropReLU", None, SUB),
    ("pytorch_grad_cam.guided_backprop", "GuidedBackpropReLUasModule", "", SUB),
    # ---------------------------------------------------------------- ablation layers
    *[
        (path, name, "", TOP)
        for path in ("pytorch_grad_cam", "pytorch_grad_cam.ablation_layer")
        for name in ("AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN")
    ],
    # ---------------------------------------------------------------- targets
    *[
        ("pytorch_grad_cam.utils.model_targets", name, "category", SUB)
        for name in (
            "ClassifierOutputTarget",
            "ClassifierOutputSoftmaxTarget",
            "ClassifierOutputReST",
            "BinaryClassifierOutputTarget",
        )
    ],
    ("pytorch_grad_cam.utils.model_targets", "SoftmaxOutputTarget", "", SUB),
    ("pytorch_grad_cam.utils.model_targets", "RawScoresOutputTarget", "", SUB),
    ("pytorch_grad_cam.utils.model_targets", "SemanticSegmentationTarget", "category, mask", SUB),
    (
        "pytorch_grad_cam.utils.model_targets",
        "FasterRCNNBoxScoreTarget",
        "labels, bounding_boxes, iou_threshold=0.5",
        SUB,
    ),
    ("pytorch_grad_cam.utils.model_targets", "FinerWeightedTarget", "main_category, comparison_categories, alpha", SUB),
    # ---------------------------------------------------------------- reshape transforms
    ("pytorch_grad_cam.utils.reshape_transforms", "vit_reshape_transform", "tensor, height=14, width=14", SUB),
    ("pytorch_grad_cam.utils.reshape_transforms", "swinT_reshape_transform", "tensor, height=7, width=7", SUB),
    ("pytorch_grad_cam.utils.reshape_transforms", "fasterrcnn_reshape_transform", "x", SUB),
    # ---------------------------------------------------------------- images
    (
        "pytorch_grad_cam.utils.image",
        "show_cam_on_image",
        "img, mask, use_rgb=False, colormap=cv2.COLORMAP_JET, image_weight=0.5",
        SUB,
    ),
    ("pytorch_grad_cam.utils.image", "preprocess_image", "img, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]", SUB),
    ("pytorch_grad_cam.utils.image", "deprocess_image", "img", SUB),
    ("pytorch_grad_cam.utils.image", "scale_cam_image", "cam, target_size=None", SUB),
    ("pytorch_grad_cam.utils.image", "scale_accross_batch_and_channels", "tensor, target_size", SUB),
    ("pytorch_grad_cam.utils.image", "create_labels_legend", "concept_scores, labels, top_k=2", SUB),
    (
        "pytorch_grad_cam.utils.image",
        "show_factorization_on_image",
        "img, explanations, colors=None, image_weight=0.5, concept_labels=None",
        SUB,
    ),
    ("pytorch_grad_cam.sobel_cam", "sobel_cam", "img", SUB),
    # ---------------------------------------------------------------- projections, layers
    ("pytorch_grad_cam.utils.svd_on_activations", "get_2d_projection", "activation_batch", SUB),
    ("pytorch_grad_cam.utils.svd_on_activations", "get_2d_projection_with_sign_correction", "activation_batch", SUB),
    (
        "pytorch_grad_cam.utils.svd_on_activations",
        "get_2d_projection_kernel",
        "activation_batch, kernel='sigmoid', gamma=None",
        SUB,
    ),
    ("pytorch_grad_cam.utils.find_layers", "replace_layer_recursive", "model, old_layer, new_layer", SUB),
    ("pytorch_grad_cam.utils.find_layers", "replace_all_layer_type_recursive", "model, old_layer_type, new_layer", SUB),
    ("pytorch_grad_cam.utils.find_layers", "find_layer_types_recursive", "model, layer_types", SUB),
    ("pytorch_grad_cam.utils.find_layers", "find_layer_predicate_recursive", "model, predicate", SUB),
    # ---------------------------------------------------------------- metrics
    ("pytorch_grad_cam.metrics.cam_mult_image", "multiply_tensor_with_cam", "input_tensor, cam", SUB),
    *[
        ("pytorch_grad_cam.metrics.cam_mult_image", name, "", SUB)
        for name in ("CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence")
    ],
    ("pytorch_grad_cam.metrics.perturbation_confidence", "PerturbationConfidenceMetric", "perturbation", SUB),
    ("pytorch_grad_cam.metrics.perturbation_confidence", "RemoveMostRelevantFirst", "percentile, imputer", SUB),
    ("pytorch_grad_cam.metrics.perturbation_confidence", "RemoveLeastRelevantFirst", "percentile, imputer", SUB),
    (
        "pytorch_grad_cam.metrics.perturbation_confidence",
        "AveragerAcrossThresholds",
        "imputer, percentiles=[10, 20, 30, 40, 50, 60, 70, 80, 90]",
        SUB,
    ),
    ("pytorch_grad_cam.metrics.road", "NoisyLinearImputer", "noise=0.01, weighting=neighbors_weights", SUB),
    ("pytorch_grad_cam.metrics.road", "ROADMostRelevantFirst", "percentile=80", SUB),
    ("pytorch_grad_cam.metrics.road", "ROADLeastRelevantFirst", "percentile=20", SUB),
    *[
        ("pytorch_grad_cam.metrics.road", name, "percentiles=[10, 20, 30, 40, 50, 60, 70, 80, 90]", SUB)
        for name in ("ROADMostRelevantFirstAverage", "ROADLeastRelevantFirstAverage", "ROADCombined")
    ],
    ("pytorch_grad_cam.metrics.arcc", "Complexity", "", SUB),
    ("pytorch_grad_cam.metrics.arcc", "Coherency", "", SUB),
    # grad-cam's parameter names here are not part of what its users write: two, by position.
    ("pytorch_grad_cam.metrics.arcc", "batch_pearson_coherency", "_, _", SUB),
    ("pytorch_grad_cam.metrics.arcc", "ARCC", "base_method, road_percentiles=[20, 40, 60, 80]", SUB),
]

#: Methods whose arguments grad-cam's users write too: {name: {method: parameters}}.
#: (``_`` for a parameter whose name is not part of what users write.)
MEMBERS: Dict[str, Dict[str, str]] = {
    "BaseCAM": {
        "__call__": "input_tensor, targets=None, aug_smooth=False, eigen_smooth=False",
        "forward": "input_tensor, targets=None, eigen_smooth=False",
    },
    "FinerCAM": {
        "forward": "input_tensor, targets=None, eigen_smooth=False, alpha=1, "
        "comparison_categories=[1, 2, 3], target_idx=None"
    },
    "RefineCAM": {"forward": "input_tensor, targets=None, eigen_smooth=False"},
    "DeepFeatureFactorization": {"__call__": "input_tensor, n_components=16"},
    "GuidedBackpropReLUModel": {"__call__": "input_img, target_category=None", "forward": "_"},
    "ActivationsAndGradients": {"__call__": "_", "release": ""},
    "AblationLayer": {
        "activations_to_be_ablated": "activations, ratio_channels_to_ablate=1.0",
        "set_next_batch": "input_batch_index, activations, num_channels_to_ablate",
    },
    "PerturbationConfidenceMetric": {
        "__call__": "input_tensor, cams, targets, model, return_visualization=False, return_diff=True"
    },
    "RemoveMostRelevantFirst": {"__call__": "_, _"},
    "AveragerAcrossThresholds": {"__call__": "input_tensor, cams, targets, model"},
    "NoisyLinearImputer": {"__call__": "img, mask"},
    "ROADMostRelevantFirst": {
        "__call__": "input_tensor, cams, targets, model, return_visualization=False, return_diff=True"
    },
    "ROADCombined": {"__call__": "input_tensor, cams, targets, model"},
    "Complexity": {"__call__": "grayscale_cams"},
    "Coherency": {"__call__": "input_tensor, grayscale_cams, targets, model, base_method"},
    "ARCC": {"__call__": "input_tensor, grayscale_cams, targets, model"},
}
MEMBERS["AblationLayerVit"] = MEMBERS["AblationLayerFasterRCNN"] = {
    "set_next_batch": MEMBERS["AblationLayer"]["set_next_batch"]
}

#: Defaults that differ from grad-cam's on purpose: {(name, parameter): (ours, why)}.
DEVIATIONS: Dict[Tuple[str, str], Tuple[object, str]] = {
    ("AblationCAM", "ablation_layer"): (
        None,
        "docs/decisions.md, D7: a fresh AblationLayer per object, never one instance shared by every AblationCAM",
    ),
    ("run_dff_on_image", "reshape_transform"): (
        None,
        "grad-cam's default is typing's Optional[Callable] itself, which cannot be called: None is no transform",
    ),
    ("vit_reshape_transform", "height"): (
        None,
        "None: the side of the square token grid (14 for 196 patch tokens, checked below)",
    ),
    ("vit_reshape_transform", "width"): (None, "as height"),
    ("preprocess_image", "mean"): (None, "None: 0.5 per channel (checked below)"),
    ("preprocess_image", "std"): (None, "None: 0.5 per channel (checked below)"),
    ("NoisyLinearImputer", "weighting"): (
        None,
        "grad-cam ignores the argument; None: its 1/6 axial and 1/12 diagonal neighbour weights",
    ),
}

#: Where ours does not (yet) take grad-cam's arguments: {(name, member or ""): why}.
#: Names whose signature is knowingly not grad-cam's (name, member) -> why; empty now.
KNOWN_GAPS: Dict[Tuple[str, str], str] = {}

#: Names added by the engine change (issue 17), once marked pending; none is now.
PENDING: set = set()

#: Non-literal defaults of the reference parameter lists.
DEFAULT_NAMES = {"cv2": cv2, "GradCAM": pytorch_grad_cam.GradCAM, "GradCAMPlusPlus": pytorch_grad_cam.GradCAMPlusPlus}


def names_with(marks: Callable[[str, str], list], signatures_only: bool = False) -> list:
    return [
        pytest.param(path, name, parameters, top, id=f"{path}.{name}", marks=marks(path, name))
        for path, name, parameters, top in NAMES
        if parameters is not None or not signatures_only
    ]


def pending_marks(path: str, name: str) -> list:
    return [ADDED_BY_ENGINE] if (path, name) in PENDING else []


def signature_marks(path: str, name: str) -> list:
    gap = KNOWN_GAPS.get((name, ""))
    return pending_marks(path, name) + ([pytest.mark.xfail(strict=False, reason=gap)] if gap else [])


def load(path: str, name: str) -> object:
    return getattr(importlib.import_module(path), name)


# =========================================================================== signatures
REQUIRED = inspect.Parameter.empty
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def reference_parameters(text: str) -> List[Tuple[str, object, str]]:
    """[(name, default or REQUIRED, the default's source)] of a parameter list written as
    in a ``def``; ``_`` stands for a parameter whose name is not checked."""
    arguments = ast.parse(f"def f({text}): pass").body[0].args
    names = [a.arg for a in arguments.args]
    defaults = [None] * (len(names) - len(arguments.defaults)) + list(arguments.defaults)
    result = []
    for position, (name, default) in enumerate(zip(names, defaults)):
        if default is None:
            result.append((name if name != "_" else f"_{position}", REQUIRED, ""))
        else:
            source = ast.unparse(default)
            result.append((name, _evaluate(source), source))
    return result


def _evaluate(source: str) -> object:
    try:
        return ast.literal_eval(source)
    except ValueError:
        try:
            return eval(source, dict(DEFAULT_NAMES))  # noqa: S307 - the table's own text
        except Exception:  # noqa: BLE001 - a default only a deviation can describe
            return source


def same_default(ours: object, reference: object) -> bool:
    """Equal defaults; a list and a tuple of the same items are the same default here."""
    if isinstance(reference, list) and isinstance(ours, (list, tuple)):
        return list(ours) == reference
    if isinstance(reference, (type, type(None))) or isinstance(ours, (type, type(None))):
        return ours is reference
    return ours == reference and isinstance(ours, (bool, str)) == isinstance(reference, (bool, str))


def assert_takes_reference_arguments(function: Callable, text: str, owner: str, skip_self: bool = False) -> None:
    """``function`` binds every call written for grad-cam's ``text`` the same way."""
    parameters = list(inspect.signature(function).parameters.values())
    if skip_self:
        parameters = parameters[1:]
    reference = reference_parameters(text)
    assert len(parameters) >= len(reference), (owner, [p.name for p in parameters])
    for position, (name, default, source) in enumerate(reference):
        ours = parameters[position]
        if name.startswith("_"):  # by position only
            assert ours.kind in POSITIONAL, (owner, ours.name, "must be positional")
        else:  # by position or by keyword
            assert ours.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, (owner, ours.name, ours.kind)
            assert ours.name == name, (owner, position, ours.name, name)
        if default is REQUIRED:
            continue  # ours may add a default (target_layers=None: found automatically)
        deviation = DEVIATIONS.get((owner, name))
        if deviation is not None:
            assert same_default(ours.default, deviation[0]), (owner, name, ours.default, deviation)
        else:
            assert same_default(ours.default, default), (owner, name, ours.default, source)
    for extra in parameters[len(reference) :]:
        # A call written for grad-cam leaves our additions out: each has a default.
        assert (
            extra.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
            or extra.default is not REQUIRED
        ), (owner, extra.name)


# =========================================================================== tests: import, identity, signature
@pytest.mark.parametrize("path, name, parameters, top", names_with(pending_marks))
def test_imports_from_its_path_and_is_the_top_level_object(path, name, parameters, top):
    value = load(path, name)
    assert value.__name__ == name
    if top:
        assert getattr(pytorch_grad_cam, name) is value and name in pytorch_grad_cam.__all__


@pytest.mark.parametrize("path, name, parameters, top", names_with(signature_marks, signatures_only=True))
def test_takes_the_reference_arguments(path, name, parameters, top):
    assert_takes_reference_arguments(load(path, name), parameters, name)


def test_the_signature_check_fails_on_a_renamed_reordered_or_changed_parameter():
    def renamed(model, layers, reshape_transform=None): ...
    def reordered(model, reshape_transform=None, target_layers=None): ...
    def changed_default(model, target_layers, reshape_transform=False): ...
    def required_addition(model, target_layers, reshape_transform=None, *, extra): ...
    def positional_only(model, target_layers, /, reshape_transform=None): ...
    def compatible(model, target_layers=None, reshape_transform=None, extra=1, *, more=2, **options): ...

    for incompatible in (renamed, reordered, changed_default, required_addition, positional_only):
        with pytest.raises(AssertionError):
            assert_takes_reference_arguments(incompatible, CAM, "GradCAM")
    assert_takes_reference_arguments(compatible, CAM, "GradCAM")


def first_paths() -> Dict[str, str]:
    """{name: its first import path in the table}: a name at two paths is one object
    (the identity test), so its methods and its behaviour are checked once."""
    paths: Dict[str, str] = {}
    for path, name, _, _ in NAMES:
        paths.setdefault(name, path)
    return paths


MEMBER_CASES = [
    pytest.param(
        path,
        name,
        member,
        text,
        id=f"{name}.{member}",
        marks=pending_marks(path, name)
        + (
            [pytest.mark.xfail(strict=False, reason=KNOWN_GAPS[(name, member)])] if (name, member) in KNOWN_GAPS else []
        ),
    )
    for name, path in first_paths().items()
    if name in MEMBERS
    for member, text in MEMBERS[name].items()
]


@pytest.mark.parametrize("path, name, member, text", MEMBER_CASES)
def test_methods_take_the_reference_arguments(path, name, member, text):
    assert_takes_reference_arguments(getattr(load(path, name), member), text, name, skip_self=True)


def test_every_name_has_a_behaviour_check():
    assert {name for _, name, _, _ in NAMES} == set(CHECKS)
    assert {name for name, _ in DEVIATIONS} <= set(CHECKS) and set(MEMBERS) <= set(CHECKS)


def test_base_cam_call_takes_target_category_by_keyword():
    """docs/decisions.md, D4: ``__call__(input_tensor, targets=None, aug_smooth=False,
    eigen_smooth=False, *, target_category=None)``."""
    target_category = inspect.signature(pytorch_grad_cam.BaseCAM.__call__).parameters["target_category"]
    assert target_category.kind is inspect.Parameter.KEYWORD_ONLY and target_category.default is None


def test_the_dead_multilayer_module_is_not_provided():
    """docs/decisions.md, D12: grad-cam's ablation_cam_multilayer is dead code there."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pytorch_grad_cam.ablation_cam_multilayer")


# =========================================================================== behaviour
class TinyNet(nn.Module):
    """A convolution, BatchNorm, ReLU, global average pooling and a linear head (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3)))


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def images(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def two_targets() -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]


def assert_maps(maps: np.ndarray, shape=(2, 8, 8)) -> None:
    assert maps.shape == shape and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def check_cam_method(cls: type) -> None:
    """A BaseCAM subclass that runs on a tiny convolutional model, grad-cam's arguments by position."""
    assert issubclass(cls, pytorch_grad_cam.BaseCAM)
    model = tiny_net()
    layers = [] if cls.__name__ == "FullGrad" else [model.relu]  # FullGrad ignores target_layers
    cam = cls(model, layers, None)
    cam.batch_size = 4  # the attribute ScoreCAM's and AblationCAM's users set by hand
    assert_maps(cam(images(), two_targets()))


def check_base_cam(cls: type) -> None:
    """The base of every method class; a subclass that only gives channel weights is a CAM."""

    class MeanActivation(cls):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
            return activations.mean(axis=(2, 3))

    model = tiny_net()
    maps = MeanActivation(model, [model.relu])(images(), two_targets())
    assert_maps(maps)
    activations = torch.relu(model.bn(model.conv(images()))).detach()
    raw = torch.relu((activations.mean((2, 3))[:, :, None, None] * activations).sum(1))
    raw = raw - raw.amin((1, 2), keepdim=True)
    expected = (raw / (raw.amax((1, 2), keepdim=True) + 1e-7)).numpy()
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def check_finer_cam(cls: type) -> None:
    """alpha=0 makes FinerWeightedTarget the main class's logit: the base method's map."""
    model = tiny_net()
    finer = cls(model, [model.relu])(images(), alpha=0)
    assert_maps(finer)
    np.testing.assert_allclose(finer, pytorch_grad_cam.GradCAM(model, [model.relu])(images()), atol=1e-5)


def check_refine_cam(cls: type) -> None:
    """With one layer, the base method's map min-max scaled again: the map itself."""
    model = tiny_net()
    refined = cls(model, [model.relu])(images(), two_targets())
    assert_maps(refined)
    base = pytorch_grad_cam.GradCAMPlusPlus(model, [model.relu])(images(), two_targets())
    np.testing.assert_allclose(refined, base, atol=1e-5)


def check_deep_feature_factorization(cls: type) -> None:
    model = tiny_net()
    concepts, explanations = cls(model, model.relu)(images(), n_components=2)
    assert concepts.shape == (4, 2) and len(explanations) == 2
    assert all(e.shape == (2, 8, 8) and e.min() >= 0 and e.max() <= 1 for e in explanations)


def check_dff(function: Callable) -> None:
    """A nonnegative rank-one V (channels x positions) is reconstructed from one concept."""
    u = np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    v = np.linspace(0.2, 1.0, 2 * 3 * 3, dtype=np.float32)
    activations = (u[:, None] * v[None]).reshape(4, 2, 3, 3).transpose(1, 0, 2, 3)
    concepts, explanations = function(activations, n_components=1)
    assert concepts.shape == (4, 1) and explanations.shape == (2, 1, 3, 3)
    V = activations.transpose(1, 0, 2, 3).reshape(4, -1)
    offset = V.min(axis=1, keepdims=True)
    rebuilt = (concepts - offset) @ explanations.transpose(1, 0, 2, 3).reshape(1, -1) + offset
    assert np.abs(rebuilt - V).max() < 1e-3 * np.abs(V).max()


def check_run_dff_on_image(function: Callable) -> None:
    """The original next to the factorisation with its legend: (H, 3W, 3) uint8."""
    model = tiny_net()
    model.config = SimpleNamespace(id2label={0: "zero", 1: "one", 2: "two"})
    image = images(1)[0]
    picture = np.uint8(255 * (image.permute(1, 2, 0).numpy() + 1) / 2)
    result = function(model, model.relu, model.fc, picture, image, None, n_components=2, top_k=1)
    assert result.shape == (8, 24, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result[:, :8], picture)


def check_activations_and_gradients(cls: type) -> None:
    """Calling it is calling the model; the target layer's output is kept."""
    model = tiny_net()
    hooks = cls(model, [model.relu], None)
    try:
        output = hooks(images())
        expected_output = model(images())
        torch.testing.assert_close(output, expected_output)
        torch.testing.assert_close(hooks.activations[0], torch.relu(model.bn(model.conv(images()))))
    finally:
        hooks.release()
    assert not model.relu._forward_hooks


def check_guided_backprop_model(cls: type) -> None:
    """forward is the model; the call gives image 0's guided gradient, (H, W, C), and
    leaves the model as it was (docs/decisions.md, D11)."""
    model = tiny_net()
    relus_before = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    guided = cls(model)
    torch.testing.assert_close(guided.forward(images()), model(images()))
    gradient = guided(images(1), target_category=1)
    assert gradient.shape == (8, 8, 3) and np.isfinite(gradient).all() and np.abs(gradient).max() > 0
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus_before


def check_guided_relu_function(function: type) -> None:
    """Forward ReLU; backward passes the gradient where the input and the gradient are positive."""
    assert issubclass(function, torch.autograd.Function)
    x = torch.tensor([-1.0, 2.0, 3.0, -4.0], requires_grad=True)
    y = function.apply(x)
    torch.testing.assert_close(y, torch.relu(x.detach()))
    y.backward(torch.tensor([5.0, -6.0, 7.0, 8.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 7.0, 0.0]))


def check_guided_relu_module(cls: type) -> None:
    module = cls()
    assert isinstance(module, nn.Module)
    x = torch.tensor([-1.0, 2.0, 3.0], requires_grad=True)
    module(x).backward(torch.tensor([1.0, -1.0, 2.0]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 2.0]))


def check_ablation_layer(cls: type) -> None:
    """A module; with ratio 1.0 every channel is ablated, once."""
    layer = cls()
    assert isinstance(layer, nn.Module)
    if cls.__name__ != "AblationLayerFasterRCNN":
        channels = np.asarray(layer.activations_to_be_ablated(np.random.default_rng(0).random((5, 3, 3)), 1.0))
        assert sorted(channels.tolist()) == [0, 1, 2, 3, 4]


Z = torch.tensor([1.0, 2.0, 4.0])


def check_target(cls: type) -> None:
    """The documented number on the logits z = (1, 2, 4)."""
    name = cls.__name__
    expected = {
        "ClassifierOutputTarget": (1, 2.0),
        "ClassifierOutputSoftmaxTarget": (2, float(Z.softmax(0)[2])),
        "ClassifierOutputReST": (2, float(2 * 4.0 - torch.logsumexp(Z, 0))),  # z_c - CE(z, c)
    }
    if name in expected:
        category, value = expected[name]
        assert float(cls(category)(Z)) == pytest.approx(value, abs=1e-6)
        assert cls(category)(Z[None]).tolist() == pytest.approx([value], abs=1e-6)  # a batch: [:, c]
    elif name == "BinaryClassifierOutputTarget":
        assert float(cls(1)(torch.tensor(0.7))) == pytest.approx(0.7)
        assert float(cls(0)(torch.tensor(0.7))) == pytest.approx(-0.7)
    elif name == "SoftmaxOutputTarget":
        torch.testing.assert_close(cls()(Z), Z.softmax(-1))
    elif name == "RawScoresOutputTarget":
        torch.testing.assert_close(cls()(Z), Z)
    elif name == "SemanticSegmentationTarget":
        mask = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
        output = torch.arange(12.0).reshape(3, 2, 2)
        assert float(cls(1, mask)(output)) == pytest.approx(4.0 + 7.0)
    elif name == "FasterRCNNBoxScoreTarget":
        output = {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
            "labels": torch.tensor([3, 5]),
            "scores": torch.tensor([0.8, 0.6]),
        }
        score = cls([3], [[0.0, 0.0, 10.0, 10.0]])(output)
        assert score.shape == (1,) and float(score) == pytest.approx(1.0 + 0.8)  # IoU 1 + its score
        assert float(cls([5], [[0.0, 0.0, 10.0, 10.0]])(output)) == 0.0  # the best match has another label
    elif name == "FinerWeightedTarget":
        p = Z.softmax(0)
        value = (p[1] * (Z[0] - 0.5 * Z[1]) + p[2] * (Z[0] - 0.5 * Z[2])) / (p[1] + p[2] + 1e-9)
        assert float(cls(0, [1, 2], 0.5)(Z)) == pytest.approx(float(value), abs=1e-6)
    else:
        raise AssertionError(f"no target check for {name}")


def check_reshape_transform(function: Callable) -> None:
    name = function.__name__
    if name == "fasterrcnn_reshape_transform":
        levels = {"0": -torch.ones(1, 2, 4, 4), "pool": torch.full((1, 2, 2, 2), -3.0)}
        result = function(levels)
        assert result.shape == (1, 4, 2, 2)
        torch.testing.assert_close(result, torch.cat([torch.ones(1, 2, 2, 2), torch.full((1, 2, 2, 2), 3.0)], 1))
        return
    side, prefix = (14, 1) if name == "vit_reshape_transform" else (7, 0)
    tokens = torch.randn(2, prefix + side * side, 6, generator=torch.Generator().manual_seed(0))
    expected = tokens[:, prefix:].reshape(2, side, side, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(function(tokens), expected)  # the defaults: 14x14 (ViT), 7x7 (Swin)


def check_image_utility(function: Callable) -> None:
    name = function.__name__
    if name == "show_cam_on_image":
        black, cold = np.zeros((1, 2, 3), np.float32), np.zeros((1, 2), np.float32)
        # JET(0) is dark blue: (1-0.5)*heatmap + 0.5*black, scaled to its max.
        assert function(black, cold).tolist() == [[[255, 0, 0]] * 2]  # BGR
        assert function(black, cold, use_rgb=True).tolist() == [[[0, 0, 255]] * 2]
    elif name == "preprocess_image":
        result = function(np.full((2, 2, 3), 0.75, np.float32))
        torch.testing.assert_close(result, torch.full((1, 3, 2, 2), 0.5))  # (0.75 - 0.5) / 0.5
    elif name == "deprocess_image":
        # ((x - 0.5) / (0.5 + 1e-5)) * 0.1 + 0.5 -> 0.4, 0.6 -> uint8 of 255 times them
        assert function(np.array([0.0, 1.0])).tolist() == [102, 152]
    elif name == "scale_cam_image":
        cam = np.array([[[1.0, 3.0], [2.0, 5.0]]])
        np.testing.assert_allclose(function(cam), (cam - 1) / (4 + 1e-7), atol=1e-6)
        assert function(cam, (4, 2)).shape == (1, 2, 4)  # the size is (width, height)
    elif name == "scale_accross_batch_and_channels":
        maps = np.random.default_rng(0).random((2, 3, 4, 4)).astype(np.float32)
        assert function(maps, (8, 6)).shape == (2, 3, 6, 8)  # (width, height)
        low, high = maps.min(axis=(2, 3), keepdims=True), maps.max(axis=(2, 3), keepdims=True)
        np.testing.assert_allclose(function(maps, (4, 4)), (maps - low) / (high - low + 1e-7), atol=1e-6)
    elif name == "create_labels_legend":
        legend = function(np.array([[0.7, 0.2, 0.1]]), {0: "cat, feline, tabby, extra", 1: "dog", 2: "bird"}, top_k=2)
        assert legend == ["cat, feline, tabby:0.70\ndog:0.20"]
    elif name == "show_factorization_on_image":
        explanations = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
        black = np.zeros((4, 4, 3), np.float32)
        assert function(black, explanations).shape == (4, 4, 3)
        assert function(black, explanations, concept_labels=["a", "b"]).shape == (4, 8, 3)  # with its legend
    elif name == "sobel_cam":
        step = np.zeros((5, 6, 3), np.uint8)
        step[:, 3:] = 255
        edges = function(step)
        # |gx| = 4 * 255 saturates to 255, gy = 0: 0.5 * 255 rounds (half to even) to 128.
        assert edges.dtype == np.uint8 and edges.tolist() == [[0, 0, 128, 128, 0, 0]] * 5
    else:
        raise AssertionError(f"no image check for {name}")


def rank_one_activations() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1, 3, 4, 4) activations u_k * s(x, y): the projection is +-|u| (s - mean s)."""
    u = np.array([1.0, -2.0, 2.0], np.float32)
    s = np.linspace(-1.0, 2.0, 16, dtype=np.float32).reshape(4, 4) ** 2
    return (u[:, None, None] * s)[None], u, s


def check_projection(function: Callable) -> None:
    activations, u, s = rank_one_activations()
    expected = np.linalg.norm(u) * (s - s.mean())
    if function.__name__ == "get_2d_projection_kernel":
        projection = function(activations, kernel="linear")  # linear kernel PCA is PCA
    else:
        projection = function(activations)
    assert projection.shape == (1, 4, 4)
    np.testing.assert_allclose(np.abs(projection[0]), np.abs(expected), atol=1e-4)
    if function.__name__ == "get_2d_projection_with_sign_correction":
        assert projection.max() >= -projection.min()  # the larger magnitude positive


def layered() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()))


def check_find_layers(function: Callable) -> None:
    model = layered()
    name = function.__name__
    if name == "find_layer_types_recursive":
        assert function(model, [nn.Conv2d]) == [model[0], model[2][0]]
        assert function(model, [nn.Module]) == []  # the exact type, not isinstance
    elif name == "find_layer_predicate_recursive":
        assert function(model, lambda m: isinstance(m, (nn.ReLU, nn.Sequential))) == [model[1], model[2], model[2][1]]
    elif name == "replace_layer_recursive":
        new, inner = nn.Identity(), model[2][1]
        assert function(model, inner, new) is True and model[2][1] is new
        assert function(model, inner, new) is False
    elif name == "replace_all_layer_type_recursive":
        new = nn.Identity()
        assert function(model, nn.ReLU, new) is None
        assert model[1] is new and model[2][1] is new  # one shared instance
    else:
        raise AssertionError(f"no layer check for {name}")


class ImageMean(nn.Module):
    """Two scores: the image's mean and its negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3))
        return torch.stack([mean, -mean], 1)


def check_metric(value: object) -> None:
    """Known numbers on a model whose score is the image's mean."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    name = value.__name__
    ones, half = torch.ones(1, 3, 4, 4), np.full((1, 4, 4), 0.5, np.float32)
    targets, model = [ClassifierOutputTarget(0)], ImageMean()
    if name == "multiply_tensor_with_cam":
        cam = torch.arange(4.0).reshape(2, 2)
        torch.testing.assert_close(value(torch.ones(1, 3, 2, 2) * 2, cam), 2 * cam.expand(1, 3, 2, 2))
    elif name in ("CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence"):
        expected = {"CamMultImageConfidenceChange": -0.5, "DropInConfidence": 0.5, "IncreaseInConfidence": 0.0}[name]
        assert value()(ones, half, targets, model).tolist() == pytest.approx([expected])  # 0.5 after, 1 before
    elif name == "PerturbationConfidenceMetric":
        metric = value(lambda image, cam: image * cam)
        assert metric(ones, half, targets, model).tolist() == pytest.approx([-0.5])
        assert metric(ones, half, targets, model, return_diff=False).tolist() == pytest.approx([0.5])
    elif name in ("RemoveMostRelevantFirst", "RemoveLeastRelevantFirst"):
        mask = torch.arange(4.0).reshape(2, 2)  # the 50th percentile is 1.5
        kept = value(50, lambda image, binary: binary.expand_as(image))(torch.ones(3, 2, 2), mask)
        expected = [[1.0, 1.0], [0.0, 0.0]] if name == "RemoveMostRelevantFirst" else [[0.0, 0.0], [1.0, 1.0]]
        assert kept[0].tolist() == expected  # 1: kept, 0: imputed
    elif name == "AveragerAcrossThresholds":
        metric = value(lambda p: lambda x, cams, targets, model: np.array([p], np.float32), percentiles=[10, 40])
        assert metric(ones, half, targets, model).tolist() == [25.0]
    elif name == "NoisyLinearImputer":
        image = torch.arange(9.0).reshape(1, 3, 3)  # a linear ramp: interpolation restores it
        mask = torch.ones(3, 3)
        mask[1, 1] = 0
        torch.testing.assert_close(value(noise=0.0)(image, mask), image)
    elif name.startswith("ROAD"):
        # A constant image stays constant under linear imputation (plus noise of 0.01 std),
        # so the mean score moves only by the noise's mean over the imputed pixels.
        metric = value(percentiles=[20, 80]) if name.endswith(("Average", "Combined")) else value()
        ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
        torch.manual_seed(0)
        scores = metric(ones, ramp, targets, model)
        assert scores.shape == (1,) and abs(float(scores[0])) < 0.01
    elif name == "Complexity":
        cams = np.stack([np.full((2, 2), 0.25), np.eye(2)]).astype(np.float32)
        assert value()(cams).tolist() == pytest.approx([0.25, 0.5])
    elif name == "batch_pearson_coherency":
        a = np.random.default_rng(0).random((2, 3, 3)).astype(np.float32)
        assert value(a, 3 * a + 1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
        assert value(a, -a).tolist() == pytest.approx([-1.0, -1.0], abs=1e-5)
    elif name == "Coherency":
        cams = np.random.default_rng(0).random((1, 4, 4)).astype(np.float32)
        base = lambda input_tensor, targets: cams  # noqa: E731 - the same map again: rho = 1
        assert value()(ones, cams, targets, model, base).tolist() == pytest.approx([1.0], abs=1e-5)
    elif name == "ARCC":
        # A model that ignores its input: ROAD 0, so the harmonic mean is ~0 (docs/decisions.md, D9).
        cams = np.random.default_rng(0).random((1, 4, 4)).astype(np.float32)
        constant = lambda x: torch.ones(x.shape[0], 2)  # noqa: E731
        base = lambda input_tensor, targets: cams  # noqa: E731
        assert value(base)(ones, cams, targets, constant).tolist() == pytest.approx([0.0], abs=1e-6)
    else:
        raise AssertionError(f"no metric check for {name}")


CHECKS: Dict[str, Callable[[object], None]] = {
    **{
        name: check_cam_method
        for name in (
            "GradCAM",
            "ScoreCAM",
            "GradCAMPlusPlus",
            "AblationCAM",
            "XGradCAM",
            "EigenCAM",
            "EigenGradCAM",
            "LayerCAM",
            "FullGrad",
            "ShapleyCAM",
            "HiResCAM",
            "GradCAMElementWise",
            "RandomCAM",
            "FEM",
            "KPCA_CAM",
            "SegEigenCAM",
        )
    },
    "BaseCAM": check_base_cam,
    "FinerCAM": check_finer_cam,
    "RefineCAM": check_refine_cam,
    "DeepFeatureFactorization": check_deep_feature_factorization,
    "dff": check_dff,
    "run_dff_on_image": check_run_dff_on_image,
    "ActivationsAndGradients": check_activations_and_gradients,
    "GuidedBackpropReLUModel": check_guided_backprop_model,
    "GuidedBackpropReLU": check_guided_relu_function,
    "GuidedBackpropReLUasModule": check_guided_relu_module,
    **{name: check_ablation_layer for name in ("AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN")},
    **{
        name: check_target
        for name in (
            "ClassifierOutputTarget",
            "ClassifierOutputSoftmaxTarget",
            "ClassifierOutputReST",
            "BinaryClassifierOutputTarget",
            "SoftmaxOutputTarget",
            "RawScoresOutputTarget",
            "SemanticSegmentationTarget",
            "FasterRCNNBoxScoreTarget",
            "FinerWeightedTarget",
        )
    },
    **{
        name: check_reshape_transform
        for name in ("vit_reshape_transform", "swinT_reshape_transform", "fasterrcnn_reshape_transform")
    },
    **{
        name: check_image_utility
        for name in (
            "show_cam_on_image",
            "preprocess_image",
            "deprocess_image",
            "scale_cam_image",
            "scale_accross_batch_and_channels",
            "create_labels_legend",
            "show_factorization_on_image",
            "sobel_cam",
        )
    },
    **{
        name: check_projection
        for name in ("get_2d_projection", "get_2d_projection_with_sign_correction", "get_2d_projection_kernel")
    },
    **{
        name: check_find_layers
        for name in (
            "replace_layer_recursive",
            "replace_all_layer_type_recursive",
            "find_layer_types_recursive",
            "find_layer_predicate_recursive",
        )
    },
    **{
        name: check_metric
        for name in (
            "multiply_tensor_with_cam",
            "CamMultImageConfidenceChange",
            "DropInConfidence",
            "IncreaseInConfidence",
            "PerturbationConfidenceMetric",
            "RemoveMostRelevantFirst",
            "RemoveLeastRelevantFirst",
            "AveragerAcrossThresholds",
            "NoisyLinearImputer",
            "ROADMostRelevantFirst",
            "ROADLeastRelevantFirst",
            "ROADMostRelevantFirstAverage",
            "ROADLeastRelevantFirstAverage",
            "ROADCombined",
            "Complexity",
            "Coherency",
            "batch_pearson_coherency",
            "ARCC",
        )
    },
}


@pytest.mark.parametrize(
    "path, name",
    [
        pytest.param(path, name, id=f"{path}.{name}", marks=pending_marks(path, name))
        for name, path in first_paths().items()
    ],
)
def test_behaves_as_documented(path, name):
    CHECKS[name](load(path, name))


#: The CAM classes' registry names (cam.py --method).
REGISTERED = {
    "HiResCAM": "hirescam",
    "GradCAMElementWise": "gradcamelementwise",
    "RandomCAM": "randomcam",
    "FEM": "fem",
    "KPCA_CAM": "kpcacam",
    "SegEigenCAM": "segeigencam",
    "FullGrad": "fullgrad",
    "ShapleyCAM": "shapleycam",
    "FinerCAM": "finercam",
    "RefineCAM": "refinecam",
}


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_grad_cam_classes_are_the_registered_methods(name):
    assert pytorch_grad_cam.METHODS[REGISTERED[name]] is getattr(pytorch_grad_cam, name)


def test_gradient_free_methods_say_so():
    """FEM and KPCA-CAM read only activations: no backward pass, no targets built."""
    assert not pytorch_grad_cam.FEM.uses_gradients and not pytorch_grad_cam.KPCA_CAM.uses_gradients
    assert pytorch_grad_cam.SegEigenCAM.uses_gradients
