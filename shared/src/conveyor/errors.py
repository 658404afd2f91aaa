"""Error classes that steer delivery: retry or dead-letter at once."""


class PermanentError(Exception):
    """Retrying cannot help (bad input, unsupported type): the event goes straight to the DLQ."""


class TransientError(Exception):
    """Worth retrying with backoff (timeouts, 429, 5xx, broker hiccups)."""


class ConfigurationError(Exception):
    """A stage cannot start as configured (a missing extra, a vector store of another model): its
    message says what to change; the worker exits with it, no traceback."""
