"""Optional dependency groups (pyproject extras) and the one error raised when one is missing.

``pip install -e .`` installs core, the classification papers and the benchmark. Detection (mmdet's
runner and COCO evaluation through mmdet) needs the ``det`` extra, whose mmcv 2.1.0 has no wheel for
torch 2.14 and is built once by ``tools/install_mmcv.py``. Code that uses mmengine / mmcv / mmdet
imports them through :func:`require`, so a missing package is one clear error naming what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from core.errors import MissingDependencyError

__all__ = ["EXTRAS", "require"]

#: extra -> (its packages, how to install it)
EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "det": (("mmengine", "mmcv", "mmdet"), "python tools/install_mmcv.py && pip install -e '.[det]'"),
    "export": (("onnx", "onnxruntime"), "pip install -e '.[export]'"),
    "tensorboard": (("tensorboard",), "pip install -e '.[tensorboard]'"),
}


def require(module: str, feature: str, extra: str = "det") -> ModuleType:
    """``import module``; when it is not installed, :class:`~core.errors.MissingDependencyError` saying
    that ``feature`` needs the ``extra`` and the exact command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        packages, command = EXTRAS[extra]
        raise MissingDependencyError(
            f"{feature} needs {module}, which is not importable here ({type(exc).__name__}: {exc}); it comes "
            f"with the '{extra}' extra ({', '.join(packages)}): {command}") from None
