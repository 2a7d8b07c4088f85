"""Loading mmengine 0.10.7 checkpoints under torch's ``weights_only=True`` (the torch >= 2.6 default).

mmengine's runner stores its message hub in ``checkpoint["message_hub"]``: ``HistoryBuffer`` objects
(with their statistic methods, pickled as ``getattr(HistoryBuffer, "mean")``) and numpy arrays and
scalars. ``torch.load(weights_only=True)`` rejects those, so ``Runner(resume=True)`` fails on its own
checkpoints. The fix here is deliberate, not ``weights_only=False``: :func:`mmengine_safe_loading`
allow-lists exactly those types (verified with ``torch.serialization.get_unsafe_globals_in_checkpoint``
on a Runner checkpoint), and ``builtins.getattr`` is replaced by a version that only returns public
methods of ``HistoryBuffer``::

    with mmengine_safe_loading():
        runner.train()  # resume=True / load_from=... now load under weights_only=True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["mmengine_safe_globals", "mmengine_safe_loading"]


def mmengine_safe_globals() -> list:
    """The exact globals an mmengine 0.10.7 Runner checkpoint needs beyond torch's defaults
    (``MissingDependencyError`` naming the ``det`` extra when mmengine is not installed)."""
    from core.extras import require

    HistoryBuffer = require("mmengine.logging.history_buffer", "loading mmengine checkpoints").HistoryBuffer

    def restricted_getattr(obj: object, name: str) -> object:
        if obj is HistoryBuffer and not name.startswith("_") and callable(getattr(HistoryBuffer, name, None)):
            return getattr(HistoryBuffer, name)
        raise torch.serialization.pickle.UnpicklingError(
            f"refusing getattr({obj!r}, {name!r}) while loading an mmengine checkpoint")

    multiarray = np._core.multiarray
    return [HistoryBuffer, np.ndarray, np.dtype, *{type(np.dtype(t)) for t in "fdilbBhHIqQe?"},
            (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy._core.multiarray.scalar"),
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar"),
            (restricted_getattr, "builtins.getattr")]


@contextlib.contextmanager
def mmengine_safe_loading() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` accepts mmengine Runner checkpoints."""
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        yield
