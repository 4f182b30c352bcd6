"""pytorch_grad_cam: Class Activation Map methods for PyTorch models."""

from pytorch_grad_cam.ablation_cam import AblationCAM
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerFasterRCNN, AblationLayerVit
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.class_activation_map import CAM
from pytorch_grad_cam.eigen_cam import EigenCAM
from pytorch_grad_cam.eigen_grad_cam import EigenGradCAM

# Deep Feature Factorization
from pytorch_grad_cam.feature_factorization import DeepFeatureFactorization, run_dff_on_image
from pytorch_grad_cam.fem import FEM

# drop-in methods of grad-cam 1.5.x
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.full_grad import FullGrad
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.grad_cam_elementwise import GradCAMElementWise
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.grad_rollout import GradRollout
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.hirescam import HiResCAM
from pytorch_grad_cam.is_cam import ISCAM
from pytorch_grad_cam.kpca_cam import KPCA_CAM
from pytorch_grad_cam.layer_cam import LayerCAM
from pytorch_grad_cam.legrad import LeGrad
from pytorch_grad_cam.noise_smoothing import NoiseSmooth
from pytorch_grad_cam.perturbation_cam import PerturbationCAM
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.refine_cam import RefineCAM
from pytorch_grad_cam.registry import METHODS, get_method
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.seg_eigen_cam import SegEigenCAM
from pytorch_grad_cam.shapley_cam import ShapleyCAM
from pytorch_grad_cam.smooth_grad_cam_plusplus import SmoothGradCAMPlusPlus
from pytorch_grad_cam.ss_cam import SSCAM
from pytorch_grad_cam.xgrad_cam import XGradCAM

__version__ = "1.0.0"

__all__ = [
    "AblationCAM",
    "AblationLayer",
    "AblationLayerFasterRCNN",
    "AblationLayerVit",
    "ActivationsAndGradients",
    "BaseCAM",
    "EigenCAM",
    "EigenGradCAM",
    "FEM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "KPCA_CAM",
    "LayerCAM",
    "METHODS",
    "PerturbationCAM",
    "RandomCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "XGradCAM",
    "get_method",
    # drop-in methods of grad-cam 1.5.x
    "FinerCAM",
    "FullGrad",
    "RefineCAM",
    "ShapleyCAM",
    # Deep Feature Factorization
    "DeepFeatureFactorization",
    "run_dff_on_image",
    # torchcam's extra methods, and noise smoothing for any method
    "CAM",
    "ISCAM",
    "NoiseSmooth",
    "SmoothGradCAMPlusPlus",
    "SSCAM",
    # transformer-native methods
    "LeGrad",
    "AttentionRollout",
    "GradRollout",
]
