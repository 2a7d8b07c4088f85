"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations


class MpqError(Exception):
    """Base of every error that a user can fix: the message says what is wrong and how to fix it.

    An error raised in a DataLoader worker reaches the main process wrapped by torch as ``Caught
    DataError in DataLoader worker process 0. Original Traceback ...``; the message is cut back to the
    worker's own message, so the one line that says what is wrong is not buried in a traceback."""

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "Original Traceback" in args[0]:
            args = (_worker_message(args[0], type(self)),)
        super().__init__(*args)


def _worker_message(text: str, cls: type) -> str:
    for name in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind(name)
        if at >= 0:
            return text[at + len(name):].strip()
    return text


class ConfigError(MpqError):
    """Unknown config key, wrong type or impossible value, malformed YAML or override."""


class DataError(MpqError):
    """Missing dataset root, wrong layout, unreadable or corrupt file."""


class PolicyError(MpqError):
    """Malformed policy file, unknown or missing layer, unsupported bit-width."""


class CheckpointError(MpqError):
    """Missing, corrupt or mismatched checkpoint / pretrained file."""


class BudgetError(MpqError):
    """An infeasible budget (BOPs, size, ...) for a search."""


class TrainingDivergedError(MpqError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CountingError(ConfigError):
    """Work the BOPs counter cannot attribute exactly (a weight used outside its layer, a layer that
    never ran, matmuls the convention does not define); counting it as 0 would undercount."""


class RunDirError(MpqError):
    """The run directory is in use by another process, belongs to another run (another identity), or
    holds a stage output made by another run."""


class OutputError(MpqError):
    """Writing an output failed for a reason of the file system (full, read-only, not a directory...);
    the message names the path and the cause."""


class MissingDependencyError(MpqError):
    """An optional dependency (an extra such as ``det``) is not installed; the message says the command."""


class ExportError(MpqError):
    """A model or quantizer that cannot be exported as stated (e.g. a grid without an exact QDQ form)."""
