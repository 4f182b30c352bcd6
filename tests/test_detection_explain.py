"""explain_detections and draw_detections on a random-weight YOLOv8n: the kept boxes
against a hand-written NMS, each box's map against a direct call with its BoxTarget,
the model left as found, and the drawing."""

from __future__ import annotations

import copy
import os
import tempfile

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou as tv_box_iou

# ultralytics writes its settings JSON into its config directory on import: keep it out
# of the user's home and the repository, and never let it reach the network.
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

from cam_reference import single_thread_module  # noqa: E402, F401 (one CPU thread: small models)
from test_detection_yolo import assert_same_state, build, image, state  # noqa: E402

from pytorch_grad_cam import GradCAM, HiResCAM  # noqa: E402
from pytorch_grad_cam.detection import BoxTarget, Detection, as_detector, draw_detections, explain_detections  # noqa: E402
from pytorch_grad_cam.detection.explain import detection_targets, select_detections  # noqa: E402

pytest.importorskip("ultralytics", reason="ultralytics is an optional test extra (make test installs it)")

CONFIDENCE, IOU, MOST = 0.9, 0.45, 5


@pytest.fixture(scope="module")
def yolo() -> nn.Module:
    return build("yolov8n.yaml")


def hand_nms(scores: torch.Tensor, boxes: torch.Tensor) -> list:
    """Greedy class-wise NMS, written out: (box, label, score) best first."""
    best, labels = scores.max(dim=1)
    order = [int(i) for i in torch.argsort(best, descending=True, stable=True) if best[i] >= CONFIDENCE]
    kept = []
    for index in order:
        overlaps = [
            float(tv_box_iou(boxes[index][None], boxes[other][None])) > IOU
            for other in kept
            if labels[other] == labels[index]
        ]
        if not any(overlaps):
            kept.append(index)
    return [(boxes[i], int(labels[i]), float(best[i])) for i in kept[:MOST]]


@pytest.fixture(scope="module")
def yolo64(yolo) -> nn.Module:
    """The DetectionModel in float64: the batched call (the image repeated once per box)
    and a one-image call then round differently only at ~1e-16; in float32 the
    convolutions' batch-size-dependent rounding moves the maps by 1.1e-5 to 2.4e-5 (measured)."""
    return copy.deepcopy(yolo.model).double()


def test_detections_are_the_nms_result_and_maps_equal_direct_calls(yolo64):
    images = image(160, seed=5, batch=2).double()
    results = explain_detections(yolo64, images, confidence=CONFIDENCE, iou_threshold=IOU, max_detections=MOST)
    detector = as_detector(yolo64)
    with torch.no_grad():
        found = detector(images)
    assert len(results) == 2
    errors = []
    for index, (detections, candidates) in enumerate(zip(results, found)):
        expected = hand_nms(candidates.scores, candidates.boxes)
        assert 2 <= len(detections) == len(expected)
        for detection, (box, label, score) in zip(detections, expected):
            assert isinstance(detection, Detection)
            assert np.array_equal(detection.box, box.float().numpy()) and detection.label == label
            assert detection.score == np.float32(score)
            assert detection.cam.shape == (160, 160) and detection.cam.dtype == np.float32
            with GradCAM(detector, detector.default_target_layers()) as cam:
                direct = cam(images[index : index + 1], [BoxTarget(box, label)])[0]
            errors.append(float(np.abs(detection.cam - direct).max()))
            assert detection.cam.max() > 0.5
    print(f"batched per-box maps vs direct calls: max abs error {max(errors):.2e} over {len(errors)} boxes")
    assert max(errors) <= 1e-5


def test_targets_carry_the_candidates_matched_on_the_detection_pass(yolo64):
    """So that the map pass scores exactly those, whatever float rounding does to near-tied
    classes in another pass."""
    images = image(160, seed=5)
    with torch.no_grad():
        (candidates,) = as_detector(yolo64)(images.double())
    boxes, labels, _ = select_detections(candidates, CONFIDENCE, IOU, MOST)
    targets = detection_targets(candidates, boxes, labels)
    assert len(targets) == len(boxes) >= 2
    for target, box, label in zip(targets, boxes, labels.tolist()):
        iou = tv_box_iou(candidates.boxes, box[None].to(candidates.boxes.dtype))[:, 0]
        hand = ((iou >= 0.5) & (candidates.scores.argmax(dim=1) == label)).nonzero().flatten()
        assert target.label == label and torch.equal(target.indices, hand) and len(hand) >= 1


def test_method_by_class_with_target_layers(yolo64):
    images = image(160, seed=5).double()
    layer = yolo64.model[15]
    (detections,) = explain_detections(
        yolo64, images, method=HiResCAM, target_layers=[layer], confidence=CONFIDENCE, max_detections=2
    )
    assert len(detections) == 2
    for detection in detections:
        with HiResCAM(as_detector(yolo64), [layer]) as cam:
            direct = cam(images, [BoxTarget(detection.box, detection.label)])[0]
        np.testing.assert_allclose(detection.cam, direct, rtol=0, atol=1e-5)


def test_model_left_as_found_and_nothing_kept_gives_empty_lists(yolo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = state(yolo.model)
    assert explain_detections(yolo, image(160, batch=2), confidence=1.01) == [[], []]
    results = explain_detections(yolo, image(160), method="hirescam", confidence=CONFIDENCE, max_detections=1)
    assert len(results[0]) == 1
    assert_same_state(before, state(yolo.model))
    assert os.listdir(tmp_path) == []


def test_bad_arguments_raise(yolo):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        explain_detections(yolo, image(64), method="nope")
    with pytest.raises(TypeError, match="images must be a"):
        explain_detections(yolo, np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(TypeError, match="no detector family recognises Linear"):
        explain_detections(nn.Linear(2, 2), image(64))


def test_draw_detections_blends_each_map_inside_its_box():
    rng = np.random.default_rng(0)
    picture = rng.random((64, 80, 3))
    cam = np.zeros((64, 80), np.float32)
    cam[20:30, 30:40] = 1.0
    detection = Detection(box=np.array([10.0, 12.0, 50.0, 40.0], np.float32), label=3, score=0.87, cam=cam)
    drawn = draw_detections(picture, [detection], class_names=[f"c{i}" for i in range(5)])
    plain = np.round(picture * 255).astype(np.uint8)
    assert drawn.shape == (64, 80, 3) and drawn.dtype == np.uint8
    outside = np.ones((64, 80), bool)
    outside[12:40, 10:50] = False
    assert np.array_equal(drawn[outside], plain[outside])
    assert tuple(drawn[39, 30]) == (255, 255, 0)  # the box's bottom edge
    # inside, away from the caption: half the image, half the map's colour (JET: 0 -> dark blue, 1 -> dark red)
    assert np.array_equal(drawn[35, 45], np.round(0.5 * plain[35, 45] + 0.5 * np.array([0, 0, 128])).astype(np.uint8))
    assert np.array_equal(drawn[25, 35], np.round(0.5 * plain[25, 35] + 0.5 * np.array([128, 0, 0])).astype(np.uint8))
    with pytest.raises(ValueError, match="RGB floats in"):
        draw_detections(plain, [detection])
