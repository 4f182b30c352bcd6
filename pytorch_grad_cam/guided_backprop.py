"""Guided backpropagation (Springenberg et al., 2015): the input gradient with every
ReLU passing back only positive gradients where its forward input was positive.

ReLUs are intercepted with a ``TorchFunctionMode`` for the duration of one call, so
``nn.ReLU`` modules and functional calls are both covered and the model's modules are
never replaced: ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu``, their in-place
forms (``inplace=True``, ``F.relu_``, ``torch.relu_``, ``Tensor.relu_``, which still
rectify their input in place, so ``x.relu_()`` as a statement works), and ReLU6
(``nn.ReLU6``, ``F.relu6``, ``F.hardtanh``/``F.hardtanh_`` from 0; in place too). Other
activations (GELU, SiLU, Hardswish, ...) keep their ordinary gradient.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from pytorch_grad_cam.checks import check_input
from pytorch_grad_cam.layers import unwrap_parallel
from pytorch_grad_cam.model_state import evaluation_mode, model_device, model_float_dtype
from pytorch_grad_cam.scoring import check_targets, score, top_class_targets


class _GuidedReLUFunction(torch.autograd.Function):
    """clamp(x, 0, upper) with the guided backward rule; ``inplace`` rectifies ``x`` itself
    (marked dirty, as torch's own ``relu_`` does), so code that ignores the return value
    of ``x.relu_()`` sees the rectified tensor."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, upper: Optional[float] = None, inplace: bool = False) -> torch.Tensor:  # type: ignore[override]
        if inplace:
            output = tensor.clamp_(min=0, max=upper)
            ctx.mark_dirty(output)
        else:
            output = tensor.clamp(min=0, max=upper)
        ctx.save_for_backward(output)
        ctx.upper = upper
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (output,) = ctx.saved_tensors
        passed = (output > 0) & (grad_output > 0)
        if ctx.upper is not None:  # ReLU6: no gradient where the input was clipped at 6 either
            passed &= output < ctx.upper
        return grad_output * passed, None, None


class GuidedBackpropReLU(torch.autograd.Function):
    """grad-cam's autograd function: ``GuidedBackpropReLU.apply(x)`` is ReLU(x) whose
    backward passes a gradient only where both the input and the incoming gradient are
    positive. (The library itself applies the same rule without replacing modules.)"""

    @staticmethod
    def forward(ctx, input_img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """ReLU of ``input_img``."""
        output = input_img.clamp(min=0)
        ctx.save_for_backward(input_img)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``grad_output`` where the input and ``grad_output`` are positive, else 0."""
        (input_img,) = ctx.saved_tensors
        return grad_output * ((input_img > 0) & (grad_output > 0)).to(grad_output.dtype)


class GuidedBackpropReLUasModule(nn.Module):
    """grad-cam's module form of :class:`GuidedBackpropReLU` (a drop-in for ``nn.ReLU``)."""

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        """ReLU of ``input_img`` with the guided backward rule."""
        return GuidedBackpropReLU.apply(input_img)


_RELUS = {F.relu, torch.relu, torch.Tensor.relu}
_IN_PLACE_RELUS = {F.relu_, torch.relu_, torch.Tensor.relu_}  # F.relu_ is torch.relu_


def _flag(args: tuple, kwargs: dict, position: int, name: str) -> bool:
    """The argument ``name`` given at ``position`` or by keyword (default False)."""
    return bool(args[position] if len(args) > position else kwargs.get(name, False))


def _guided_relu(func, args: tuple, kwargs: dict) -> Optional[Tuple[Optional[float], bool]]:
    """(clip value or None, in place?) if ``func(*args, **kwargs)`` is a ReLU or a ReLU6
    (``F.relu6``, or ``F.hardtanh`` from 0, which is what ``nn.ReLU6`` calls, as MobileNet
    and EfficientNet-Lite use), else None."""
    if func in _RELUS:
        return None, func is F.relu and _flag(args, kwargs, 1, "inplace")
    if func in _IN_PLACE_RELUS:
        return None, True
    if func is F.relu6:
        return 6.0, _flag(args, kwargs, 1, "inplace")
    if func is F.hardtanh or func is F.hardtanh_:
        bounds = dict(zip(("min_val", "max_val"), args[1:3]), **kwargs)
        if float(bounds.get("min_val", -1.0)) == 0.0:
            in_place = func is F.hardtanh_ or _flag(args, kwargs, 3, "inplace")
            return float(bounds.get("max_val", 1.0)), in_place
    return None


class _GuidedReLUMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        guided = _guided_relu(func, args, kwargs)
        if guided is not None:
            upper, in_place = guided
            return _GuidedReLUFunction.apply(args[0], upper, in_place)
        return func(*args, **kwargs)


class GuidedBackpropReLUModel:
    """Guided backpropagation of a model's class score to its input.

    Every call computes in eval mode and gives each submodule its own train/eval flag
    back afterwards (also on error); a model wrapped in ``nn.DataParallel`` or
    ``DistributedDataParallel`` is unwrapped.

    Args:
        model: the network; it is not modified.
        device: move the model there (``"cuda"``, ``torch.device(...)``); None keeps it
            where it is.
        use_cuda: the older spelling of ``device="cuda"``.

    Raises:
        RuntimeError: if CUDA is asked for and is not available.
    """

    def __init__(
        self,
        model: nn.Module,
        device: Optional[Union[str, torch.device]] = None,
        use_cuda: bool = False,
    ) -> None:
        if use_cuda and device is None:
            device = "cuda"
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda" and not torch.cuda.is_available():
                spelling = "use_cuda=True" if use_cuda else f"device={str(device)!r}"
                fix = "use_cuda=False" if use_cuda else "device='cpu'"
                raise RuntimeError(
                    f"{spelling} but CUDA is not available on this machine; pass {fix} to compute on the CPU"
                )
            model = model.to(device)
        self.model = unwrap_parallel(model)

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        """The model's output on ``input_img`` (moved to the model's device)."""
        return self.model(input_img.to(model_device(self.model)))

    def __call__(self, input_img: torch.Tensor, target_category: Optional[int] = None) -> np.ndarray:
        """The guided input gradient.

        Args:
            input_img: (B, C, H, W) float tensor (grad-cam's name for it).
            target_category: the class to explain; None takes each image's top class.

        Returns:
            float32 (H, W, C) for one image, or (B, H, W, C) for a batch.

        Raises:
            ValueError/TypeError: as for a CAM call's input; IndexError for a class
                outside the output.
        """
        input_tensor = check_input(input_img)
        batch = input_tensor.shape[0]
        targets = check_targets(None, target_category, batch)
        dtype = model_float_dtype(self.model) or input_tensor.dtype
        with torch.inference_mode(False), torch.enable_grad(), evaluation_mode(self.model):
            image = input_tensor.to(model_device(self.model), dtype).clone().requires_grad_(True)
            with _GuidedReLUMode():
                # A non-leaf copy, so that an in-place ReLU on the model's input is allowed
                # (autograd forbids in-place changes of a leaf that requires grad).
                outputs = self.model(image.clone())
            if targets is None:
                targets = top_class_targets(outputs, 1)
            scores = score(targets, outputs)
            (gradient,) = torch.autograd.grad(scores.sum(), image)
        gradient = gradient.float().movedim(1, -1).cpu().numpy()
        return gradient[0] if batch == 1 else gradient
