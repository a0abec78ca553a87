"""Argument checks shared by the functions, the scorers and the callbacks, so that every error is worded
the same way: ``<owner> `<name>` (<meaning>) must be <allowed>, got <value>``, raised before any work."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Optional


def _fail(name: str, allowed: str, value: Any, owner: str, meaning: str) -> ValueError:
    about = f" ({meaning})" if meaning else ""
    return ValueError(f"{owner + ' ' if owner else ''}`{name}`{about} must be {allowed}, got {value!r}")


def is_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_int(name: str, value: Any, minimum: int = 1, *, owner: str = "", meaning: str = "") -> int:
    """``value`` if it is an integer >= ``minimum`` (1: "a positive integer", 0: "a non-negative integer")."""
    if not is_int(value, minimum):
        allowed = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
        raise _fail(name, allowed, value, owner, meaning)
    return value


def is_positive_int(value: Any) -> bool:
    return is_int(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` if it is a positive integer, else a ValueError naming the argument and the value."""
    return check_int(name, value)


def check_number(
    name: str,
    value: Any,
    allowed: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    open_low: bool = False,
    open_high: bool = False,
    owner: str = "",
    meaning: str = "",
) -> float:
    """``value`` as a float if it is a finite real number in the interval from ``low`` to ``high`` (ends open
    or closed as said); ``allowed`` words the interval for the error."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        raise _fail(name, allowed, value, owner, meaning)
    return float(value)


def check_choice(name: str, value: Any, choices: Collection[Any], *, owner: str = "", meaning: str = "") -> Any:
    """``value`` if it is one of ``choices`` (shown as given, e.g. a tuple)."""
    if value not in choices:
        raise _fail(name, f"one of {choices!r}", value, owner, meaning)
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False (not a truthy stand-in such as 1 or "yes")."""
    if not isinstance(value, bool):
        raise _fail(name, "True or False", value, "", "")
    return value


def check_seed(name: str, value: Any, *, owner: str = "") -> Optional[int]:
    """``value`` if it is an int or None (a generator's seed, or torch's global generator)."""
    if value is not None and not is_int(value, minimum=-(2**63)):
        raise _fail(name, "an int or None", value, owner, "")
    return value


def check_shape(name: str, value: Any, meaning: str = "") -> list[int]:
    """``value`` as a list if it is a non-empty list or tuple of positive ints (a shape)."""
    if not isinstance(value, (list, tuple)) or not value or not all(is_int(v) for v in value):
        raise _fail(name, "a non-empty list of positive ints" + (f" {meaning}" if meaning else ""), value, "", "")
    return list(value)
