"""Error types. Every message says what was wrong, where, and what would be valid."""
from __future__ import annotations


class KdbenchError(Exception):
    """Base class for user-facing errors (printed without a traceback by the CLI)."""


class ConfigError(KdbenchError):
    """A configuration value or key is invalid."""


class DataError(KdbenchError):
    """A data file or record is malformed (message carries file:line and field)."""


class UnknownNameError(KdbenchError, KeyError):
    """A registry lookup failed; the message lists valid names and a suggestion."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0] if self.args else ""


class ModelError(KdbenchError):
    """A model or tokenizer could not be loaded or is incompatible."""
