"""A per-thread switch read when TensorFlow functions are traced (warp.portable_ops,
fast_ops.direct_formulations): what a graph contains is decided at tracing time, so a `with`
block around the first call of a tf.function fixes which ops that graph runs."""

from __future__ import annotations

import contextlib
import threading


class TraceSwitch:
    """Off unless inside `with switch.turned_on():` in this thread; `bool(switch)` reads it."""

    def __init__(self):
        self._local = threading.local()

    def __bool__(self) -> bool:
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def turned_on(self):
        previous = bool(self)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = previous
