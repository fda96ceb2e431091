"""One error type for bad input, so every message names the field and what is allowed."""
from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A parameter has a value we cannot run with.

    ``field`` is the parameter's name as the user spelled it (CLI flag, notebook parameter or
    keyword argument); ``allowed`` describes the values that would work.
    """

    def __init__(self, field: str, value: Any, allowed: Any, reason: str | None = None):
        self.field, self.value, self.allowed = field, value, allowed
        if not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        msg = f"{field}: {reason or 'invalid value'} {value!r}; allowed: {allowed}"
        super().__init__(msg)


def check_choice(field: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(field, value, sorted(allowed, key=str), "unknown value")
    return value


def check_int(field: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(field, value, f"an integer >= {minimum}" if minimum is not None
                              else "an integer", "not an integer:")
    if minimum is not None and value < minimum:
        raise ConfigError(field, value, f"an integer >= {minimum}", "out of range:")
    return value


def check_float(field: str, value: Any, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    lo_b, hi_b = ("(" if low_open else "["), (")" if high_open else "]")
    rng = f"a number in {lo_b}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi_b}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field, value, rng, "not a number:")
    value = float(value)
    if value != value:  # NaN
        raise ConfigError(field, value, rng, "not a number:")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(field, value, rng, "out of range:")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(field, value, rng, "out of range:")
    return value
