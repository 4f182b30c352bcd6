"""The YOLO family (ultralytics YOLOv8 / YOLO11 heads, YOLOv5-style outputs) as per-box
maps: candidates against a hand decoding of the raw head, BoxTarget's score, maps
against autograd references, the model left as found, every method, and locality."""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou as tv_box_iou

# ultralytics writes its settings JSON into its config directory on import: keep it out
# of the user's home and the repository, and never let it reach the network.
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")

from cam_reference import single_thread_module  # noqa: E402, F401 (one CPU thread: small models)
from method_sets import CNN_METHODS

from pytorch_grad_cam import METHODS, GradCAM, GradCAMElementWise, HiResCAM, LayerCAM  # noqa: E402
from pytorch_grad_cam.detection import BoxTarget, Candidates, as_detector  # noqa: E402
from pytorch_grad_cam.detection.yolo import YOLODetector, YOLOv5Detector, yolov5_candidates  # noqa: E402

ultralytics = pytest.importorskip("ultralytics", reason="ultralytics is an optional test extra (make test installs it)")

EPS = 1e-7  # min_max_scale's epsilon


def build(config: str, seed: int = 0) -> nn.Module:
    """An ultralytics YOLO object with random weights, made to behave like a trained one
    in eval mode: PyTorch's default initialisation shrinks activations layer by layer
    (the head would see ~1e-9 and every confidence would be 0.5), so batch norm's running
    statistics are set from one training-mode pass on random images; and the class
    logits are brought to a trained model's range (bias_init's bias, confidences ~1e-4,
    zeroed; the weights scaled by 0.1, else nearly every confidence is above 0.98). The model is left in training mode, as
    ultralytics builds it."""
    torch.manual_seed(seed)
    yolo = ultralytics.YOLO(config, verbose=False)
    norms = [module for module in yolo.model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: exactly this pass's statistics
    with torch.no_grad():
        yolo.model(torch.rand(4, 3, 128, 128))
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.zero_()
            branch[-1].weight.mul_(0.1)
    for norm in norms:
        norm.momentum = 0.03
    return yolo


@pytest.fixture(scope="module")
def yolo() -> nn.Module:
    return build("yolov8n.yaml")


def image(size: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator)


def best_candidate(candidates: Candidates, level_slice: slice = slice(None)) -> tuple:
    """(index, box, label) of the most confident candidate within ``level_slice``."""
    scores = candidates.scores.detach()[level_slice]
    index = int(scores.max(dim=1).values.argmax()) + (level_slice.start or 0)
    return index, candidates.boxes[index].detach(), int(candidates.scores[index].argmax())


def raw_output(model: nn.Module, images: torch.Tensor) -> tuple:
    """The eval output of an eval-mode copy (the fixture's model is not touched)."""
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        return reference(images)


def hand_decode(raw: dict, strides: list) -> tuple:
    """Boxes (B, N, 4) xyxy and scores (B, N, C) from the head's raw outputs: the DFL
    expectation of each side's distance (reg_max bins), anchors at cell centres."""
    logits, distributions = raw["scores"], raw["boxes"]
    batch, _, count = distributions.shape
    if distributions.shape[1] == 4:  # reg_max 1 (YOLO26): the distances themselves
        distance = distributions
    else:
        bins = distributions.view(batch, 4, -1, count).softmax(dim=2)
        distance = (bins * torch.arange(bins.shape[2], dtype=bins.dtype)[:, None]).sum(dim=2)  # (B, 4, N) ltrb
    centres, scale = [], []
    for feature, stride in zip(raw["feats"], strides):
        height, width = feature.shape[2:]
        ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
        centres.append(torch.stack([xs.flatten(), ys.flatten()], dim=1))
        scale.append(torch.full((height * width,), float(stride)))
    centres, scale = torch.cat(centres), torch.cat(scale)[:, None]
    left_top = (centres - distance[:, :2].transpose(1, 2)) * scale
    right_bottom = (centres + distance[:, 2:].transpose(1, 2)) * scale
    return torch.cat([left_top, right_bottom], dim=2), logits.sigmoid().transpose(1, 2)


def state(model: nn.Module) -> dict:
    return {
        "modes": [module.training for module in model.modules()],
        "tensors": {name: value.clone() for name, value in model.state_dict().items()},
        "fused": model.is_fused(),
        "hooks": sum(
            len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
        ),
        "head": {name: model.model[-1].__dict__.get(name) for name in ("anchors", "strides", "shape")},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert after["modes"] == before["modes"]
    assert after["fused"] == before["fused"]
    assert after["hooks"] == before["hooks"] == 0
    assert after["tensors"].keys() == before["tensors"].keys()
    for name, value in before["tensors"].items():
        assert torch.equal(after["tensors"][name], value), name
    for name, value in before["head"].items():
        other = after["head"][name]
        assert (other is value) or (torch.is_tensor(value) and torch.equal(other, value)), name


# ---------------------------------------------------------------- recognition and decoding
def test_adapter_unwraps_the_yolo_object_to_its_detection_model(yolo):
    detector = as_detector(yolo)
    assert type(detector) is YOLODetector and detector.model is yolo.model
    assert as_detector(yolo.model).model is yolo.model
    assert as_detector(detector) is detector
    assert yolo.model.model[-1].f == [15, 18, 21]
    assert detector.default_target_layers() == [yolo.model.model[i] for i in (15, 18, 21)]


def test_rotated_box_heads_are_not_taken_for_detect_heads():
    torch.manual_seed(0)
    with pytest.raises(TypeError, match="not OBB"):
        as_detector(ultralytics.YOLO("yolov8n-obb.yaml", verbose=False))


def test_candidates_equal_a_hand_decoding_of_the_raw_head(yolo):
    images = image(160, batch=2)
    decoded, raw = raw_output(yolo.model, images)
    with torch.no_grad():
        candidates = as_detector(yolo)(images)
    boxes, scores = hand_decode(raw, [8, 16, 32])
    assert len(candidates) == 2 and candidates[0].boxes.shape == (525, 4) and candidates[0].scores.shape == (525, 80)
    for index, found in enumerate(candidates):
        # the eval output itself, converted: exact
        centre, size = decoded[index, :2].T, decoded[index, 2:4].T
        assert torch.equal(found.boxes, torch.cat([centre - size / 2, centre + size / 2], dim=1))
        assert torch.equal(found.scores, decoded[index, 4:].T)
        # the raw head decoded by hand (measured: scores 0 difference, boxes 6.1e-5 px: one float32 step at 512-1024)
        assert torch.equal(found.scores, scores[index])
        torch.testing.assert_close(found.boxes, boxes[index], rtol=0, atol=1e-4)


def test_yolo11_is_recognised_and_decoded():
    yolo11 = build("yolo11n.yaml")
    images = image(160)
    decoded, raw = raw_output(yolo11.model, images)
    with torch.no_grad():
        found = as_detector(yolo11)(images)[0]
    boxes, scores = hand_decode(raw, [8, 16, 32])
    assert torch.equal(found.scores, scores[0])
    torch.testing.assert_close(found.boxes, boxes[0], rtol=0, atol=1e-4)
    assert as_detector(yolo11).default_target_layers() == [yolo11.model.model[i] for i in (16, 19, 22)]


def test_end_to_end_heads_give_every_one_to_one_candidate():
    yolo26 = build("yolo26n.yaml")
    yolo26.model.model[-1].end2end = True  # NMS-free inference: the first output is top-k selected
    images = image(160)
    selected, raw = raw_output(yolo26.model, images)
    with torch.no_grad():
        found = as_detector(yolo26)(images)[0]
    assert selected.shape == (1, 300, 6) and found.scores.shape == (525, 80)
    boxes, scores = hand_decode(raw["one2one"], [8, 16, 32])
    assert torch.equal(found.scores, scores[0])
    torch.testing.assert_close(found.boxes, boxes[0], rtol=0, atol=1e-4)


def test_a_box_score_differentiates_the_class_branch_only(yolo):
    """Scores come from the head's class logits, not from the prediction where they sit
    after the decoded boxes: a box's gradient never runs back through the box branch."""
    head = yolo.model.model[-1]
    captured = {"box": [], "class": []}
    handles = [
        level[0].register_forward_hook(lambda module, inputs, output, name=name: captured[name].append(output))
        for name, branches in (("box", head.cv2), ("class", head.cv3))
        for level in branches
    ]
    try:
        found = as_detector(yolo)(image(160).requires_grad_(True))[0]
    finally:
        for handle in handles:
            handle.remove()
    _, box, label = best_candidate(found)
    grads = torch.autograd.grad(BoxTarget(box, label)(found), captured["box"] + captured["class"], allow_unused=True)
    assert all(grad is None for grad in grads[:3])  # the box branch, every level
    assert sum(float(grad.abs().sum()) for grad in grads[3:] if grad is not None) > 0


def test_inside_explain_targets_a_box_skips_the_levels_it_does_not_read(yolo):
    """With sparse_backward on (as explain_targets runs), the candidates' scores are the
    same numbers, joined level by level, and a box's backward pass skips the class branches
    of the levels none of its candidates is on."""
    from pytorch_grad_cam import sparse_backward

    head = yolo.model.model[-1]
    levels = []
    handles = [branch.register_forward_hook(lambda m, i, out: levels.append(out)) for branch in head.cv3]
    try:
        with torch.no_grad():
            (plain,) = as_detector(yolo)(image(160))
        with sparse_backward.skipping_zero_parts():
            (found,) = as_detector(yolo)(image(160).requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(found.scores.detach(), plain.scores)
    sizes = [level.shape[2] * level.shape[3] for level in levels[-3:]]  # 400, 100, 25 at 160 px
    best = int(found.scores.detach()[sizes[0] :].max(dim=1).values.argmax()) + sizes[0]  # a level 1-2 candidate
    label = int(found.scores.detach()[best].argmax())
    target = BoxTarget(found.boxes[best].detach(), label, indices=[best])
    grads = torch.autograd.grad(target(found), levels[-3:], allow_unused=True)
    assert grads[0] is None  # level 0's class branch: skipped
    assert sum(float(grad.abs().sum()) for grad in grads[1:] if grad is not None) > 0


def test_box_target_scores_the_hand_matched_candidates_mean(yolo):
    images = image(160)
    found = as_detector(yolo)(images)[0]
    _, box, label = best_candidate(found)
    iou = tv_box_iou(found.boxes.detach(), box[None])[:, 0]
    matched = (iou >= 0.5) & (found.scores.detach().argmax(dim=1) == label)
    assert int(matched.sum()) > 1  # several candidates combine
    expected = found.scores[matched, label].mean()
    assert BoxTarget(box, label)(found).item() == expected.item()


# ---------------------------------------------------------------- maps against autograd
def reference_map(detector: nn.Module, layer: nn.Module, images: torch.Tensor, target: BoxTarget, kind: str):
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        found = detector(images)[0]
    finally:
        handle.remove()
    activations = captured["a"]
    (grads,) = torch.autograd.grad(target(found), activations)
    if kind == "gradcam":
        raw = (grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)
    else:
        raw = (grads * activations).sum(dim=1)
    resized = F.interpolate(min_max(torch.relu(raw.detach()))[:, None], size=images.shape[2:], mode="bilinear")
    return min_max(resized[:, 0]).numpy()  # the layers' mean (here one layer) is min-max scaled again


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per map: (x - min) / (max + 1e-7)."""
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return maps / (maps.amax(dim=(1, 2), keepdim=True) + EPS)


@pytest.mark.parametrize("method, kind", [(GradCAM, "gradcam"), (HiResCAM, "hirescam")])
def test_map_equals_an_autograd_reference(yolo, method, kind):
    detector = as_detector(yolo)
    images = image(160)
    with torch.no_grad():
        _, box, label = best_candidate(detector(images)[0])
    target = BoxTarget(box, label)
    for layer in detector.default_target_layers():
        expected = reference_map(detector, layer, images, target, kind)
        with method(detector, [layer]) as cam:
            maps = cam(images, [target])
        assert maps.shape == (1, 160, 160) and maps.dtype == np.float32 and maps.max() > 0.5
        np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the model as found
def test_model_mode_weights_fused_state_and_files_unchanged(yolo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = yolo.model
    model.model[4].eval()  # a mixed mode, so that restoring each module's own flag is checked
    try:
        before = state(model)
        assert before["modes"][0] is True and not before["fused"]
        detector = as_detector(yolo)
        images = image(160)
        with torch.no_grad():
            _, box, label = best_candidate(detector(images)[0])
        with GradCAM(detector, detector.default_target_layers()) as cam:
            maps = cam(images, [BoxTarget(box, label)])
        assert np.isfinite(maps).all() and maps.max() > 0.5
        assert_same_state(before, state(model))
        assert sorted(os.listdir(tmp_path)) == []
    finally:
        model.model[4].train()


def test_an_unmatched_box_raises(yolo):
    detector = as_detector(yolo)
    with GradCAM(detector, detector.default_target_layers()) as cam:
        with pytest.raises(ValueError, match="no candidate of class 3"):
            cam(image(160), [BoxTarget([0.0, 0.0, 1.0, 1.0], 3)])


# AblationCAM and ScoreCAM score BoxTarget on perturbed outputs too (a channel ablated,
# the image masked), where the box may vanish: it scores 0 there (scoring.perturbed).
@pytest.mark.parametrize("name", sorted(CNN_METHODS))
def test_every_method_gives_a_finite_map(yolo, name, few_mask_repeats):
    detector = as_detector(yolo)
    size = 64
    images = image(size, batch=2)
    with torch.no_grad():
        found = detector(images)
    targets = [BoxTarget(*best_candidate(per_image)[1:]) for per_image in found]
    if name == "cam":  # the classifier's row of a class: a box names no class of a classifier
        with pytest.raises(TypeError, match="each target must name a class"):
            METHODS[name](detector, detector.default_target_layers())(images, targets)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AblationCAM's fallback to whole-model runs when fx cannot trace
        with METHODS[name](detector, detector.default_target_layers()) as cam:
            maps = cam(images, targets)
    assert maps.shape == (2, size, size) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1


# ---------------------------------------------------------------- locality
SIZE, STRIDE = 320, 8  # level 0 (stride 8): a 40 x 40 grid
GRID = SIZE // STRIDE
REACH = 2  # each head branch has two 3x3 convolutions: a cell sees 2 cells around it
CELLS = [(8, 9), (30, 28)]  # (row, column), far apart


def level0_target(found: Candidates, cell: tuple) -> BoxTarget:
    """The target of exactly the level-0 candidate at ``cell``."""
    index = cell[0] * GRID + cell[1]
    # IoU >= 0.999: its own box (a batched forward moves it by float rounding), no other
    target = BoxTarget(found.boxes[index].detach(), int(found.scores[index].argmax()), iou_threshold=0.999)
    assert int(target.matches(found).sum()) == 1 and bool(target.matches(found)[index])
    return target


def distance(position: tuple, cell: tuple) -> int:
    return max(abs(int(position[0]) - cell[0]), abs(int(position[1]) - cell[1]))


def hand_level_map(detector: nn.Module, layer: nn.Module, images: torch.Tensor, target: BoxTarget, method: type):
    """The raw map at the level, before resizing: ReLU of the channel sum of gradient x
    activation (HiResCAM) or ReLU(gradient) x activation (LayerCAM); the channel sum of
    ReLU(gradient x activation) (GradCAMElementWise)."""
    captured = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        found = detector(images)[0]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(target(found), captured["a"])
    if method is GradCAMElementWise:
        return torch.relu(grads * captured["a"]).sum(dim=1)[0].detach().numpy()
    weights = torch.relu(grads) if method is LayerCAM else grads
    return torch.relu((weights * captured["a"]).sum(dim=1))[0].detach().numpy()


@pytest.mark.parametrize("method", [HiResCAM, LayerCAM, GradCAMElementWise])
def test_per_box_maps_are_local_at_their_own_level(yolo, method):
    detector = as_detector(yolo)
    layer = detector.default_target_layers()[0]
    images = image(SIZE, seed=3)
    found = detector(images)[0]
    targets = [level0_target(found, cell) for cell in CELLS]
    with method(detector, [layer]) as cam:
        maps = cam(images.expand(2, -1, -1, -1), targets)
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    peaks = []
    for cell, other, target, heat in zip(CELLS, CELLS[::-1], targets, maps):
        level = hand_level_map(detector, layer, images, target, method)
        grid_rows, grid_cols = np.nonzero(level)
        assert len(grid_rows) > 0
        assert max(distance(position, cell) for position in zip(grid_rows, grid_cols)) <= REACH
        peak = np.unravel_index(level.argmax(), level.shape)
        assert distance(peak, cell) <= REACH and distance(peak, other) > 10
        # The library's map at input size: bilinear upsampling reaches one more cell.
        cell_distance = np.maximum(np.abs(rows / STRIDE - cell[0] - 0.5), np.abs(cols / STRIDE - cell[1] - 0.5))
        assert heat[cell_distance > REACH + 1.5].max() == 0
        assert heat.max() > 0.99
        pixel_peak = np.unravel_index(heat.argmax(), heat.shape)
        assert distance((pixel_peak[0] // STRIDE, pixel_peak[1] // STRIDE), cell) <= REACH
        peaks.append((distance(peak, cell), distance((pixel_peak[0] // STRIDE, pixel_peak[1] // STRIDE), cell)))
    print(f"{method.__name__}: peak distances (level map, library map at input size) in cells: {peaks}")


# ---------------------------------------------------------------- YOLOv5-style outputs
class TinyV5Head(nn.Module):
    """A YOLOv5-style head on one stride-8 level, one anchor per cell: (B, N, 5 + nc)."""

    def __init__(self, channels: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.nc, self.na, self.no, self.f = classes, 1, classes + 5, [1]
        self.stride = torch.tensor([8.0])
        self.conv = nn.Conv2d(channels, self.no, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple:
        raw = self.conv(x)
        batch, _, height, width = raw.shape
        p = raw.sigmoid().flatten(2).transpose(1, 2)  # (B, N, no)
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=1).to(p)
        centre = (grid + p[..., :2] * 2 - 0.5) * 8
        size = (p[..., 2:4] * 2) ** 2 * 16
        return torch.cat([centre, size, p[..., 4:]], dim=2), raw


class TinyV5(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()),
            TinyV5Head(),
        )

    def forward(self, x: torch.Tensor) -> tuple:
        return self.model[2](self.model[1](self.model[0](x)))


@pytest.fixture(scope="module")
def tiny_v5() -> TinyV5:
    torch.manual_seed(0)
    return TinyV5()


def test_yolov5_candidates_multiply_objectness_and_class(tiny_v5):
    images = image(64, batch=2)
    detector = as_detector(tiny_v5)
    assert type(detector) is YOLOv5Detector and detector.default_target_layers() == [tiny_v5.model[1]]
    with torch.no_grad():
        prediction, _ = tiny_v5(images)
        found = detector(images)
    assert len(found) == 2 and found[0].scores.shape == (64, 3)
    for index, candidates in enumerate(found):
        cx, cy, w, h = prediction[index, :, :4].unbind(dim=1)
        assert torch.equal(candidates.boxes, torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1))
        assert torch.equal(candidates.scores, prediction[index, :, 5:] * prediction[index, :, 4:5])
    assert all(torch.equal(a.scores, b.scores) for a, b in zip(yolov5_candidates(prediction), found))
    with pytest.raises(ValueError, match="5 \\+ classes"):
        yolov5_candidates(torch.zeros(1, 10, 5))


def test_yolov5_map_equals_an_autograd_reference(tiny_v5):
    detector = as_detector(tiny_v5)
    images = image(64)
    found = detector(images)[0]
    _, box, label = best_candidate(found)
    target = BoxTarget(box, label)
    matched = (tv_box_iou(found.boxes.detach(), box[None])[:, 0] >= 0.5) & (found.scores.argmax(dim=1) == label)
    assert target(found).item() == found.scores[matched, label].mean().item()
    expected = reference_map(detector, tiny_v5.model[1], images, target, "gradcam")
    with GradCAM(detector, detector.default_target_layers()) as cam:
        maps = cam(images, [target])
    assert maps.max() > 0.5
    np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-5)
    assert tiny_v5.training  # left in the mode it was built in
