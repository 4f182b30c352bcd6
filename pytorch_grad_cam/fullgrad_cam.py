"""grad-cam's import path for FullGrad (``from pytorch_grad_cam.fullgrad_cam import
FullGrad``); the method lives in :mod:`pytorch_grad_cam.full_grad`."""

from pytorch_grad_cam.full_grad import FullGrad

__all__ = ["FullGrad"]
