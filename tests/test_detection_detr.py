"""Per-object maps for HuggingFace DETR-style detectors (DETR, RT-DETR, Deformable DETR):
the adapter's candidates against the models' own image processors, BoxTarget's score,
the GradCAM/HiResCAM maps against autograd, the model left as found, every method.

Models are tiny, random, built offline from configs (no pretrained backbone)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_sets import CNN_METHODS
from torchvision.ops import box_iou as torchvision_box_iou

from pytorch_grad_cam import METHODS, GradCAM, HiResCAM
from pytorch_grad_cam.detection import BoxTarget, as_detector
from pytorch_grad_cam.detection.detr import DetrDetector, adapt_detr
from tests.cam_reference import single_thread_module  # noqa: F401  (autouse: one thread)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="the DETR-style tests need transformers (test extra)")

FAMILIES = ("detr", "rt_detr", "rt_detr_v2", "deformable_detr")
SIZE = (160, 128)  # (H, W): a 5 x 4 grid at the backbone's stride 32
SMALL = dict(d_model=32, decoder_ffn_dim=32, decoder_attention_heads=2, num_queries=10, num_labels=5)


def _resnet(config_class: type, out_features: list) -> object:
    return config_class(
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=out_features,
    )


def _build(family: str) -> tuple:
    """(model in eval mode, its image processor), random weights from seed 0."""
    torch.manual_seed(0)
    encoder = dict(encoder_layers=1, encoder_ffn_dim=32, encoder_attention_heads=2)
    if family == "detr":
        config = transformers.DetrConfig(
            backbone_config=_resnet(transformers.ResNetConfig, ["stage4"]), use_timm_backbone=False,
            decoder_layers=1, init_std=0.2, **encoder, **SMALL,  # 0.02 would give every query one box
        )  # fmt: skip
        return transformers.DetrForObjectDetection(config).eval(), transformers.DetrImageProcessor()
    if family in ("rt_detr", "rt_detr_v2"):
        v2 = family == "rt_detr_v2"  # v2: decoder_layers >= 2, its box heads are tied across layers
        config = (transformers.RTDetrV2Config if v2 else transformers.RTDetrConfig)(
            backbone_config=_resnet(transformers.RTDetrResNetConfig, ["stage2", "stage3", "stage4"]),
            encoder_hidden_dim=32, encoder_in_channels=[16, 24, 32], encoder_ffn_dim=32, encoder_attention_heads=2,
            decoder_in_channels=[32, 32, 32], decoder_layers=2 if v2 else 1, decoder_n_points=2, **SMALL,
        )  # fmt: skip
        head = transformers.RTDetrV2ForObjectDetection if v2 else transformers.RTDetrForObjectDetection
        return head(config).eval(), transformers.RTDetrImageProcessor()
    config = transformers.DeformableDetrConfig(  # decoder_layers >= 2: its box heads are tied across layers
        backbone_config=_resnet(transformers.ResNetConfig, ["stage2", "stage3", "stage4"]), use_timm_backbone=False,
        decoder_layers=2, encoder_n_points=2, decoder_n_points=2, num_feature_levels=3, **encoder, **SMALL,
    )  # fmt: skip
    return transformers.DeformableDetrForObjectDetection(config).eval(), transformers.DeformableDetrImageProcessor()


@pytest.fixture(scope="module")
def built() -> dict:
    """family -> (model, processor, images (2, 3, H, W)); each model built once."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, *SIZE)
    return {family: (*_build(family), images) for family in FAMILIES}


def _top_target(candidates: object, iou_threshold: float = 0.5) -> BoxTarget:
    """BoxTarget of the candidate with the highest score."""
    query = int(candidates.scores.max(dim=1).values.argmax())
    return BoxTarget(candidates.boxes[query].tolist(), int(candidates.scores[query].argmax()), iou_threshold)


def test_adapter_recognises_the_families_and_nothing_else(built):
    for family in FAMILIES:
        model = built[family][0]
        detector = as_detector(model)
        assert isinstance(detector, DetrDetector) and detector.model is model and detector.returns_candidates
        (layer,) = detector.default_target_layers()
        assert layer is model.model.backbone.model.encoder.stages[-1]  # the stage giving 'stage4'
    assert adapt_detr(torch.nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="no logits and pred_boxes"):
        as_detector(transformers.DetrModel(built["detr"][0].config))(built["detr"][2])


@pytest.mark.parametrize("family", FAMILIES)
def test_candidates_equal_hand_decoding_and_image_processor(built, family):
    model, processor, images = built[family]
    with torch.no_grad():
        candidates = as_detector(model)(images)
        raw = model(pixel_values=images)
    height, width = SIZE
    cx, cy, w, h = raw.pred_boxes.unbind(-1)
    boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)
    probs = raw.logits.softmax(-1)[..., :-1] if family == "detr" else raw.logits.sigmoid()
    assert candidates[0].scores.shape == (10, 5)
    for b, image in enumerate(candidates):
        assert torch.equal(image.boxes, boxes[b]) and torch.equal(image.scores, probs[b])
    # The image processor's kept detections (threshold 0: all its top-k) are candidates, exactly.
    results = processor.post_process_object_detection(raw, threshold=0.0, target_sizes=[SIZE] * 2)
    for image, result in zip(candidates, results):
        if family == "detr":  # one detection per query, in query order
            assert torch.equal(image.boxes, result["boxes"])
            assert torch.equal(image.scores.max(dim=1).values, result["scores"])
            assert torch.equal(image.scores.argmax(dim=1), result["labels"])
            continue
        # focal-loss families: the top (query, class) pairs of the flattened scores
        assert torch.equal(image.scores.flatten().topk(len(result["scores"])).values, result["scores"])
        for score, label, box in zip(result["scores"], result["labels"], result["boxes"]):
            same = (image.boxes == box).all(dim=1) & (image.scores[:, label] == score)
            assert bool(same.any()), (family, float(score), int(label))


def test_detr_box_target_matches_the_query_post_processing_reports(built):
    model, processor, images = built["detr"]
    with torch.no_grad():
        candidates = as_detector(model)(images)
        result = processor.post_process_object_detection(model(pixel_values=images), 0.0, [SIZE] * 2)[0]
    query = int(result["scores"].argmax())  # DETR's processor keeps the queries in order
    target = BoxTarget(result["boxes"][query], int(result["labels"][query]), iou_threshold=1.0)
    assert target.matches(candidates[0]).nonzero().flatten().tolist() == [query]
    assert target(candidates[0]) == result["scores"][query]


@pytest.mark.parametrize("family", FAMILIES)
def test_box_target_score_is_the_mean_of_the_hand_matched_candidates(built, family):
    model, _, images = built[family]
    with torch.no_grad():
        candidates = as_detector(model)(images)[0]
    target = _top_target(candidates, iou_threshold=0.3)
    iou = torchvision_box_iou(candidates.boxes, target.box[None])[:, 0]
    matched = (iou >= 0.3) & (candidates.scores.argmax(dim=1) == target.label)
    assert int(matched.sum()) >= 1
    assert target(candidates) == candidates.scores[matched, target.label].mean()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_map_equals_autograd_reference(built, family, method):
    model, _, images = built[family]
    detector = as_detector(model)
    (layer,) = detector.default_target_layers()
    with torch.no_grad():
        targets = [_top_target(image) for image in detector(images)]
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:  # an input that needs grad: the backbone's parameters may be frozen
        candidates = detector(images.clone().requires_grad_(True))
    finally:
        handle.remove()
    score = sum(target(image) for target, image in zip(targets, candidates))
    (grads,) = torch.autograd.grad(score, captured[0])
    activations = captured[0].detach()  # float32, as the library computes
    if method == "gradcam":
        raw = (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)
    else:
        raw = (grads * activations).sum(dim=1)
    raw = raw.clamp(min=0)
    flat = raw.flatten(1) - raw.flatten(1).min(dim=1, keepdim=True).values
    scaled = (flat / (flat.max(dim=1, keepdim=True).values + 1e-7)).reshape(raw.shape)
    resized = F.interpolate(scaled[:, None], size=SIZE, mode="bilinear", align_corners=False)[:, 0]
    flat = resized.flatten(1) - resized.flatten(1).min(dim=1, keepdim=True).values
    expected = (flat / (flat.max(dim=1, keepdim=True).values + 1e-7)).reshape(resized.shape)
    cam_class = GradCAM if method == "gradcam" else HiResCAM
    maps = torch.as_tensor(cam_class(detector, [layer])(images, targets))
    assert float(expected.max()) > 0.99  # a map with structure, not all zeros
    # measured: equal in float32; a float64 reference differs by float32 rounding (up to 1.6e-5)
    torch.testing.assert_close(maps, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_left_as_found_and_no_file_written(built, family, tmp_path, monkeypatch):
    model, _, images = built[family]
    monkeypatch.chdir(tmp_path)
    detector = as_detector(model)
    with torch.no_grad():
        targets = [_top_target(image) for image in detector(images)]
    state = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    try:
        maps = GradCAM(detector, detector.default_target_layers())(images, targets)
        assert model.training and all(module.training for module in model.modules())
    finally:
        model.eval()
    assert maps.shape == (2, *SIZE)
    assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters())
    for module in model.modules():
        assert not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", sorted(CNN_METHODS))
def test_every_method_gives_a_finite_map(built, family, method, recwarn, few_mask_repeats):
    model, _, images = built[family]
    detector = as_detector(model)
    image = images[:1]
    with torch.no_grad():
        targets = [_top_target(detector(image)[0])]
    if method == "cam":  # the classifier's row of a class: a box names no class of a classifier
        with pytest.raises(TypeError, match="each target must name a class"):
            METHODS[method](detector, detector.default_target_layers())(image, targets)
        return
    # ScoreCAM's masked copies may lose the box on these random models: scored 0 there
    # (scoring.perturbed), while the real input's box must match.
    maps = METHODS[method](detector, detector.default_target_layers())(image, targets)
    assert maps.shape == (1, *SIZE) and maps.dtype == "float32"
    assert bool(torch.isfinite(torch.as_tensor(maps)).all())
    if method == "ablationcam":  # torch.fx cannot trace these models: whole-model runs, said once
        assert any("torch.fx cannot trace" in str(warning.message) for warning in recwarn)


@pytest.mark.parametrize("family", FAMILIES)
def test_unmatched_box_raises(built, family):
    model, _, images = built[family]
    detector = as_detector(model)
    with pytest.raises(ValueError, match="no candidate of class"):
        GradCAM(detector, detector.default_target_layers())(images[:1], [BoxTarget([0.0, 0.0, 1.0, 1.0], 0)])


def test_explain_detections_detects_in_eval_mode_and_gives_the_mode_back(built):
    """A model built from a config is in training mode (dropout on): the detection pass
    runs in eval mode like the maps (the same boxes and scores as the eval-mode model's),
    and every submodule's mode comes back."""
    from pytorch_grad_cam.detection import explain_detections

    model, _, images = built["detr"]
    expected = explain_detections(model.eval(), images[:1], confidence=0.0, max_detections=3)[0]
    model.train()
    try:
        torch.manual_seed(0)
        detections = explain_detections(model, images[:1], confidence=0.0, max_detections=3)[0]
        assert all(module.training for module in model.modules())
    finally:
        model.eval()
    assert [d.score for d in detections] == [d.score for d in expected] and len(expected) >= 1
    for mine, theirs in zip(detections, expected):
        assert (mine.box == theirs.box).all() and mine.label == theirs.label
        assert float(abs(mine.cam - theirs.cam).max()) < 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_several_boxes_of_one_image_equal_one_box_calls(built, family):
    """explain_targets (one forward, the boxes' gradients) gives each box's own call's map. (Not
    compared with the image repeated in a batch: these random models' gradients are ~1e-8 on
    RT-DETR, where batch-size rounding alone moves the min-max-scaled maps.)"""
    model, _, images = built[family]
    detector = as_detector(model)
    with torch.no_grad():
        (candidates,) = detector(images[:1])
    best, labels = candidates.scores.max(dim=1)
    targets = [BoxTarget(candidates.boxes[i], int(labels[i]), 0.99) for i in best.argsort(descending=True)[:3].tolist()]
    cam = HiResCAM(detector, detector.default_target_layers())
    several = cam.explain_targets(images[:1], targets)
    alone = np.concatenate([cam(images[:1], [target]) for target in targets])
    assert np.abs(several[0] - several[1]).max() > 0.01  # boxes of their own
    np.testing.assert_allclose(several, alone, atol=1e-6, rtol=0)  # measured: equal
