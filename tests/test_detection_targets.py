"""The detection interface shared by every family: Candidates, box_iou and BoxTarget
(its matching rule, how matches combine, and what an unmatched box gives)."""

from __future__ import annotations

import pytest
import torch
import torchvision

from pytorch_grad_cam.detection import BoxTarget, Candidates, box_iou, cxcywh_to_xyxy
from pytorch_grad_cam.scoring import perturbed, scoring_perturbed


def candidates() -> Candidates:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 9], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([[0.9, 0.1], [0.6, 0.3], [0.2, 0.7], [0.8, 0.1]], requires_grad=True)
    return Candidates(boxes, scores)


def test_box_iou_equals_torchvision():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(20, 2, 2, generator=generator) * 50
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    for box in boxes[:5]:
        torch.testing.assert_close(box_iou(boxes, box), torchvision.ops.box_iou(boxes, box[None])[:, 0])
    assert torch.equal(cxcywh_to_xyxy(torch.tensor([5.0, 6.0, 4.0, 2.0])), torch.tensor([3.0, 5.0, 7.0, 7.0]))


def test_box_target_is_the_mean_confidence_of_the_same_class_overlapping_candidates():
    output = candidates()
    # candidates 0 and 1 overlap (IoU 1 and 0.68) and predict class 0; candidate 2 overlaps
    # but predicts class 1; candidate 3 predicts class 0 far away.
    target = BoxTarget([0, 0, 10, 10], 0)
    assert target.matches(output).tolist() == [True, True, False, False]
    score = target(output)
    assert float(score.detach()) == pytest.approx((0.9 + 0.6) / 2, abs=1e-7)
    (grad,) = torch.autograd.grad(score, output.scores)
    assert torch.equal(grad, torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert float(BoxTarget([0, 0, 10, 10], 1)(output).detach()) == pytest.approx(0.7)


def test_an_unmatched_box_is_an_error_on_the_real_input_and_zero_on_a_perturbed_copy():
    output = candidates()
    target = BoxTarget([30, 0, 40, 10], 0)
    with pytest.raises(ValueError, match=r"no candidate of class 0 overlaps box .*\(best: 0.00\)"):
        target(output)
    assert not scoring_perturbed()
    with perturbed():
        assert scoring_perturbed()
        zero = target(output)
    assert not scoring_perturbed() and float(zero.detach()) == 0.0 and zero.requires_grad


def test_box_target_arguments_are_checked():
    with pytest.raises(ValueError, match="x2 > x1"):
        BoxTarget([10, 0, 5, 10], 0)
    with pytest.raises(ValueError, match="iou_threshold"):
        BoxTarget([0, 0, 10, 10], 0, iou_threshold=0)
    with pytest.raises(IndexError, match="label 5 is outside the model's 2 classes"):
        BoxTarget([0, 0, 10, 10], 5)(candidates())
    with pytest.raises(TypeError, match="as_detector"):
        BoxTarget([0, 0, 10, 10], 0)(torch.zeros(3, 6))
    with pytest.raises(ValueError, match="scores must be"):
        Candidates(torch.zeros(3, 4), torch.zeros(3))


def test_class_specific_boxes_are_matched_with_the_label_s_box():
    boxes = torch.tensor([[[0, 0, 10, 10], [40, 40, 50, 50]]], dtype=torch.float32)  # (1, 2 classes, 4)
    output = Candidates(boxes, torch.tensor([[0.2, 0.8]]))
    assert float(BoxTarget([40, 40, 50, 50], 1)(output).detach()) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        BoxTarget([0, 0, 10, 10], 1)(output)


def test_box_target_with_indices_scores_exactly_those_candidates_on_any_input():
    output = candidates()
    # candidate 2's top class is 1, so matching would leave it out; indices keep it
    target = BoxTarget([0, 0, 10, 10], 0, indices=[0, 2])
    assert target.matches(output).tolist() == [True, False, True, False]
    assert float(target(output).detach()) == pytest.approx((0.9 + 0.2) / 2, abs=1e-7)
    with perturbed():  # not 0 on a perturbed copy: the same candidates' confidence there
        assert float(target(output).detach()) == pytest.approx(0.55, abs=1e-7)
    assert "indices=[0, 2]" in repr(target)
    with pytest.raises(IndexError, match="indices go up to 7 but the model gives 4 candidates"):
        BoxTarget([0, 0, 10, 10], 0, indices=[7])(output)
    with pytest.raises(ValueError, match="indices is empty"):
        BoxTarget([0, 0, 10, 10], 0, indices=[])


def test_detections_keep_no_box_without_width_or_height():
    from pytorch_grad_cam.detection.explain import kept_candidates, select_detections

    boxes = torch.tensor([[24.0, 16, 24, 16], [0, 0, 10, 10], [30, 30, 30.0005, 40]])
    found = Candidates(boxes, torch.tensor([[0.9, 0.0], [0.5, 0.0], [0.8, 0.0]]))
    assert kept_candidates(found, confidence=0.1).tolist() == [1]
    kept_boxes, labels, scores = select_detections(found, confidence=0.1)
    assert kept_boxes.tolist() == [[0, 0, 10, 10]] and labels.tolist() == [0] and scores.tolist() == [0.5]
