"""The one way the library puts hooks on a user's model.

:class:`Hooks` registers forward and forward-pre hooks that fire only for the thread
that made them (another thread running the same model is not seen), and removes every
one of them together: at the end of a ``with`` block, on :meth:`Hooks.remove`, and
also when a registration fails half way (a ScriptModule among the layers), so that no
hook of ours is ever left on the model.
"""

from __future__ import annotations

import threading
from typing import Callable, List, Optional

from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Hooks"]


class Hooks:
    """Hooks registered for one job and removed together.

    Use as a context manager (``with Hooks() as hooks: hooks.forward(layer, fn)``); or
    call :meth:`remove`, which is safe to call twice.

    Args:
        this_thread_only: call a hook only on the thread that created this object.
    """

    def __init__(self, this_thread_only: bool = True) -> None:
        self._thread: Optional[int] = threading.get_ident() if this_thread_only else None
        self._handles: List[RemovableHandle] = []

    def _filtered(self, hook: Callable) -> Callable:
        thread = self._thread
        if thread is None:
            return hook

        def on_this_thread(*args: object) -> object:
            if threading.get_ident() != thread:
                return None
            return hook(*args)

        return on_this_thread

    def _register(self, module: nn.Module, register: Callable[[Callable], RemovableHandle], hook: Callable) -> None:
        try:
            handle = register(self._filtered(hook))
        except Exception as error:
            # Everything registered so far goes, so that the user's model is as found.
            self.remove()
            raise ValueError(
                f"cannot put a hook on {type(module).__name__} ({error}); choose a layer of the "
                "eager model (a TorchScript module cannot take hooks: pass the module before "
                "torch.jit.script)"
            ) from error
        self._handles.append(handle)

    def forward(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, inputs, output)``; what it returns replaces the output.

        Raises:
            ValueError: if ``module`` cannot take hooks (a ScriptModule); every hook of
                this object is removed first.
        """
        self._register(module, module.register_forward_hook, hook)

    def forward_pre(self, module: nn.Module, hook: Callable) -> None:
        """Register ``hook(module, inputs)``, called before ``module`` runs.

        Raises:
            ValueError: if ``module`` cannot take hooks; every hook of this object is
                removed first.
        """
        self._register(module, module.register_forward_pre_hook, hook)

    def remove(self) -> None:
        """Remove every hook registered through this object."""
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "Hooks":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
