"""Warnings that point at the user's line: the library's own frames are skipped, so a
warning raised deep in a method shows the line of code that called the CAM."""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Type

import torch

__all__ = ["warn_user"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_SKIPPED = tuple(directory + os.sep for directory in (_PACKAGE_DIR, _TORCH_DIR))


def warn_user(message: str, category: Type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the first frame outside this
    package and torch (the user's call), however deep inside the library it is raised."""
    level = 2  # warnings.warn's stacklevel of warn_user's caller
    frame = inspect.currentframe().f_back
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_SKIPPED):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
