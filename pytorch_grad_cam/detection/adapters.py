"""Turning a detector, as the user holds it, into a module whose output is one
:class:`~pytorch_grad_cam.detection.Candidates` per image.

Each family has an adapter: a function ``adapt(model) -> Optional[nn.Module]`` that
returns a wrapper when it recognises the model by duck typing (what the model or its
output looks like; the library imports no detector package), else None.
:func:`as_detector` tries them in order. A wrapper holds the user's model as a
submodule (so target layers of the model are layers of the wrapper), runs it in eval
mode, never trains it, fuses it or writes files, and returns a list of Candidates.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import nn

__all__ = ["ADAPTERS", "register_adapter", "as_detector"]

Adapter = Callable[[nn.Module], Optional[nn.Module]]

#: The family adapters, tried in order by :func:`as_detector`.
ADAPTERS: List[Adapter] = []


def register_adapter(adapter: Adapter) -> Adapter:
    """Add ``adapter`` to the families :func:`as_detector` knows (usable as a decorator)."""
    ADAPTERS.append(adapter)
    return adapter


def as_detector(model: object) -> nn.Module:
    """A module that runs ``model`` and returns one Candidates per image.

    Returns:
        ``model`` itself when it is already such a wrapper, else the first family
        adapter's wrapper.

    Raises:
        TypeError: if no family adapter recognises ``model`` (the message lists what each expects).
    """
    if getattr(model, "returns_candidates", False):
        return model  # already wrapped
    for adapter in ADAPTERS:
        wrapped = adapter(model)
        if wrapped is not None:
            return wrapped
    expected = "; ".join(adapter.__doc__.strip().splitlines()[0] for adapter in ADAPTERS if adapter.__doc__)
    raise TypeError(f"no detector family recognises {type(model).__name__}; supported: {expected}")
