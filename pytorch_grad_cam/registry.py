"""The one registry of CAM methods by command-line name, shared by cam.py, the
examples, the benchmark and the tests. Adding a method: one file, one line here."""
from typing import Dict, Type

from pytorch_grad_cam.ablation_cam import AblationCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.eigen_cam import EigenCAM
from pytorch_grad_cam.eigen_grad_cam import EigenGradCAM
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.layer_cam import LayerCAM
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.xgrad_cam import XGradCAM

METHODS: Dict[str, Type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "scorecam": ScoreCAM,
    "xgradcam": XGradCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "layercam": LayerCAM,
}


def get_method(name: str) -> Type[BaseCAM]:
    """The CAM class registered as ``name`` (case-insensitive).

    Raises:
        ValueError: naming the known methods, if ``name`` is not one of them.
    """
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
