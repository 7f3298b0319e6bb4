"""Errors raised by the shared-memory layer."""


class ShmError(Exception):
    """Base class for shared-memory errors."""


class SegmentExists(ShmError):
    """A segment or semaphore with that name already exists."""


class SegmentMissing(ShmError):
    """No segment or semaphore with that name exists (instance not running?)."""


class LayoutError(ShmError):
    """A segment's bytes do not match the layout expected (corrupt or foreign)."""
