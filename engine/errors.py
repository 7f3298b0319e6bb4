"""Every error of the engine, in one tree under ``EngineError``.

Library code raises; only the CLI picks exit codes (``engine.cli.main``).
Errors of the mechanism packages (``shm.errors``, ``metrics.errors``) stay
theirs; engine code that lets one through wraps it where the caller needs
an engine error.
"""


class EngineError(Exception):
    """Base class of every engine error."""


class ConfigError(EngineError):
    """A setting has a bad value; the message names the flag and the value."""


class InstanceRunning(EngineError):
    """Another instance holds the data directory or the instance name."""


class NotRunning(EngineError):
    """No running instance of that name (connect, status, stop)."""


class InvalidInput(EngineError, ValueError):
    """Bad input to observe/recall. Counted as a rejection with reason invalid_input."""

    reason = "invalid_input"


class TableFull(EngineError):
    """The gateway's session table has no free row."""


class ResizeError(EngineError, RuntimeError):
    """An HNSW shard could not grow (``resize_index`` failed)."""


class SnapshotError(EngineError):
    """A snapshot on disk is missing, damaged or does not match its checksums."""


class GatewayError(EngineError):
    """The gateway answered a call with an error status (not retried, or out of retries).

    ``code`` is the ``grpc.StatusCode``; kept untyped here so that this
    module needs no grpc import."""

    def __init__(self, code, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
