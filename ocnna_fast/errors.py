"""Exceptions of ocnna-fast that are not plain ``ValueError``s of bad input."""

from __future__ import annotations

__all__ = ["InternalError", "add_note"]


class InternalError(RuntimeError):
    """Our own arithmetic failed on valid input (a bug of ocnna-fast, please report it).

    Distinct from the ``ValueError`` raised for bad input, so a NaN we produce
    is never blamed on the caller's activations."""


def add_note(exc: BaseException, note: str) -> None:
    """Attaches ``note`` to ``exc`` (shown with its traceback; Python >= 3.11),
    so a second failure while cleaning up never replaces the first."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python < 3.11
        exc.__dict__.setdefault("__notes__", []).append(note)
