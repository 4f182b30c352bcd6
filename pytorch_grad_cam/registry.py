"""The one registry of CAM methods by command-line name, shared by cam.py, the
examples, the benchmark and the tests. Adding a method: one file, one line here."""

from typing import Dict, Type, Union

from pytorch_grad_cam.ablation_cam import AblationCAM
from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.class_activation_map import CAM
from pytorch_grad_cam.eigen_cam import EigenCAM
from pytorch_grad_cam.eigen_grad_cam import EigenGradCAM
from pytorch_grad_cam.fem import FEM

# drop-in methods of grad-cam 1.5.x
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.full_grad import FullGrad
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.grad_cam_elementwise import GradCAMElementWise
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.grad_rollout import GradRollout
from pytorch_grad_cam.hirescam import HiResCAM
from pytorch_grad_cam.is_cam import ISCAM
from pytorch_grad_cam.kpca_cam import KPCA_CAM
from pytorch_grad_cam.layer_cam import LayerCAM
from pytorch_grad_cam.legrad import LeGrad
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.refine_cam import RefineCAM
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.seg_eigen_cam import SegEigenCAM
from pytorch_grad_cam.shapley_cam import ShapleyCAM
from pytorch_grad_cam.smooth_grad_cam_plusplus import SmoothGradCAMPlusPlus
from pytorch_grad_cam.ss_cam import SSCAM
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
    "hirescam": HiResCAM,
    "gradcamelementwise": GradCAMElementWise,
    "randomcam": RandomCAM,
    "fem": FEM,
    "kpcacam": KPCA_CAM,
    "segeigencam": SegEigenCAM,
    "fullgrad": FullGrad,
    "shapleycam": ShapleyCAM,
    "finercam": FinerCAM,
    "refinecam": RefineCAM,
    # torchcam's extra methods
    "cam": CAM,
    "smoothgradcam++": SmoothGradCAMPlusPlus,
    "sscam": SSCAM,
    "iscam": ISCAM,
    # transformer-native: need attention maps (class flag needs_attention)
    "legrad": LeGrad,
    "rollout": AttentionRollout,
    "gradrollout": GradRollout,
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


def method_class(method: Union[str, Type[BaseCAM]]) -> Type[BaseCAM]:
    """``method`` as a CAM class: a registered name (:func:`get_method`) or a BaseCAM subclass.

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything else.
    """
    if isinstance(method, str):
        return get_method(method)
    if isinstance(method, type) and issubclass(method, BaseCAM):
        return method
    raise TypeError(f"method must be a name in pytorch_grad_cam.METHODS or a BaseCAM subclass, got {method!r}")
