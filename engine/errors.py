"""Errors of the engine package. Library code raises; only the CLI picks exit codes."""


class EngineError(Exception):
    """Base class."""


class ConfigError(EngineError):
    """A setting has a bad value; the message names the flag and the value."""


class InstanceRunning(EngineError):
    """Another instance holds the data directory or the instance name."""


class NotRunning(EngineError):
    """No running instance of that name (connect, status, stop)."""


class InvalidInput(EngineError, ValueError):
    """Bad input to observe/recall. Counted as a rejection with reason invalid_input."""

    reason = "invalid_input"


class WorkerFailure(EngineError):
    """A worker process failed; carries the formatted traceback."""
