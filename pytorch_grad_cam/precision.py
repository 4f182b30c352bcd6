"""Mixed precision: the map step of a CAM computes in full precision also when the
caller runs it under ``torch.autocast``, and the model's extra forward passes (ScoreCAM's
masked images, AblationCAM's ablated copies) run under the caller's autocast again.

Autocast casts matrix products to float16/bfloat16: the principal components of
EigenCAM and ``eigen_smooth``, KPCA-CAM's kernel, FullGrad's channel sums and a method's
own products would lose their precision (a bfloat16 SVD picks the wrong sign, a float16
sum overflows). The recorded activations and gradients are lifted to float32 before the
maps are computed (docs/decisions.md, G10); :func:`full_precision` keeps autocast from
casting them back down. Only this thread is affected (autocast state is per thread).
"""

from __future__ import annotations

import threading
from contextlib import ExitStack, contextmanager
from typing import Iterator, List, Optional, Tuple

import torch

__all__ = ["full_precision", "callers_precision", "autocast_state"]

#: The device types whose autocast state is switched (those torch has autocast for).
AUTOCAST_DEVICES: Tuple[str, ...] = ("cpu", "cuda", "xpu", "mps")

_SUSPENDED = threading.local()


def autocast_state() -> List[Tuple[str, torch.dtype]]:
    """The (device type, dtype) of every autocast active on this thread now."""
    active = []
    for device_type in AUTOCAST_DEVICES:
        try:
            enabled, dtype = _autocast_of(device_type)
        except (RuntimeError, ValueError):  # a device type this build of torch lacks
            continue
        if enabled:
            active.append((device_type, dtype))
    return active


def _autocast_of(device_type: str) -> Tuple[bool, Optional[torch.dtype]]:
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: the CPU's and CUDA's own functions
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        if device_type == "cuda":
            return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return False, None


@contextmanager
def full_precision() -> Iterator[None]:
    """Switch off every autocast active on this thread for the body (nothing is done
    when none is active); :func:`callers_precision` inside switches it back on.
    Backward passes run in it too: autograd already gives each backward operation the
    dtype autocast chose for its forward, and hooks that reduce a gradient (FullGrad)
    then sum in float32."""
    active = autocast_state()
    if not active:
        yield
        return
    outer = getattr(_SUSPENDED, "state", None)
    _SUSPENDED.state = active
    try:
        with ExitStack() as stack:
            for device_type, _ in active:
                stack.enter_context(torch.autocast(device_type, enabled=False))
            yield
    finally:
        _SUSPENDED.state = outer


@contextmanager
def callers_precision() -> Iterator[None]:
    """Inside :func:`full_precision`: the autocast the caller had, for a forward pass
    of the model (ScoreCAM's, AblationCAM's perturbed copies). Elsewhere it does nothing."""
    suspended = getattr(_SUSPENDED, "state", None)
    if not suspended:
        yield
        return
    _SUSPENDED.state = None  # a full_precision() nested inside switches off again
    try:
        with ExitStack() as stack:
            for device_type, dtype in suspended:
                stack.enter_context(torch.autocast(device_type, dtype=dtype))
            yield
    finally:
        _SUSPENDED.state = suspended
