"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Malformed, missing or unusable input data.

    The message always names the file and, for text formats, the 1-based line number, e.g.
    ``ratings.dat, line 17: expected 4 fields separated by '::', got 3``.
    """
