"""Argument checks shared by the functions and the callback, so that both word errors the same way."""

from __future__ import annotations

from typing import Any


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is a positive integer, else a ValueError naming the argument and the value."""
    if not is_positive_int(value):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return value
