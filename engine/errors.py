"""Every error of the engine, in one tree under ``EngineError``.

Library code raises; only the CLI picks exit codes (``engine.cli.main``).
Errors of the mechanism packages (``shm.errors``, ``metrics.errors``) stay
theirs; engine code that lets one through wraps it where the caller needs
an engine error.

A message that quotes what a caller sent uses ``shown``: the gateway sends
messages back as gRPC status details, which travel in metadata, and gRPC
fails a call whose metadata passes its hard limit (RESOURCE_EXHAUSTED
"metadata size exceeds hard limit") instead of delivering the error, so a
1 MB space name must not come back whole.
"""

SHOWN_CHARS = 80


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message: at most ``limit`` characters,
    then "… (N chars)" with the full length of the value."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        size = f"{len(value)} chars"
    elif isinstance(value, (bytes, bytearray)):
        size = f"{len(value)} bytes"
    else:
        size = f"{len(text)} chars"
    return f"{text[:limit]}… ({size})"


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


class SpillError(EngineError):
    """The file of observations saved by the last stop cannot be read back."""


class SnapshotError(EngineError):
    """A snapshot on disk is missing, damaged or does not match its checksums."""


class GatewayError(EngineError):
    """The gateway answered a call with an error status (not retried, or out of retries).

    ``code`` is the ``grpc.StatusCode``; kept untyped here so that this
    module needs no grpc import."""

    def __init__(self, code, details: str, transport: bool = False):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        # The gateway could not be reached or did not answer (as opposed to
        # an answer that refused the call): what a client retries elsewhere.
        self.transport = transport


class SessionLost(GatewayError):
    """A session could not continue and the client will not move it (engine.client).

    A single-host session lives in one engine: when its gateway stays
    unreachable until ``retry_timeout``, the client does not carry it, or a
    batch whose ack it never saw, to another target. In cluster mode, a
    batch is resent through another gateway only within the log's duplicate
    window. ``unacknowledged`` is the sequence range whose fate is unknown
    (empty when no batch was waiting); the session starts afresh on its next
    send (a new session, on the next target that answers)."""

    def __init__(self, code, details: str, unacknowledged: range = range(0)):
        super().__init__(code, details, transport=True)
        self.unacknowledged = unacknowledged
