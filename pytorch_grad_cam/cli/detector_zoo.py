"""The detectors that ``cam.py --detector NAME`` knows: how to build each one from its
configuration (random weights, which ``--weights`` replaces), its class names, the size
and normalisation of its input.

Nothing here is downloaded, and the library never imports this module: the detector
packages (ultralytics, transformers) are imported only when one of their detectors is
built, so the command line works without them and says which one is missing.

Class names: the COCO-trained families number their classes in one of two ways,
both kept here. ultralytics and RT-DETR use the 80 classes in order (0 = person);
torchvision's detectors and DETR use the 91 indices of the original COCO category ids
(1 = person, 0 = background, ten ids unused: "N/A").
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Optional, Tuple

from torch import nn

__all__ = [
    "COCO_80",
    "COCO_91",
    "DETECTORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DetectorEntry",
    "package_installed",
    "transformers_entry",
]

#: The 80 COCO classes, in the order of ultralytics' and RT-DETR's class indices.
COCO_80: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
#: The COCO category ids that no class has (the 91 indices keep their gaps).
_UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _coco_91() -> Tuple[str, ...]:
    """COCO_91 from COCO_80 and the unused ids: each id 1-90 takes the next class name."""
    names = iter(COCO_80)
    return ("__background__",) + tuple("N/A" if index in _UNUSED_IDS else next(names) for index in range(1, 91))


#: The 91 indices of torchvision's detectors and DETR: 0 the background, "N/A" the unused ids.
COCO_91: Tuple[str, ...] = _coco_91()


@dataclass(frozen=True)
class DetectorEntry:
    """Everything ``cam.py --detector`` needs to explain a photo with one detector.

    Attributes:
        package: the Python package that provides the model (checked before building).
        architecture: builds the model with random weights for inputs whose longer side
            is the given number of pixels (``--weights`` loads into it).
        class_names: the name of each class index, as the model numbers its classes.
        image_size: the default longer side of the model's input, in pixels.
        multiple: both sides of the input are rounded to a multiple of this (the
            largest stride of a model that needs it).
        mean, std: per-channel normalisation of an RGB photo scaled to [0, 1]; None:
            the model takes [0, 1] itself (torchvision's normalise inside the model).
        pretrained_class: for transformers, the model class whose ``from_pretrained``
            reads a ``save_pretrained`` folder given as ``--weights``.
        description: a few words for ``--help``.
    """

    package: str
    architecture: Callable[[int], nn.Module]
    class_names: Tuple[str, ...]
    image_size: int
    multiple: int = 1
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    pretrained_class: Optional[str] = None
    description: str = ""


def package_installed(name: str) -> bool:
    """Whether the Python package ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------- ultralytics
def _ultralytics_model(config: str, image_size: int) -> nn.Module:
    """The ``DetectionModel`` of ``ultralytics.YOLO(config)`` (a model yaml: random
    weights), never the ``YOLO`` object (whose ``train()`` starts a training run)."""
    # Before ultralytics is imported: no network, and its settings file in a temporary
    # folder rather than the user's home or the working directory.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "pytorch_grad_cam-yolo-config"))
    import ultralytics

    return ultralytics.YOLO(config, verbose=False).model


def _yolo_entry(config: str, description: str) -> DetectorEntry:
    return DetectorEntry(
        package="ultralytics",
        architecture=partial(_ultralytics_model, config),
        class_names=COCO_80,
        image_size=640,
        multiple=32,  # the head's largest stride
        description=description,
    )


# ----------------------------------------------------------------- torchvision
def _torchvision_model(name: str, resizes: bool, image_size: int) -> nn.Module:
    """torchvision's ``name`` with random weights (no backbone weights either), its 91
    COCO classes; a model whose transform ``resizes`` is told to keep inputs whose
    longer side is ``image_size`` as they are (min_size = max_size = image_size)."""
    import torchvision

    sizes = {"min_size": image_size, "max_size": image_size} if resizes else {}
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, **sizes)


def _torchvision_entry(name: str, image_size: int, description: str, resizes: bool = True) -> DetectorEntry:
    return DetectorEntry(
        package="torchvision",
        architecture=partial(_torchvision_model, name, resizes),
        class_names=COCO_91,
        image_size=image_size,
        description=description,
    )


# ----------------------------------------------------------------- transformers
def _transformers_model(model_class: str, config_class: str, config: Dict[str, object], image_size: int) -> nn.Module:
    import transformers

    configuration = getattr(transformers, config_class)(**config)
    return getattr(transformers, model_class)(configuration)


def transformers_entry(
    model_class: str,
    config_class: str,
    class_names: Tuple[str, ...],
    image_size: int,
    multiple: int = 1,
    normalise: bool = True,
    description: str = "",
    **config: object,
) -> DetectorEntry:
    """An entry for a transformers ``...ForObjectDetection`` built from its config.

    Args:
        model_class, config_class: class names in ``transformers`` (e.g.
            "DetrForObjectDetection", "DetrConfig").
        class_names: the classes, which also become the config's ``id2label``.
        image_size, multiple, description: as in :class:`DetectorEntry`.
        normalise: whether the model takes ImageNet-normalised pixels (DETR) or [0, 1] (RT-DETR).
        **config: the config's other arguments (a small model for tests, say).

    Returns:
        The entry (nothing is imported until it builds a model).
    """
    labels = {index: name for index, name in enumerate(class_names)}
    return DetectorEntry(
        package="transformers",
        architecture=partial(_transformers_model, model_class, config_class, {"id2label": labels, **config}),
        class_names=class_names,
        image_size=image_size,
        multiple=multiple,
        mean=IMAGENET_MEAN if normalise else None,
        std=IMAGENET_STD if normalise else None,
        pretrained_class=model_class,
        description=description,
    )


#: The detectors of ``cam.py --detector``. Each is the architecture of a COCO-trained
#: model, so ``--weights`` takes that model's trained state dict (torchvision's COCO
#: weights as cached by torch hub, ``YOLO("yolov8n.pt").model.state_dict()``, a
#: transformers model's ``state_dict()``). Mask R-CNN is left out: its mask head runs
#: on every proposal of every copy of the image, which takes minutes on a CPU.
DETECTORS: Dict[str, DetectorEntry] = {
    "yolov8n": _yolo_entry("yolov8n.yaml", "ultralytics YOLOv8n"),
    "yolo11n": _yolo_entry("yolo11n.yaml", "ultralytics YOLO11n"),
    "fasterrcnn": _torchvision_entry("fasterrcnn_resnet50_fpn", 800, "torchvision Faster R-CNN, ResNet-50 FPN"),
    "fasterrcnn_mobilenet": _torchvision_entry(
        "fasterrcnn_mobilenet_v3_large_fpn", 800, "torchvision Faster R-CNN, MobileNetV3-Large FPN"
    ),
    "retinanet": _torchvision_entry("retinanet_resnet50_fpn", 800, "torchvision RetinaNet, ResNet-50 FPN"),
    "fcos": _torchvision_entry("fcos_resnet50_fpn", 800, "torchvision FCOS, ResNet-50 FPN"),
    # SSDlite resizes every input to 320 x 320 itself; its boxes come back in the input's pixels.
    "ssdlite": _torchvision_entry(
        "ssdlite320_mobilenet_v3_large", 320, "torchvision SSDlite 320, MobileNetV3-Large", resizes=False
    ),
    "detr": transformers_entry(
        "DetrForObjectDetection", "DetrConfig", COCO_91, 800, description="transformers DETR, ResNet-50 (timm)"
    ),
    "rtdetr": transformers_entry(
        "RTDetrForObjectDetection",
        "RTDetrConfig",
        COCO_80,
        640,
        multiple=32,
        normalise=False,
        description="transformers RT-DETR, ResNet-50-vd",
    ),
}
