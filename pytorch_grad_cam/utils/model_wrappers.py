"""Adapters that give a CAM method the plain tensor of scores it expects.

Many models return something other than a tensor: HuggingFace models a ``ModelOutput``
(a dict with a ``.logits`` attribute), others a plain dict or a tuple ``(logits, aux)``.
The library's targets (``ClassifierOutputTarget`` and friends) and ``targets=None`` need
the (B, classes) tensor, so wrap such a model once::

    from pytorch_grad_cam.utils.model_wrappers import OutputSelector

    model = OutputSelector(hf_model)               # returns hf_model(x).logits
    model = OutputSelector(net, "scores")          # returns net(x)["scores"]
    model = OutputSelector(net, 0)                 # returns net(x)[0] of a tuple
    model = OutputSelector(net, lambda out: out["a"] + out["b"])

The wrapper holds the model as its ``.model`` child, so target layers are the same
module objects as before (``model.model.layer4`` or the original ``hf_model.layer4``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

from torch import nn

Selection = Union[str, int, Callable[[Any], Any]]


def select_output(output: Any, select: Selection) -> Any:
    """``output[select]`` or ``output.select`` for a name, ``output[select]`` for an
    index, ``select(output)`` for a function.

    Raises:
        KeyError: if a name is neither a key nor an attribute of ``output``.
    """
    if callable(select):
        return select(output)
    if isinstance(select, str):
        if isinstance(output, Mapping) and select in output:
            return output[select]
        if hasattr(output, select):
            return getattr(output, select)
        keys = list(output.keys()) if isinstance(output, Mapping) else []
        raise KeyError(
            f"the model output ({type(output).__name__}) has no key or attribute {select!r}"
            + (f"; its keys are {keys}" if keys else "")
        )
    return output[select]


class OutputSelector(nn.Module):
    """A model that returns one tensor selected from the wrapped model's output.

    Args:
        model: the model whose output is a dict, a ``ModelOutput``, a tuple, ...
        select: a key or attribute name (default ``"logits"``, HuggingFace's class
            scores), an index into a tuple/list, or a function of the whole output.

    The wrapper has no parameters or state of its own: its mode, device and dtype are
    those of ``model``.
    """

    def __init__(self, model: nn.Module, select: Selection = "logits") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if not (callable(select) or isinstance(select, (str, int))):
            raise TypeError(f"select must be a key name, an index or a function, not {type(select).__name__}")
        self.model = model
        self.select = select

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return select_output(self.model(*args, **kwargs), self.select)

    def extra_repr(self) -> str:
        return f"select={getattr(self.select, '__name__', self.select)!r}"


#: The name the grad-cam HuggingFace tutorial gives this wrapper (it returns ``.logits``).
HuggingfaceToTensorModelWrapper = OutputSelector

__all__ = ["HuggingfaceToTensorModelWrapper", "OutputSelector", "select_output"]
