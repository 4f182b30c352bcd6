"""A switch that is on for one thread inside a ``with`` block: how the engine tells code
it calls what kind of pass is running (scoring perturbed copies, a several-targets
record) without threading an argument through the model."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["ThreadFlag"]


class ThreadFlag:
    """Off, except on the thread inside ``with flag.on():`` (nested blocks keep it on)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def on(self) -> Iterator[None]:
        """Switch the flag on for this thread for the block; its previous state after."""
        previous = self.is_on()
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = previous

    def is_on(self) -> bool:
        """Whether the flag is on for this thread."""
        return getattr(self._local, "on", False)
