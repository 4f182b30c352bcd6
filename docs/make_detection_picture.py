"""Train a tiny detector on synthetic shapes and draw the README's "Explaining detectors"
picture: one held-out scene with a square and a disc, their two boxes, and each box's map.

No trained detector can be downloaded here, and a detector with random weights explains
nothing, so this script makes one whose right answer is known: a torchvision FCOS with a
tiny backbone and a two-level FPN (strides 4 and 8), trained on CPU on generated 128 x 128
scenes (1-3 filled squares and discs of random sizes and colours, unlabelled triangles as
distractors, on a textured, cluttered background). Its weights (a state dict, about
half a megabyte) are committed as docs/data/tiny_detector.pt, so the picture and
tests/test_detection_picture.py reuse them without training.

    python docs/make_detection_picture.py            # or: make detection-picture (trains only if the weights are missing)
    python docs/make_detection_picture.py --train    # train again, overwrite the weights
    python docs/make_detection_picture.py --compare  # every method's localisation on held-out scenes

Everything is seeded and runs on one CPU thread, so a run repeats bit for bit on one
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork, box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's library, not an installed one
from pytorch_grad_cam import METHODS  # noqa: E402
from pytorch_grad_cam.detection import Detection, draw_detections, explain_detections  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "docs" / "data" / "tiny_detector.pt"
PICTURE = ROOT / "docs" / "detection_two_boxes.jpg"
SIZE = 128
CLASSES = ("square", "disc")
#: Scene seeds: training draws from one generator seeded TRAIN_SEED; held-out scenes are
#: seeded HELD_OUT + i, a range training never sees.
TRAIN_SEED = 0
HELD_OUT = 1_000_000
#: The picture's method: the one whose maps localise best here (see --compare).
METHOD = "hirescam"
#: Training steps (batches of 16 scenes): about 4 minutes of one CPU core.
STEPS = 1200
#: The methods --compare measures.
COMPARED = (
    "gradcam", "hirescam", "gradcamelementwise", "layercam", "eigengradcam", "gradcam++", "xgradcam",
    "eigencam", "scorecam", "ablationcam",
)  # fmt: skip


# --- scenes -------------------------------------------------------------------------------


def _background(rng: np.random.Generator) -> np.ndarray:
    """A textured, cluttered background: a colour gradient, blurred noise blobs, random
    line segments and pixel noise, as (SIZE, SIZE, 3) floats in [0, 1]."""
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    corner_a, corner_b = rng.uniform(0.15, 0.85, (2, 3)).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (np.cos(direction) * (ramp[None, :] - 0.5) + np.sin(direction) * (ramp[:, None] - 0.5)), 0, 1)
    image = corner_a + (corner_b - corner_a) * t[..., None]
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE, 3)).astype(np.float32), (0, 0), 6)
    image += 0.6 * blobs / (np.abs(blobs).max() + 1e-6) * 0.25
    for _ in range(rng.integers(3, 9)):
        start, end = rng.integers(0, SIZE, (2, 2))
        colour = tuple(float(c) for c in rng.uniform(0, 1, 3))
        cv2.line(image, tuple(int(v) for v in start), tuple(int(v) for v in end), colour, int(rng.integers(1, 3)))
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return image


def _place(rng: np.random.Generator, taken: List[np.ndarray], size: int) -> np.ndarray:
    """A free (size x size) box, xyxy, at least 4 pixels from every box in ``taken`` (the
    last try if none is free)."""
    for _ in range(50):
        x, y = rng.integers(2, SIZE - size - 2, 2)
        box = np.array([x, y, x + size, y + size], np.float32)
        if all(box[0] > t[2] + 4 or box[2] < t[0] - 4 or box[1] > t[3] + 4 or box[3] < t[1] - 4 for t in taken):
            return box
    return box


def _colour(rng: np.random.Generator, image: np.ndarray, box: np.ndarray) -> Tuple[float, float, float]:
    """A colour that stands out from the background under ``box`` (distance >= 0.35)."""
    x1, y1, x2, y2 = box.astype(int)
    local = image[y1:y2, x1:x2].reshape(-1, 3).mean(axis=0)
    for _ in range(50):
        colour = rng.uniform(0, 1, 3)
        if np.linalg.norm(colour - local) >= 0.35:
            break
    return tuple(float(c) for c in colour)


def _disc(image: np.ndarray, box: np.ndarray, colour: Tuple[float, float, float]) -> None:
    """Paint the disc inscribed in ``box`` into ``image``, its edge anti-aliased (each
    pixel's coverage from its centre's distance to the circle)."""
    x1, y1, x2, y2 = box.astype(int)
    ys, xs = np.mgrid[y1:y2, x1:x2].astype(np.float32) + 0.5
    distance = np.hypot(xs - (x1 + x2) / 2, ys - (y1 + y2) / 2)
    cover = np.clip((x2 - x1) / 2 - distance + 0.5, 0, 1)[..., None]
    image[y1:y2, x1:x2] = (1 - cover) * image[y1:y2, x1:x2] + cover * np.asarray(colour, np.float32)


def make_scene(rng: np.random.Generator, objects: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: 1-3 objects (squares, label 0; discs, label 1; 16-48 pixels across) and
    0-2 unlabelled triangles, apart from each other, on a cluttered background.

    Args:
        rng: the scene's random generator.
        objects: the labels to draw (empty: 1-3 random ones).

    Returns:
        (image (SIZE, SIZE, 3) float32 RGB in [0, 1], boxes (K, 4) float32 xyxy, labels (K,) int64).
    """
    image = _background(rng)
    labels = list(objects) or [int(v) for v in rng.integers(0, 2, rng.integers(1, 4))]
    boxes: List[np.ndarray] = []
    for label in labels:
        box = _place(rng, boxes, int(rng.integers(16, 49)))
        colour = _colour(rng, image, box)
        x1, y1, x2, y2 = box.astype(int)
        if label == 0:
            cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), colour, cv2.FILLED)
        else:
            _disc(image, box, colour)
        boxes.append(box)
    triangles: List[np.ndarray] = []
    for _ in range(rng.integers(0, 3)):
        box = _place(rng, boxes + triangles, int(rng.integers(16, 41)))
        x1, y1, x2, y2 = box.astype(int)
        apex = int(rng.integers(x1, x2))
        points = np.array([[apex, y1], [x1, y2 - 1], [x2 - 1, y2 - 1]], np.int32)
        cv2.fillPoly(image, [points], _colour(rng, image, box), cv2.LINE_AA)
        triangles.append(box)
    return np.clip(image, 0, 1).astype(np.float32), np.stack(boxes), np.array(labels, np.int64)


def held_out_scene(index: int, objects: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out scene number ``index`` (seeded HELD_OUT + index); see :func:`make_scene`."""
    return make_scene(np.random.default_rng(HELD_OUT + index), objects)


# --- the detector -------------------------------------------------------------------------


class TinyBackbone(nn.Module):
    """Three stride-2 stages (strides 2, 4, 8), then an FPN over strides 4 and 8 with 32
    channels: FCOS's heads run on ``fpn``'s outputs, and the library's default target
    layers for this backbone are ``fpn.layer_blocks`` (the two levels' output convs)."""

    out_channels = 32

    def __init__(self) -> None:
        super().__init__()

        def conv(inputs: int, outputs: int, stride: int) -> List[nn.Module]:
            return [
                nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
            ]

        def stage(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(*conv(inputs, outputs, 2), *conv(outputs, outputs, 1))

        self.stem = nn.Sequential(*conv(3, 16, 2))
        self.stage4 = stage(16, 32)
        self.stage8 = stage(32, 64)
        self.fpn = FeaturePyramidNetwork([32, 64], self.out_channels)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The FPN's two levels, "0" (stride 4) and "1" (stride 8)."""
        c4 = self.stage4(self.stem(images))
        c8 = self.stage8(c4)
        return self.fpn(OrderedDict([("0", c4), ("1", c8)]))


def build_detector() -> FCOS:
    """The tiny FCOS (two classes, square and disc), random weights, in training mode.

    Anchor sizes 4 and 8 (one per level) set FCOS's level ranges: objects whose largest
    centre-to-edge distance is under 32 pixels are learnt at stride 4, larger ones at
    stride 8. The transform keeps 128 x 128 inputs as they are (min_size = max_size = 128).
    """
    anchors = AnchorGenerator(((4,), (8,)), ((1.0,), (1.0,)))
    head = FCOSHead(TinyBackbone.out_channels, 1, len(CLASSES), num_convs=2)
    return FCOS(
        TinyBackbone(),
        num_classes=len(CLASSES),
        min_size=SIZE,
        max_size=SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        anchor_generator=anchors,
        head=head,
        score_thresh=0.2,
        detections_per_img=10,
    )


def load_detector(path: Path = WEIGHTS) -> FCOS:
    """The trained detector from ``path``, in eval mode."""
    model = build_detector()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


# --- training and evaluation --------------------------------------------------------------


def train(steps: int, batch: int = 16, log_every: int = 100) -> Tuple[FCOS, float]:
    """The detector trained for ``steps`` AdamW steps, each on ``batch`` fresh scenes
    (one-cycle schedule: 5% warm-up to 3e-3, then cosine decay).

    Returns:
        (the model in eval mode, the mean loss of the last 100 steps: FCOS's focal
        classification loss + GIoU box loss + centerness BCE, whose floor is the
        centerness targets' entropy, about 0.58, not 0).

    Raises:
        ValueError: if ``steps`` < 40 (the warm-up would be empty).
    """
    if steps < 40:
        raise ValueError(f"steps must be at least 40, got {steps}")
    torch.manual_seed(0)
    rng = np.random.default_rng(TRAIN_SEED)
    model = build_detector().train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=steps, pct_start=0.05)
    recent: List[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        scenes = [make_scene(rng) for _ in range(batch)]
        images = [torch.from_numpy(image).permute(2, 0, 1) for image, _, _ in scenes]
        targets = [{"boxes": torch.from_numpy(box), "labels": torch.from_numpy(label)} for _, box, label in scenes]
        losses = model(images, targets)
        loss = sum(losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [float(loss.detach())])[-100:]
        if (step + 1) % log_every == 0:
            parts = ", ".join(f"{k.replace('bbox_', '')} {float(v.detach()):.3f}" for k, v in losses.items())
            elapsed = time.perf_counter() - started
            print(
                f"step {step + 1}/{steps}: loss {np.mean(recent):.3f} ({parts}), "
                f"{elapsed:.0f} s ({time.process_time() - cpu:.0f} s of CPU)",
                flush=True,
            )
    return model.eval(), float(np.mean(recent))


@torch.no_grad()
def evaluate(model: FCOS, scenes: int = 200, score: float = 0.5) -> Dict[str, float]:
    """Recall and precision over held-out scenes 0..scenes-1, counting the model's own
    detections (its post-processing, NMS included) with score >= ``score``: an object is
    found, and a detection right, when the two overlap at IoU >= 0.5 with the same class.

    Returns:
        {"recall", "precision", "objects" (how many objects the scenes hold)}.
    """
    found = true = reported = 0
    for index in range(scenes):
        image, boxes, labels = held_out_scene(index)
        output = model([torch.from_numpy(image).permute(2, 0, 1)])[0]
        keep = output["scores"] >= score
        predicted, classes = output["boxes"][keep], output["labels"][keep]
        iou = box_iou(torch.from_numpy(boxes), predicted)
        match = (iou >= 0.5) & (torch.from_numpy(labels)[:, None] == classes[None, :])
        found += int(match.any(dim=1).sum())
        true += int(match.any(dim=0).sum())
        reported += len(predicted)
    objects = sum(len(held_out_scene(i)[1]) for i in range(scenes))
    return {"recall": found / objects, "precision": true / max(reported, 1), "objects": objects}


def two_object_scenes(count: int) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first ``count`` held-out scenes drawn with one square and one disc (seeded
    HELD_OUT + 100_000 + i, apart from :func:`evaluate`'s scenes)."""
    return [held_out_scene(100_000 + i, objects=(0, 1)) for i in range(count)]


def box_mass(cam: np.ndarray, box: np.ndarray) -> float:
    """The fraction of ``cam``'s mass inside ``box`` (xyxy, rounded to whole pixels)."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    return float(cam[max(y1, 0) : y2, max(x1, 0) : x2].sum() / max(cam.sum(), 1e-12))


def localisation(model: FCOS, method: str, scenes: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per scene and object (square, disc): [detected (IoU >= 0.5, right class), the map's
    mass inside its own box, inside the other object's box, the box's area fraction,
    the map's peak inside its own box], maps of ``method`` on the detections with score
    >= 0.5 and the default target layers. Undetected objects give NaN mass.

    Returns:
        (len(scenes), 2, 5) float array.
    """
    rows = np.full((len(scenes), 2, 5), np.nan)
    for index, (image, boxes, labels) in enumerate(scenes):
        detections = explain_detections(model, to_tensor(image), method, confidence=0.5)
        matched = match_detections(detections[0], boxes, labels)
        rows[index, :, 0] = [found is not None for found in matched]
        if any(found is None for found in matched):
            continue
        for obj, found in enumerate(matched):
            own, other = found.box, matched[1 - obj].box
            area = (own[2] - own[0]) * (own[3] - own[1]) / SIZE**2
            y, x = np.unravel_index(np.argmax(found.cam), found.cam.shape)
            peak = own[0] <= x + 0.5 <= own[2] and own[1] <= y + 0.5 <= own[3]
            rows[index, obj, 1:] = [box_mass(found.cam, own), box_mass(found.cam, other), area, peak]
    return rows


def match_detections(detections: Sequence[Detection], boxes: np.ndarray, labels: np.ndarray) -> List[object]:
    """For each true object, the best-scoring detection of its class with IoU >= 0.5 (or None)."""
    matched: List[object] = []
    for box, label in zip(boxes, labels):
        hits = [
            d
            for d in detections
            if d.label == label and float(box_iou(torch.from_numpy(box)[None], torch.from_numpy(d.box)[None])) >= 0.5
        ]
        matched.append(max(hits, key=lambda d: d.score) if hits else None)
    return matched


def compare(model: FCOS, methods: Sequence[str], count: int = 20) -> None:
    """Print a Markdown table of each method's localisation on ``count`` two-object
    held-out scenes: the share of a box's map inside its own box and inside the other
    object's box (mean and worst), and how often the map's peak lies in its own box."""
    scenes = two_object_scenes(count)
    area = localisation(model, METHOD, scenes)[..., 3]
    print(f"{count} scenes, boxes covering {np.nanmean(area):.1%} of the image on average")
    print(
        "| method | share in its own box: mean (lowest) | in the other object's box: mean (highest) | peak in its own box | s |"
    )
    print("|---|---:|---:|---:|---:|")
    for method in methods:
        started = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # ScoreCAM's and AblationCAM's progress bars
            rows = localisation(model, method, scenes)
        own, other, peak = (rows[..., k].reshape(-1) for k in (1, 2, 4))
        ok = ~np.isnan(own)
        print(
            f"| {METHODS[method].__name__} | {np.mean(own[ok]):.2f} ({np.min(own[ok]):.2f}) "
            f"| {np.mean(other[ok]):.2f} ({np.max(other[ok]):.2f}) | {int(peak[ok].sum())}/{int(ok.sum())} "
            f"| {time.perf_counter() - started:.1f} |",
            flush=True,
        )


# --- the picture -------------------------------------------------------------------------

SCALE = 3  # the picture's panels are the 128 x 128 scene enlarged 3 times
TITLE = 24


def picture_scene(model: FCOS, method: str = METHOD) -> Tuple[int, np.ndarray, List[Detection]]:
    """The picture's scene: the first of :func:`two_object_scenes` in which both objects
    are detected (score >= 0.5, IoU >= 0.5, right class).

    Returns:
        (its index, its image, [the square's detection, the disc's detection]).

    Raises:
        RuntimeError: if none of the first 50 qualifies (the weights are not the trained ones).
    """
    for index, (image, boxes, labels) in enumerate(two_object_scenes(50)):
        detections = explain_detections(model, to_tensor(image), method, confidence=0.5)[0]
        matched = match_detections(detections, boxes, labels)
        if all(found is not None for found in matched):
            return index, image, matched
    raise RuntimeError(f"no two-object scene with both objects detected; retrain: python {Path(__file__).name} --train")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) from an (H, W, 3) RGB image in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` under a white strip with ``title``."""
    strip = np.full((TITLE, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (4, TITLE - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def _enlarged(detection: Detection) -> Detection:
    """``detection`` in the enlarged panel's pixels (box scaled, map resized bilinearly)."""
    cam = cv2.resize(detection.cam, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_LINEAR)
    return Detection(detection.box * SCALE, detection.label, detection.score, np.clip(cam, 0, 1))


def draw_picture(image: np.ndarray, detections: Sequence[Detection], method: str = METHOD) -> np.ndarray:
    """Three panels, RGB uint8: the detections drawn with their maps inside their boxes,
    then each detection's whole map over the image, its box outlined."""
    large = np.clip(cv2.resize(image, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_CUBIC), 0, 1)
    enlarged = [_enlarged(d) for d in detections]
    panels = [
        _titled(draw_detections(large, enlarged, CLASSES), f"detections, {METHODS[method].__name__} map in each box")
    ]
    for detection in enlarged:
        overlay = show_cam_on_image(large, detection.cam, use_rgb=True)
        x1, y1, x2, y2 = (int(round(float(v))) for v in detection.box)
        cv2.rectangle(overlay, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 2)
        panels.append(_titled(overlay, f"map of the {CLASSES[detection.label]} ({detection.score:.2f})"))
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    return np.hstack([panels[0], gap, panels[1], gap, panels[2]])


def make_picture(model: FCOS, path: Path = PICTURE) -> np.ndarray:
    """Draw the picture of :func:`picture_scene` and write it to ``path`` (JPEG, quality 90).

    Returns:
        The picture, RGB uint8, as drawn (before JPEG compression).
    """
    index, image, detections = picture_scene(model)
    picture = draw_picture(image, detections)
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    boxes = "; ".join(f"{CLASSES[d.label]} {d.score:.2f} {np.round(d.box).astype(int).tolist()}" for d in detections)
    print(f"wrote {path.relative_to(ROOT)}: two-object scene {index} ({boxes})")
    return picture


def main() -> None:
    """Train if asked or if the weights are missing, then print the held-out recall and
    precision and write the picture (or, with --compare, print the methods' localisation)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="train again and overwrite the weights")
    parser.add_argument("--steps", type=int, default=STEPS, help="training steps (batches of 16 scenes)")
    parser.add_argument("--compare", action="store_true", help="print every method's localisation, then stop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.train or not WEIGHTS.exists():
        started, cpu = time.perf_counter(), time.process_time()
        model, loss = train(args.steps)
        print(
            f"trained {args.steps} steps in {time.perf_counter() - started:.0f} s "
            f"({time.process_time() - cpu:.0f} s of CPU); final loss {loss:.3f}"
        )
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), WEIGHTS)
    model = load_detector()
    if args.compare:
        compare(model, COMPARED)
        return
    scores = evaluate(model)
    print(
        f"held-out scenes: recall {scores['recall']:.3f}, precision {scores['precision']:.3f} ({scores['objects']} objects)"
    )
    make_picture(model)


if __name__ == "__main__":
    main()
