"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""


class MpqError(Exception):
    """Base of every error that a user can fix: the message says what is wrong and how to fix it."""


class ConfigError(MpqError):
    """Unknown config key, wrong type, malformed YAML or override."""


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


class ExportError(MpqError):
    """A model or quantizer that cannot be exported as stated (e.g. a grid without an exact QDQ form)."""
