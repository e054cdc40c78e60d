"""One exception type per failure class a user can cause, each carrying a message that names the
file, row or field, what was expected and what to do, so errors read as instructions."""

from __future__ import annotations


class FineplatError(Exception):
    """Base of every error fineplat raises on purpose."""


class DatasetError(FineplatError):
    """The dataset cannot be used as a whole (unreadable file, unknown format, no valid rows)."""


class ConfigError(FineplatError):
    """A configuration value is invalid (unknown method, out-of-range hyperparameter)."""


class BaseModelError(FineplatError):
    """The base model cannot be found or loaded (unknown id, missing files, no chat template)."""


class TrainingError(FineplatError):
    """Training failed for a reason retrying will not fix (NaN loss, data error, out of memory)."""


class ProtocolError(FineplatError):
    """A message between the launcher and the trainer process has another schema version or shape."""


class RegistryError(FineplatError):
    """A registry operation is not allowed (unknown id, illegal stage transition)."""


class ServingError(FineplatError):
    """The serving pool rejected an operation (unknown adapter, duplicate name)."""


class EvaluationError(FineplatError):
    """An evaluation cannot run or cannot be trusted (empty eval set, judge or guard endpoint
    unreachable or answering in an unusable format)."""
