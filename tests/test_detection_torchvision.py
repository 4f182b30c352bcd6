"""torchvision detectors wrapped by as_detector: candidates against the model's own raw
head outputs (decoded by hand here) and against its own post-processed detections,
BoxTarget's score, GradCAM/HiResCAM against autograd, the model left as found, and
every registered method on the wrapper. Random weights, fixed seeds, small inputs."""

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_sets import CNN_METHODS
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign, box_iou

from pytorch_grad_cam import METHODS, GradCAM, HiResCAM
from pytorch_grad_cam.detection import BoxTarget, MaskTarget, as_detector, explain_detections
from pytorch_grad_cam.detection.torchvision_models import TorchvisionDetector

NUM_CLASSES = 5
SMALL = {"min_size": 128, "max_size": 128}
#: score_thresh 0 for the sigmoid families: their classifier's prior (0.01) is under the
#: default threshold, and the subset check needs detections to compare.
BUILDERS = {
    "retinanet": lambda: detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, score_thresh=0.0, **SMALL
    ),
    "fcos": lambda: detection.fcos_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, score_thresh=0.0, **SMALL
    ),
    "ssdlite": lambda: detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ),
    "fasterrcnn": lambda: detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, rpn_post_nms_top_n_test=40, **SMALL
    ),
    "maskrcnn": lambda: detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, rpn_post_nms_top_n_test=20, **SMALL
    ),
}
#: The box coders' weights and log-size clamp, as torchvision's source sets them.
DELTA_WEIGHTS = {"retinanet": (1.0, 1.0, 1.0, 1.0), "ssdlite": (10.0, 10.0, 5.0, 5.0)}
RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
LOG_CLAMP = math.log(1000.0 / 16)


@pytest.fixture(scope="module")
def models():
    built = {}
    for index, (name, build) in enumerate(BUILDERS.items()):
        torch.manual_seed(index)
        built[name] = build().eval()
    return built


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))


def _record(model, names):
    """Forward hooks keeping the outputs of model.<name> for each name; returns (store, handles)."""
    store, handles = {}, []
    for name in names:
        handles.append(
            model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: store.__setitem__(name, o))
        )
    return store, handles


def _delta_decode(deltas, anchors, weights):
    """Hand decoding of (dx, dy, dw, dh) against xyxy anchors; deltas (N, 4) or (N, C*4)."""
    deltas = deltas.reshape(len(anchors), -1, 4)
    wx, wy, ww, wh = weights
    size = anchors[:, None, 2:] - anchors[:, None, :2]
    centre = anchors[:, None, :2] + 0.5 * size
    d_centre = deltas[..., :2] / torch.tensor([wx, wy])
    d_size = (deltas[..., 2:] / torch.tensor([ww, wh])).clamp(max=LOG_CLAMP)
    new_centre, new_size = d_centre * size + centre, torch.exp(d_size) * size
    boxes = torch.cat([new_centre - 0.5 * new_size, new_centre + 0.5 * new_size], dim=-1)
    return boxes[:, 0] if boxes.shape[1] == 1 else boxes


def _linear_decode(deltas, anchors):
    """FCOS: distances to the four sides, in units of the anchor's size, from its centre."""
    size = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
    centre = (0.5 * (anchors[:, :2] + anchors[:, 2:])).repeat(1, 2)
    return centre + deltas * size * torch.tensor([-1.0, -1.0, 1.0, 1.0])


def _to_input(boxes, resized, original):
    h, w = resized
    clipped = torch.stack(
        [boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)],
        dim=-1,
    )
    ratio = torch.tensor(original, dtype=torch.float32) / torch.tensor(resized, dtype=torch.float32)
    return clipped * torch.stack([ratio[1], ratio[0], ratio[1], ratio[0]])


def _hand_candidates(name, model, detector, image):
    """The wrapper's candidates and the same decoded by hand from the raw outputs."""
    two_stage = name in ("fasterrcnn", "maskrcnn")
    names = ["transform", "rpn", "roi_heads.box_predictor"] if two_stage else ["transform", "head", "anchor_generator"]
    store, handles = _record(model, names)
    try:
        with torch.no_grad():
            candidates = detector(image)[0]
    finally:
        for handle in handles:
            handle.remove()
    resized = store["transform"][0].image_sizes[0]
    original = tuple(image.shape[-2:])
    if two_stage:
        logits, deltas = store["roi_heads.box_predictor"]
        boxes = _delta_decode(deltas, store["rpn"][0][0], RCNN_WEIGHTS)
        probabilities = F.softmax(logits, dim=-1)
        scores = torch.cat([torch.zeros_like(probabilities[:, :1]), probabilities[:, 1:]], dim=1)
    else:
        head, anchors = store["head"], store["anchor_generator"][0]
        logits, deltas = head["cls_logits"][0], head["bbox_regression"][0]
        if name == "fcos":
            boxes = _linear_decode(deltas, anchors)
            scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"][0]))
        else:
            boxes = _delta_decode(deltas, anchors, DELTA_WEIGHTS[name])
            scores = torch.sigmoid(logits)
            if name == "ssdlite":
                probabilities = F.softmax(logits, dim=-1)
                scores = torch.cat([torch.zeros_like(probabilities[:, :1]), probabilities[:, 1:]], dim=1)
    return candidates, _to_input(boxes, resized, original), scores


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_candidates_are_the_hand_decoded_head_output_and_hold_every_detection(name, models, image):
    """(a) boxes and scores equal a hand decoding of the raw head output; and every box the
    model itself reports (threshold, top-k, NMS applied) is one candidate's box with the
    same score, under the same label numbering."""
    model = models[name]
    detector = as_detector(model)
    assert isinstance(detector, TorchvisionDetector) and detector.model is model
    candidates, boxes, scores = _hand_candidates(name, model, detector, image)
    # Measured: equal bits on the CPU (the same float32 operations); the margin is a few
    # ulps of ~100-pixel boxes, for other kernels' order of operations.
    torch.testing.assert_close(candidates.boxes, boxes, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(candidates.scores, scores, rtol=1e-6, atol=1e-7)
    assert float(candidates.scores.min()) >= 0 and float(candidates.scores.max()) <= 1
    with torch.no_grad():
        own = model(list(image))[0]
    assert len(own["boxes"]) > 0
    for box, score, label in zip(own["boxes"], own["scores"], own["labels"]):
        error = (candidates.boxes_of(int(label)) - box).abs().max(dim=1).values + (
            candidates.scores[:, label] - score
        ).abs()
        assert float(error.min()) <= 1e-5, (name, box, score, label)  # measured: 0.0


def test_mask_rcnn_masks_are_the_mask_head_logits_of_the_detections(models, image):
    """Mask R-CNN: each candidate's mask logits for its top class, pasted like the model
    pastes them, equal the model's mask of the detection with that box and label."""
    model = models["maskrcnn"]
    with torch.no_grad():
        candidates = as_detector(model)(image)[0]
        own = model(list(image))[0]
    assert candidates.masks.shape == (len(candidates.scores), NUM_CLASSES, 28, 28)
    top = candidates.scores.argmax(dim=1)
    compared = 0
    for box, score, label, mask in zip(own["boxes"], own["scores"], own["labels"], own["masks"]):
        same = ((candidates.boxes_of(int(label)) - box).abs().max(dim=1).values < 1e-5) & (top == label)
        for i in torch.where(same)[0]:
            pasted = paste_masks_in_image(
                torch.sigmoid(candidates.masks[i, label])[None, None], box[None], image.shape[-2:]
            )
            torch.testing.assert_close(pasted[0], mask, rtol=0, atol=1e-5)
            compared += 1
    assert compared > 0


def test_box_target_scores_the_hand_matched_candidates(models, image):
    """(b) BoxTarget = mean class score of the candidates with that top class and IoU >= 0.5
    (IoU by torchvision.ops.box_iou here), on a detection of the model."""
    model = models["retinanet"]
    with torch.no_grad():
        candidates = as_detector(model)(image)[0]
        own = model(list(image))[0]
    box, label = own["boxes"][0], int(own["labels"][0])
    matched = (box_iou(candidates.boxes, box[None])[:, 0] >= 0.5) & (candidates.scores.argmax(dim=1) == label)
    assert int(matched.sum()) >= 1
    expected = candidates.scores[matched, label].mean()
    assert float(BoxTarget(box, label)(candidates)) == float(expected)


def _tiny_backbone():
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
    )
    backbone.out_channels = 8
    return backbone


def _anchors():
    return AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),))


@pytest.fixture(scope="module")
def tiny():
    """A RetinaNet, a Faster R-CNN and a Mask R-CNN on an 8-channel two-conv backbone (64 px): cheap
    enough for the perturbation methods (8 channels to mask)."""
    torch.manual_seed(0)
    retina = detection.RetinaNet(
        _tiny_backbone(), num_classes=3, anchor_generator=_anchors(), score_thresh=0.0, min_size=64, max_size=64
    )
    faster = detection.FasterRCNN(
        _tiny_backbone(),
        num_classes=3,
        rpn_anchor_generator=_anchors(),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        representation_size=32,
        rpn_post_nms_top_n_test=30,
        box_score_thresh=0.0,
        min_size=64,
        max_size=64,
    )
    masks = detection.MaskRCNN(
        _tiny_backbone(),
        rpn_anchor_generator=_anchors(),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_predictor=FastRCNNPredictor(1024, 3),  # after torchvision's default box head (1024 wide)
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        mask_head=MaskRCNNHeads(8, (8, 8), 1),
        mask_predictor=MaskRCNNPredictor(8, 8, 3),
        rpn_post_nms_top_n_test=30,
        box_score_thresh=0.0,
        min_size=64,
        max_size=64,
    )
    # RetinaNet's classifier starts at its prior (0.01 everywhere): spread it so that
    # classes differ between anchors.
    nn.init.normal_(retina.head.classification_head.cls_logits.weight, std=0.3)
    return {"retinanet": retina.eval(), "fasterrcnn": faster.eval(), "maskrcnn": masks.eval()}


@pytest.fixture(scope="module")
def tiny_images():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _detected_targets(model, images, iou_threshold=0.5):
    """A BoxTarget per image on its best candidate (the model's top detection before NMS)."""
    with torch.no_grad():
        outputs = as_detector(model)(images)
    targets = []
    for candidates in outputs:
        best, labels = candidates.scores.max(dim=1)
        i = int(best.argmax())
        targets.append(BoxTarget(candidates.boxes_of(int(labels[i]))[i], int(labels[i]), iou_threshold))
    return targets


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_gradcam_and_hirescam_equal_autograd(method, tiny, tiny_images):
    """(c) the map from torch.autograd.grad of BoxTarget's score w.r.t. the layer output:
    GradCAM weights = mean gradient, HiResCAM = elementwise product; ReLU, min-max,
    bilinear resize (align_corners=False), min-max."""
    model = tiny["retinanet"]
    detector = as_detector(model)
    layer = model.backbone[3]
    targets = _detected_targets(model, tiny_images)
    store, handles = _record(model, ["backbone.3"])
    try:
        outputs = detector(tiny_images)
    finally:
        handles[0].remove()
    activations = store["backbone.3"]
    reference = []
    for i, (target, candidates) in enumerate(zip(targets, outputs)):
        (gradient,) = torch.autograd.grad(target(candidates), activations, retain_graph=True)
        a, g = activations[i], gradient[i]
        cam = (g.mean(dim=(1, 2))[:, None, None] * a).sum(0) if method == "gradcam" else (g * a).sum(0)
        cam = torch.relu(cam)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        cam = F.interpolate(cam[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        reference.append((cam - cam.min()) / (cam.max() - cam.min() + 1e-7))
    reference = torch.stack(reference).detach().numpy()
    assert reference.std() > 0.05
    maps = METHODS[method](detector, [layer])(tiny_images, targets)
    np.testing.assert_allclose(maps, reference, atol=1e-5, rtol=0)


def test_model_left_as_found(tiny, tiny_images, tmp_path, monkeypatch):
    """(d) mode (per module), parameters, buffers as before, hooks gone, no file written."""
    monkeypatch.chdir(tmp_path)
    model = tiny["fasterrcnn"]
    model.train()
    model.roi_heads.eval()  # a mixed state, to be given back module by module
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        detector = as_detector(model)
        targets = _detected_targets(model.eval(), tiny_images)
        model.train()
        model.roi_heads.eval()
        maps = GradCAM(detector, detector.default_target_layers())(tiny_images, targets)
        detector(tiny_images)
        assert {name: m.training for name, m in model.named_modules()} == modes
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
        for module in model.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
        assert all(p.grad is None for p in model.parameters())
        assert os.listdir(tmp_path) == []
        assert maps.shape == (2, 64, 64)
    finally:
        model.eval()


#: The perturbation methods rerun the detector on perturbed copies, where the object may
#: vanish (scored 0 there: scoring.perturbed); they take a progress option.
PERTURBING = {"scorecam", "ablationcam", "sscam", "iscam"}


@pytest.mark.parametrize("family", ["retinanet", "fasterrcnn"])
@pytest.mark.parametrize("method", sorted(CNN_METHODS))
def test_every_method_runs_on_the_wrapper(method, family, tiny, tiny_images, few_mask_repeats):
    """(e) every registered method gives finite (B, H, W) float32 maps in [0, 1]."""
    model = tiny[family]
    detector = as_detector(model)
    perturbing = method in PERTURBING
    targets = _detected_targets(model, tiny_images, 0.5)
    kwargs = {"progress": False} if perturbing else {}
    cam = METHODS[method](detector, detector.default_target_layers(), **kwargs)
    if method == "cam":  # the classifier's row of a class: a box names no class of a classifier
        with pytest.raises(TypeError, match="each target must name a class"):
            cam(tiny_images, targets)
        return
    if method == "shapleycam" and family == "fasterrcnn":
        # ShapleyCAM needs second derivatives; torchvision's roi_align has none.
        with pytest.raises(RuntimeError, match="double backwards on roi_align"):
            cam(tiny_images, targets)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AblationCAM's fallback to whole-model runs
        maps = cam(tiny_images, targets)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_default_layers(models, tiny, image):
    """The default layers: the FPN's output convs, SSDlite's two MobileNet stages, a plain
    backbone itself; GradCAM there on Faster R-CNN's top candidate gives a map with contrast
    (the random SSDlite's activations vanish (~1e-13) through its depth: no map to check)."""
    for name, model in models.items():
        layers = as_detector(model).default_target_layers()
        expected = list(model.backbone.features) if name == "ssdlite" else list(model.backbone.fpn.layer_blocks)
        assert layers == expected, name
    assert as_detector(tiny["retinanet"]).default_target_layers() == [tiny["retinanet"].backbone]
    model = models["fasterrcnn"]
    detector = as_detector(model)
    maps = GradCAM(detector, detector.default_target_layers())(image, _detected_targets(model, image))
    assert maps.shape == (1, 96, 128) and np.isfinite(maps).all()
    assert maps.max() > 0.99 and maps.std() > 0.05


def test_unmatched_box_raises(tiny, tiny_images):
    """(f) a box no candidate of that class overlaps is an error."""
    detector = as_detector(tiny["retinanet"])
    target = BoxTarget([0.0, 0.0, 1.0, 1.0], 1, iou_threshold=1.0)
    with pytest.raises(ValueError, match="no candidate of class 1"):
        GradCAM(detector, detector.default_target_layers())(tiny_images[:1], [target])


def test_non_detectors_are_not_adapted():
    """Only torchvision detection models are recognised."""
    from pytorch_grad_cam.detection.torchvision_models import adapt_torchvision

    assert adapt_torchvision(nn.Conv2d(3, 3, 1)) is None
    with pytest.raises(TypeError, match="no detector family recognises Conv2d"):
        as_detector(nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("family", ["retinanet", "fasterrcnn"])
def test_several_boxes_of_one_image_equal_one_box_calls(family, tiny, tiny_images):
    """explain_targets (one forward, the boxes' gradients) gives each box's own call's map. (Not
    compared with the image repeated in a batch: these random models' gradients are ~1e-8 on
    RT-DETR, where batch-size rounding alone moves the min-max-scaled maps.)"""
    model = tiny[family]
    detector = as_detector(model)
    with torch.no_grad():
        (candidates,) = detector(tiny_images[:1])
    best, labels = candidates.scores.max(dim=1)
    order = best.argsort(descending=True)[:3]
    targets = [BoxTarget(candidates.boxes_of(int(labels[i]))[i], int(labels[i]), 0.9) for i in order.tolist()]
    cam = GradCAM(detector, detector.default_target_layers())
    several = cam.explain_targets(tiny_images[:1], targets)
    alone = np.concatenate([cam(tiny_images[:1], [target]) for target in targets])
    assert np.abs(several[0] - several[1]).max() > 0.01  # boxes of their own
    np.testing.assert_allclose(several, alone, atol=1e-6, rtol=0)  # measured: equal


# ---------------------------------------------------------------- Mask R-CNN: a map per instance mask
def _top_mask_target(candidates, **kwargs):
    best, labels = candidates.scores.max(dim=1)
    i = int(best.argmax())
    return MaskTarget(candidates.boxes_of(int(labels[i]))[i], int(labels[i]), **kwargs), int(labels[i])


def test_mask_target_is_the_matched_candidates_mean_mask_probability_over_their_region(tiny, tiny_images):
    (found,) = as_detector(tiny["maskrcnn"])(tiny_images[:1])
    target, label = _top_mask_target(found)
    matched = target.matches(found)
    assert int(matched.sum()) >= 1
    probability = torch.sigmoid(found.masks[matched, label])
    own = (probability * (probability >= 0.5)).mean(dim=(1, 2)).mean()  # each candidate's own mask
    assert target(found).item() == own.item()
    everything = MaskTarget(target.box, label, mask=torch.ones(64, 64, dtype=torch.bool))
    assert everything(found).item() == pytest.approx(probability.mean().item(), abs=1e-6)  # region: all cells
    assert MaskTarget(target.box, label, mask=torch.zeros(64, 64))(found).item() == 0.0
    (grad,) = torch.autograd.grad(target(found), found.masks)
    assert bool((grad[~matched] == 0).all()) and float(grad[matched, label].abs().max()) > 0


def test_mask_target_map_equals_autograd_and_explain_detections_gives_the_instances_masks(tiny, tiny_images):
    model, image = tiny["maskrcnn"], tiny_images[:1]
    detector = as_detector(model)
    with torch.no_grad():
        own = model(list(image))[0]
    (detections,) = explain_detections(
        model, image, method="hirescam", confidence=0.0, max_detections=2, explain="mask"
    )
    assert len(detections) == 2
    layer = model.backbone[2]
    for kept in detections:
        # the model's own mask of this detection (same box and label), thresholded as it pastes
        same = [
            k
            for k, (box, label) in enumerate(zip(own["boxes"], own["labels"]))
            if int(label) == kept.label and float((box - torch.as_tensor(kept.box)).abs().max()) < 1e-4
        ]
        assert same and np.array_equal(kept.mask, (own["masks"][same[0], 0] >= 0.5).numpy())
        target = MaskTarget(kept.box, kept.label)
        captured = []
        handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            (found,) = detector(image)
        finally:
            handle.remove()
        (grads,) = torch.autograd.grad(target(found), captured[0])
        raw = torch.relu((grads * captured[0]).sum(dim=1))[0].detach()
        raw = (raw - raw.min()) / (raw.max() - raw.min() + 1e-7)
        expected = F.interpolate(raw[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
        expected = (expected - expected.min()) / (expected.max() - expected.min() + 1e-7)
        direct = HiResCAM(detector, [layer])(image, [target])[0]
        np.testing.assert_allclose(direct, expected.numpy(), atol=1e-5, rtol=0)
        assert float(expected.max()) > 0.99  # a map, not zeros
        np.testing.assert_allclose(kept.cam, direct, atol=1e-6, rtol=0)  # explain_detections' map: the same


def test_mask_targets_need_a_model_with_masks(tiny, tiny_images):
    model = tiny["retinanet"]
    (found,) = as_detector(model)(tiny_images[:1])
    with pytest.raises(ValueError, match="MaskTarget needs candidates with masks"):
        MaskTarget([0, 0, 10, 10], 0)(found)
    with pytest.raises(ValueError, match='explain="mask" needs a model that predicts instance masks'):
        explain_detections(model, tiny_images[:1], explain="mask")
    with pytest.raises(ValueError, match='explain must be "box" or "mask"'):
        explain_detections(model, tiny_images[:1], explain="segment")
    with pytest.raises(ValueError, match="threshold must be in"):
        MaskTarget([0, 0, 10, 10], 0, threshold=1.0)
