"""Every name this library adds for the drop-in imports from the path that code
written for today's grad-cam uses (COMPAT.md §16), and is what it should be."""
from __future__ import annotations

import importlib
import inspect

import pytest

COMPAT_NAMES = [
    ("pytorch_grad_cam", "HiResCAM"),
    ("pytorch_grad_cam", "GradCAMElementWise"),
    ("pytorch_grad_cam", "RandomCAM"),
    ("pytorch_grad_cam", "FEM"),
    ("pytorch_grad_cam", "KPCA_CAM"),
    ("pytorch_grad_cam", "SegEigenCAM"),
    ("pytorch_grad_cam.sobel_cam", "sobel_cam"),
    ("pytorch_grad_cam.utils.find_layers", "replace_layer_recursive"),
    ("pytorch_grad_cam.utils.find_layers", "replace_all_layer_type_recursive"),
    ("pytorch_grad_cam.utils.find_layers", "find_layer_types_recursive"),
    ("pytorch_grad_cam.utils.find_layers", "find_layer_predicate_recursive"),
    ("pytorch_grad_cam.utils.model_targets", "ClassifierOutputReST"),
    ("pytorch_grad_cam.utils.model_targets", "SoftmaxOutputTarget"),
    ("pytorch_grad_cam.utils.model_targets", "RawScoresOutputTarget"),
    ("pytorch_grad_cam.utils.model_targets", "FasterRCNNBoxScoreTarget"),
    ("pytorch_grad_cam.utils.model_targets", "FinerWeightedTarget"),
    ("pytorch_grad_cam.utils.image", "scale_accross_batch_and_channels"),
    ("pytorch_grad_cam.utils.svd_on_activations", "get_2d_projection"),
    ("pytorch_grad_cam.utils.svd_on_activations", "get_2d_projection_kernel"),
    ("pytorch_grad_cam.utils.svd_on_activations", "get_2d_projection_with_sign_correction"),
]

#: COMPAT.md §16's whole table (85 public names of grad-cam 1.5.x that code imports),
#: beyond the names above: every one from the path grad-cam users write.
COMPAT_NAMES += [
    ("pytorch_grad_cam", name)
    for name in (
        "GradCAM", "ScoreCAM", "GradCAMPlusPlus", "AblationCAM", "XGradCAM", "EigenCAM",
        "EigenGradCAM", "LayerCAM", "FullGrad", "ShapleyCAM", "FinerCAM", "RefineCAM",
        "DeepFeatureFactorization", "run_dff_on_image", "ActivationsAndGradients",
        "GuidedBackpropReLUModel", "AblationLayer", "AblationLayerVit", "AblationLayerFasterRCNN",
    )
] + [
    ("pytorch_grad_cam.ablation_layer", "AblationLayer"),
    ("pytorch_grad_cam.ablation_layer", "AblationLayerVit"),
    ("pytorch_grad_cam.ablation_layer", "AblationLayerFasterRCNN"),
    ("pytorch_grad_cam.base_cam", "BaseCAM"),
    ("pytorch_grad_cam.activations_and_gradients", "ActivationsAndGradients"),
    ("pytorch_grad_cam.guided_backprop", "GuidedBackpropReLUModel"),
    ("pytorch_grad_cam.feature_factorization.deep_feature_factorization", "DeepFeatureFactorization"),
    ("pytorch_grad_cam.feature_factorization.deep_feature_factorization", "dff"),
    ("pytorch_grad_cam.utils.model_targets", "ClassifierOutputTarget"),
    ("pytorch_grad_cam.utils.model_targets", "ClassifierOutputSoftmaxTarget"),
    ("pytorch_grad_cam.utils.model_targets", "BinaryClassifierOutputTarget"),
    ("pytorch_grad_cam.utils.model_targets", "SemanticSegmentationTarget"),
    ("pytorch_grad_cam.utils.reshape_transforms", "vit_reshape_transform"),
    ("pytorch_grad_cam.utils.reshape_transforms", "swinT_reshape_transform"),
    ("pytorch_grad_cam.utils.reshape_transforms", "fasterrcnn_reshape_transform"),
    ("pytorch_grad_cam.utils.image", "show_cam_on_image"),
    ("pytorch_grad_cam.utils.image", "preprocess_image"),
    ("pytorch_grad_cam.utils.image", "deprocess_image"),
    ("pytorch_grad_cam.utils.image", "scale_cam_image"),
    ("pytorch_grad_cam.utils.image", "create_labels_legend"),
    ("pytorch_grad_cam.utils.image", "show_factorization_on_image"),
    ("pytorch_grad_cam.metrics.cam_mult_image", "multiply_tensor_with_cam"),
    ("pytorch_grad_cam.metrics.cam_mult_image", "CamMultImageConfidenceChange"),
    ("pytorch_grad_cam.metrics.cam_mult_image", "DropInConfidence"),
    ("pytorch_grad_cam.metrics.cam_mult_image", "IncreaseInConfidence"),
    ("pytorch_grad_cam.metrics.perturbation_confidence", "PerturbationConfidenceMetric"),
    ("pytorch_grad_cam.metrics.perturbation_confidence", "RemoveMostRelevantFirst"),
    ("pytorch_grad_cam.metrics.perturbation_confidence", "RemoveLeastRelevantFirst"),
    ("pytorch_grad_cam.metrics.perturbation_confidence", "AveragerAcrossThresholds"),
    ("pytorch_grad_cam.metrics.road", "NoisyLinearImputer"),
    ("pytorch_grad_cam.metrics.road", "ROADMostRelevantFirst"),
    ("pytorch_grad_cam.metrics.road", "ROADLeastRelevantFirst"),
    ("pytorch_grad_cam.metrics.road", "ROADMostRelevantFirstAverage"),
    ("pytorch_grad_cam.metrics.road", "ROADLeastRelevantFirstAverage"),
    ("pytorch_grad_cam.metrics.road", "ROADCombined"),
    ("pytorch_grad_cam.metrics.arcc", "Complexity"),
    ("pytorch_grad_cam.metrics.arcc", "Coherency"),
    ("pytorch_grad_cam.metrics.arcc", "batch_pearson_coherency"),
    ("pytorch_grad_cam.metrics.arcc", "ARCC"),
]

#: The CAM classes' registry names (cam.py --method).
REGISTERED = {
    "HiResCAM": "hirescam",
    "GradCAMElementWise": "gradcamelementwise",
    "RandomCAM": "randomcam",
    "FEM": "fem",
    "KPCA_CAM": "kpcacam",
    "SegEigenCAM": "segeigencam",
}


@pytest.mark.parametrize("module, name", COMPAT_NAMES, ids=[f"{m}.{n}" for m, n in COMPAT_NAMES])
def test_name_imports_from_its_compat_path(module, name):
    value = getattr(importlib.import_module(module), name)
    assert callable(value)
    if module == "pytorch_grad_cam":
        import pytorch_grad_cam

        assert name in pytorch_grad_cam.__all__


def test_the_dead_multilayer_module_is_not_provided():
    """COMPAT decision 12: grad-cam's ablation_cam_multilayer is dead code there."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("pytorch_grad_cam.ablation_cam_multilayer")


@pytest.mark.parametrize("name", sorted(REGISTERED))
def test_cam_classes_are_registered_and_take_the_reference_arguments(name):
    import pytorch_grad_cam
    from pytorch_grad_cam import METHODS, BaseCAM

    cls = getattr(pytorch_grad_cam, name)
    assert issubclass(cls, BaseCAM) and METHODS[REGISTERED[name]] is cls
    parameters = list(inspect.signature(cls).parameters)
    assert parameters[:3] == ["model", "target_layers", "reshape_transform"]
    extras = {"FEM": ["k"], "KPCA_CAM": ["kernel", "gamma"]}.get(name, [])
    assert parameters[3 : 3 + len(extras)] == extras


def test_extra_arguments_have_the_reference_defaults():
    from pytorch_grad_cam import FEM, KPCA_CAM

    assert inspect.signature(FEM).parameters["k"].default == 2
    kpca = inspect.signature(KPCA_CAM).parameters
    assert kpca["kernel"].default == "sigmoid" and kpca["gamma"].default is None
    assert not FEM.uses_gradients and not KPCA_CAM.uses_gradients


def test_faster_rcnn_target_signature():
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget, FinerWeightedTarget

    assert list(inspect.signature(FasterRCNNBoxScoreTarget).parameters) == ["labels", "bounding_boxes", "iou_threshold"]
    assert inspect.signature(FasterRCNNBoxScoreTarget).parameters["iou_threshold"].default == 0.5
    assert list(inspect.signature(FinerWeightedTarget).parameters) == ["main_category", "comparison_categories", "alpha"]
