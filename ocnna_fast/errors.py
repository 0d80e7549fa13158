"""Exceptions of ocnna-fast that are not plain ``ValueError``s of bad input."""

from __future__ import annotations

__all__ = ["InternalError"]


class InternalError(RuntimeError):
    """Our own arithmetic failed on valid input (a bug of ocnna-fast, please report it).

    Distinct from the ``ValueError`` raised for bad input, so a NaN we produce
    is never blamed on the caller's activations."""
