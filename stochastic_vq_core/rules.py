"""The checks of user-supplied values, each rule written once (no torch needed).

A failed check raises TypeError or ValueError whose message starts with the argument's
name and whose ``argument`` attribute holds that name, so that a caller with other names
for the same value (the training scripts' flags) can report it in its own words.
"""

from __future__ import annotations

from numbers import Integral, Real

MAX_BITS_PER_STAGE = 30  # K = 2**30 entries per codebook at most


def invalid(kind: type[Exception], argument: str, message: str) -> Exception:
    """``kind(f"{argument} {message}")`` with ``.argument`` set to ``argument``."""
    error = kind(f"{argument} {message}")
    error.argument = argument
    return error


def check_int(argument: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (and <= ``maximum`` if given;
    bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise invalid(TypeError, argument, f"must be an integer, got {type(value).__name__}")
    if maximum is not None and not minimum <= value <= maximum:
        raise invalid(ValueError, argument,
                      f"must be an integer in [{minimum}, {maximum}], got {value}")
    if value < minimum:
        raise invalid(ValueError, argument, f"must be an integer >= {minimum}, got {value}")
    return int(value)


def check_bool(argument: str, value) -> bool:
    """``value`` if it is a bool (True or False, not 0 or 1)."""
    if not isinstance(value, bool):
        raise invalid(TypeError, argument, f"must be True or False, got {value!r}")
    return value


def check_bits_per_stage(argument: str, value) -> int:
    """Bits per codebook: an int in [1, MAX_BITS_PER_STAGE]."""
    value = check_int(argument, value)
    if value > MAX_BITS_PER_STAGE:
        raise invalid(ValueError, argument, f"must be <= {MAX_BITS_PER_STAGE}, got {value}")
    return value


def check_real(argument: str, value, low: float = 0.0, high: float = float("inf")) -> float:
    """``value`` as a float if it is a real number in [low, high] (NaN is refused)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise invalid(TypeError, argument, f"must be a number in [{low:g}, {high:g}], "
                                           f"got {type(value).__name__}")
    if not low <= value <= high:
        raise invalid(ValueError, argument, f"must be in [{low:g}, {high:g}], got {value}")
    return float(value)


def check_divisible(dim_name: str, dim: int, stages_name: str, stages: int) -> int:
    """A dimension ``dim`` that product VQ splits into ``stages`` equal parts; the error
    names ``stages_name``."""
    if dim % stages:
        raise invalid(ValueError, stages_name, f"({stages}) must divide {dim_name} ({dim}) "
                                               "for product VQ")
    return dim


def check_choice(argument: str, value, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise invalid(ValueError, argument, f"must be one of {', '.join(choices)}, "
                                            f"got {value!r}")
    return value
