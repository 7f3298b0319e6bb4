"""Errors raised by the metrics package.

``MetricsError`` is the base. The more specific classes also derive from the
builtin a caller would naturally catch (``KeyError``, ``ValueError``) or from
``shm.errors.LayoutError`` for a segment that does not match, so callers can
catch either the package's error or the generic one.
"""

from __future__ import annotations

from shm.errors import LayoutError


class MetricsError(Exception):
    """Base class for metrics errors."""


class UnknownMetric(MetricsError, KeyError):
    """A metric name that is not in the catalog (or not recordable)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LabelError(MetricsError, ValueError):
    """Missing, extra or unknown label names or values."""


class RecordError(MetricsError, ValueError):
    """An operation that does not fit the metric (e.g. a counter going down)."""


class CatalogError(MetricsError, ValueError):
    """The catalog declaration itself is inconsistent."""


class ArrayLayoutError(MetricsError, LayoutError):
    """A metric array's bytes do not match what this code expects."""
