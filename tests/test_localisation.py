"""The maps point at the object that the model's decision is about.

Synthetic: a small CNN is trained in the session (a few seconds on one CPU thread)
on 32x32 noise images holding one coloured shape (red square, green disc, blue
plus) at a random position, or nothing (a fourth class, so that every shape class
needs evidence of its own and cannot be "whatever is not the others"), or two
shapes of different classes (labelled half and half, so that each class's score
rests on its own shape and not on "a shape is here"). On held-out images every
method's peak must fall on the object.

The training converges with a margin, not to a threshold it barely clears: a
float summation order that differs between CPUs (SIMD width, BLAS, threads)
changes the trajectory as much as a different seed would, so the recipe was
checked to reach 100 % held-out accuracy from many seeds and under every kernel
dispatch we can select here (ATEN_CPU_CAPABILITY, oneDNN ISA, threads).

Real photo: the packaged, really pretrained EfficientNet-Lite0 on scikit-image's
cat, alone and in a 2x2 mosaic with three other photos.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Tuple

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_reference import single_thread_module  # noqa: F401 - autouse fixture
from method_sets import CNN_METHODS
from torch import nn

from pytorch_grad_cam import METHODS, GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

SIZE = 32
COLOURS = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0]], dtype=np.float32)
EMPTY = 3  # the class of images without a shape
Box = Tuple[int, int, int]  # top, left, side


def shape_mask(category: int, side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    centre = (side - 1) / 2
    if category == 0:
        return np.ones((side, side), bool)
    if category == 1:
        return (yy - centre) ** 2 + (xx - centre) ** 2 <= (side / 2) ** 2
    bar = side // 3
    return (abs(yy - centre) <= bar / 2) | (abs(xx - centre) <= bar / 2)


MASKS = {(c, s): shape_mask(c, s) for c in range(3) for s in range(8, 11)}


def paint(image: np.ndarray, category: int, rng: np.random.Generator, avoid: Box = None) -> Box:
    """Paint a shape of ``category`` at a random position (2 px away from ``avoid``)."""
    while True:
        side = int(rng.integers(8, 11))
        top, left = (int(v) for v in rng.integers(0, SIZE - side + 1, 2))
        if avoid is None:
            break
        a_top, a_left, a_side = avoid
        if (
            top + side + 2 <= a_top
            or a_top + a_side + 2 <= top
            or left + side + 2 <= a_left
            or a_left + a_side + 2 <= left
        ):
            break
    image[:, top : top + side, left : left + side][:, MASKS[category, side]] = COLOURS[category][:, None]
    return top, left, side


def make_images(count: int, seed: int, with_empty: bool) -> Tuple[torch.Tensor, np.ndarray, List[Box]]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.6, (count, 3, SIZE, SIZE)).astype(np.float32)
    labels = rng.integers(0, 4 if with_empty else 3, count)
    boxes = [None if label == EMPTY else paint(image, label, rng) for image, label in zip(images, labels)]
    return torch.from_numpy(images), labels, boxes


class ShapesCNN(nn.Module):
    """Batch norm keeps the optimisation well conditioned: without it some seeds
    stall for hundreds of steps with the plus confused for the empty class."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@contextlib.contextmanager
def reproducible_training() -> Iterator[None]:
    """One thread and deterministic kernels, restored afterwards: the same CPU gives
    the same model run after run (another CPU may not, hence the margins)."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_num_threads(threads)


def training_set(seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """2000 images of one shape or none (one-hot labels) and 1000 of two shapes
    (half of the probability on each), with seeds apart from the held-out ones."""
    single, labels, _ = make_images(2000, seed=seed, with_empty=True)
    targets = F.one_hot(torch.from_numpy(labels), 4).float()
    double, pairs = two_object_images(1000, seed=seed + 7)
    double_targets = torch.zeros(len(pairs), 4)
    for row, ((first, _), (second, _)) in enumerate(pairs):
        double_targets[row, [first, second]] = 0.5
    return torch.cat([single, double]), torch.cat([targets, double_targets])


def train_shapes_model(seed: int = 0, steps: int = 300) -> ShapesCNN:
    """300 Adam steps of 32 images with a cosine learning-rate decay: 100 % on
    held-out images from every seed tried (about 4 s on one idle CPU thread)."""
    images, targets = training_set()
    with reproducible_training():
        torch.manual_seed(seed)
        model = ShapesCNN()
        optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        batches = np.random.default_rng(seed + 1)
        for _ in range(steps):
            index = torch.from_numpy(batches.integers(0, len(images), 32))
            loss = F.cross_entropy(model(images[index]), targets[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def shapes_model() -> ShapesCNN:
    return train_shapes_model()


@pytest.fixture(scope="module")
def held_out() -> Tuple[torch.Tensor, np.ndarray, List[Box]]:
    return make_images(40, seed=100, with_empty=False)


def peak_in_box(cam: np.ndarray, box: Box) -> bool:
    """The map's peak lies on the shape: inside its box grown by one pixel. The
    hooked layer is 16x16, one cell per 2x2 pixels, so a peak on a shape's edge cell
    can land a pixel outside it after the bilinear upsampling. Shapes sharing an
    image are at least 2 px apart, so grown boxes never overlap: a peak on the
    other shape never counts."""
    row, col = np.unravel_index(cam.argmax(), cam.shape)
    top, left, side = box
    return top - 1 <= row <= top + side and left - 1 <= col <= left + side


def compute(method: str, model: nn.Module, images: torch.Tensor, categories) -> np.ndarray:
    extra = {"progress": False} if method in ("scorecam", "ablationcam", "sscam", "iscam") else {}
    cam = METHODS[method](model, [model.features[-1]], **extra)
    return cam(images, targets=[ClassifierOutputTarget(int(c)) for c in categories])


def test_the_trained_model_recognises_the_shapes(shapes_model):
    """100 % of 400 held-out images (all four classes) under every seed and kernel
    dispatch measured; 97 % leaves room for a dozen misses on a CPU not seen yet."""
    images, labels, _ = make_images(400, seed=101, with_empty=True)
    with torch.no_grad():
        predictions = shapes_model(images).argmax(dim=1).numpy()
    assert (predictions == labels).mean() >= 0.97, f"accuracy {(predictions == labels).mean():.1%}"


#: Not expected to put the peak on the object: RandomCAM's random channel weights are
#: the baseline that does not localise; KPCA-CAM's sign rule (the largest-magnitude
#: entry of the kernel component positive, as the reference) does not look at where
#: the activation is strong, so its peak lands on the background in a quarter of
#: these images (75% measured).
NOT_LOCALISING = {"randomcam", "kpcacam"}
#: Not expected to put its single brightest *pixel* on the object: FullGrad is a
#: pixel-level saliency (|input gradient x input| per pixel plus every bias layer's
#: terms, down to the first convolution at full resolution), so on these noise images
#: its argmax is a textured pixel: on the shape in 50 % of the 40 images (80 % after a
#: 2-pixel Gaussian blur). Its mass is on the object, which
#: test_fullgrad_mass_lies_on_the_object checks instead (in-box mean 2.2x the
#: background's at worst, 3.2x median, measured).
PIXEL_SALIENCY = {"fullgrad"}
#: IS-CAM's path scales the masked image up to (N + 1) / 2 = 5.5 times its brightness
#: (the paper's code and torchcam accumulate the steps), where this model's scores
#: saturate: its peak is on the object in 82 % of the images (seed-0 model, measured
#: once; the other methods' rates come from 16 seeds).
LOWER_HIT_RATE = {"iscam": 0.7}


# Hit rates below are measured on models trained from 16 seeds (a different CPU's
# summation order perturbs the training no more than a different seed does) and on
# the seed-0 model under 11 kernel dispatches; the thresholds sit under the worst seed.
@pytest.mark.parametrize("method", sorted(set(CNN_METHODS) - NOT_LOCALISING - PIXEL_SALIENCY))
def test_peak_lies_on_the_object(method, shapes_model, held_out):
    """Every method, 40 held-out images: 100 % for most seeds, 95 % at worst."""
    images, labels, boxes = held_out
    cams = compute(method, shapes_model, images, labels)
    hits = [peak_in_box(cam, box) for cam, box in zip(cams, boxes)]
    least = LOWER_HIT_RATE.get(method, 0.85)
    assert np.mean(hits) >= least, f"{method}: peak on the object in {np.mean(hits):.0%} of {len(hits)} images"
    # The criterion has teeth: the transposed maps (a swapped x/y) mostly miss (at most 33 %).
    transposed = [peak_in_box(cam.T, box) for cam, box in zip(cams, boxes)]
    assert np.mean(transposed) <= 0.5


def test_fullgrad_mass_lies_on_the_object(shapes_model, held_out):
    """FullGrad (see PIXEL_SALIENCY): on every held-out image its mean inside the shape's
    box is well above the mean outside (2.2x at worst measured; a map blind to the
    object gives 1x), and a transposed map's is not."""
    images, labels, boxes = held_out
    cams = compute("fullgrad", shapes_model, images, labels)

    def ratio(cam: np.ndarray, box: Box) -> float:
        top, left, side = box
        inside = np.zeros(cam.shape, bool)
        inside[top : top + side, left : left + side] = True
        return cam[inside].mean() / cam[~inside].mean()

    ratios = [ratio(cam, box) for cam, box in zip(cams, boxes)]
    assert min(ratios) > 1.5, sorted(ratios)[:5]
    assert np.median([ratio(cam.T, box) for cam, box in zip(cams, boxes)]) < 1.5


def two_object_images(count: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.6, (count, 3, SIZE, SIZE)).astype(np.float32)
    pairs = []
    for image in images:
        first, second = (int(c) for c in rng.choice(3, 2, replace=False))
        first_box = paint(image, first, rng)
        pairs.append(((first, first_box), (second, paint(image, second, rng, avoid=first_box))))
    return torch.from_numpy(images), pairs


@pytest.mark.parametrize(
    "method, target_type, required",
    [
        # (worst of 16 seeds, median) of 60 hits; a class-agnostic map scores about 50 %.
        ("gradcam", ClassifierOutputTarget, 0.85),  # (93 %, 100 %)
        ("xgradcam", ClassifierOutputTarget, 0.85),  # (93 %, 100 %)
        ("gradcam++", ClassifierOutputTarget, 0.8),  # (90 %, 100 %)
        ("layercam", ClassifierOutputTarget, 0.8),  # (90 %, 100 %)
        ("scorecam", ClassifierOutputTarget, 0.8),  # (92 %, 100 %)
        ("eigengradcam", ClassifierOutputTarget, 0.7),  # (80 %, 98 %): a principal component, not a class score
        # (s - s_k) / s flips sign where the score s is negative, as a raw logit can be;
        # the softmax probability is always positive, and it does not saturate at 1.0
        # here because the model learnt to split it between two shapes.
        ("ablationcam", ClassifierOutputSoftmaxTarget, 0.85),  # (95 %, 100 %)
    ],
)
def test_map_follows_the_target_class(method, target_type, required, shapes_model):
    """Two shapes of different classes in one image: explaining either class puts the
    peak on that class's shape (a class-agnostic map, such as EigenCAM's, scores 50%)."""
    images, pairs = two_object_images(30, seed=200)
    extra = {"progress": False} if method in ("scorecam", "ablationcam") else {}
    cam = METHODS[method](shapes_model, [shapes_model.features[-1]], **extra)
    hits = []
    for which in (0, 1):
        cams = cam(images, targets=[target_type(pair[which][0]) for pair in pairs])
        hits += [peak_in_box(image_cam, pair[which][1]) for image_cam, pair in zip(cams, pairs)]
    assert np.mean(hits) >= required, f"{method}: peak on the target's shape in {np.mean(hits):.0%}"


def test_eigencam_is_class_agnostic(shapes_model):
    """EigenCAM ignores the target: the same map whichever class is asked for."""
    images, pairs = two_object_images(6, seed=201)
    first = compute("eigencam", shapes_model, images, [pair[0][0] for pair in pairs])
    second = compute("eigencam", shapes_model, images, [pair[1][0] for pair in pairs])
    np.testing.assert_array_equal(first, second)
    gradcam = compute("gradcam", shapes_model, images, [pair[0][0] for pair in pairs])
    gradcam_other = compute("gradcam", shapes_model, images, [pair[1][0] for pair in pairs])
    assert np.abs(gradcam - gradcam_other).max() > 0.5


# ---------------------------------------------------------------- real photos
TIGER_CAT, TABBY, EGYPTIAN_CAT, ESPRESSO, MOTOR_SCOOTER = 282, 281, 285, 967, 670
# In the 224 centre crop of the cat photo the face fills the frame; the box leaves
# out the forehead strip and the right edge, where ear and background show.
CAT_FACE_BOX = (40, 224, 0, 200)  # rows [40, 224), cols [0, 200)


def test_pretrained_model_sees_a_cat_and_gradcam_finds_it(efficientnet_lite0, cat_photo):
    input_tensor, _ = cat_photo
    with torch.no_grad():
        top3 = efficientnet_lite0(input_tensor)[0].topk(3).indices.tolist()
    assert set(top3) == {TIGER_CAT, TABBY, EGYPTIAN_CAT}
    cam = GradCAM(efficientnet_lite0, [efficientnet_lite0._bn1])(input_tensor)[0]
    row, col = np.unravel_index(cam.argmax(), cam.shape)
    top, bottom, left, right = CAT_FACE_BOX
    assert top <= row < bottom and left <= col < right
    # Most of the mass on the face (73% of the frame), and no flat wash over the frame.
    assert cam[top:bottom, left:right].sum() / cam.sum() > 0.85
    assert (cam > 0.5).mean() < 0.35


def square_tile(photo: np.ndarray, side: int = 112) -> np.ndarray:
    height, width = photo.shape[:2]
    crop = min(height, width)
    top, left = (height - crop) // 2, (width - crop) // 2
    return cv2.resize(photo[top : top + crop, left : left + crop], (side, side), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def photo_mosaic() -> torch.Tensor:
    """2x2 mosaic: cat (top left), motorcycle (top right), astronaut, espresso."""
    from skimage import data

    tiles = [
        square_tile(data.chelsea()[:, :380]),  # the cat without the background on the right
        square_tile(data.stereo_motorcycle()[0]),
        square_tile(data.astronaut()),
        square_tile(data.coffee()),
    ]
    mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)])
    return ((torch.from_numpy(mosaic).permute(2, 0, 1).float() - 127.0) / 128.0).unsqueeze(0)


@pytest.mark.parametrize(
    "category, quadrant",
    [(TIGER_CAT, (0, 0)), (MOTOR_SCOOTER, (0, 1)), (ESPRESSO, (1, 1))],
    ids=["cat", "scooter", "espresso"],
)
def test_gradcam_on_a_photo_mosaic_picks_the_asked_class(efficientnet_lite0, photo_mosaic, category, quadrant):
    """Real pretrained features: each class's map lies on its own photo, with most of
    its mass there (chance: a quarter)."""
    cam = GradCAM(efficientnet_lite0, [efficientnet_lite0._bn1])(
        photo_mosaic, targets=[ClassifierOutputTarget(category)]
    )[0]
    row, col = np.unravel_index(cam.argmax(), cam.shape)
    assert (row // 112, col // 112) == quadrant
    tile = cam[quadrant[0] * 112 : (quadrant[0] + 1) * 112, quadrant[1] * 112 : (quadrant[1] + 1) * 112]
    assert tile.sum() / cam.sum() > 0.6
