"""Errors raised by the shared-memory layer."""


class ShmError(Exception):
    """Base class for shared-memory errors."""


class SegmentExists(ShmError):
    """A segment or semaphore with that name already exists."""


class SegmentMissing(ShmError):
    """No segment or semaphore with that name exists (instance not running?)."""


class LockTimeout(ShmError, TimeoutError):
    """A byte lock was not free before the caller's deadline (its holder may
    be stopped: the kernel releases a lock at its holder's death, not at a
    SIGSTOP)."""


class LayoutError(ShmError):
    """A segment's bytes do not match the layout expected (corrupt or foreign)."""
