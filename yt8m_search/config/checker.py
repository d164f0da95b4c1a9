"""Typed access to the values of a YAML mapping that records every problem with its key path.

The space parser reads each section through one ``Checker`` and raises all its errors together
(``SpecError``), so a user fixes a space file in one pass instead of one error per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Checker:
    """Typed field access on a YAML mapping that records errors instead of raising."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def mapping(self, value: Any, path: str, allowed: Sequence[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.errors.append(f"{path or '<top level>'}: expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                where = f"{path}." if path else ""
                self.errors.append(f"{where}{key}: unknown key (valid: {', '.join(allowed)})")
        return value

    def integer(
        self, section: dict[str, Any], key: str, path: str, default: int, minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = section.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.errors.append(f"{path}.{key}: expected an integer, got {value!r}")
            return default
        if minimum is not None and value < minimum:
            self.errors.append(f"{path}.{key}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            self.errors.append(f"{path}.{key}: must be <= {maximum}, got {value}")
        return value

    def string(self, section: dict[str, Any], key: str, path: str, default: str | None) -> str | None:
        value = section.get(key, default)
        if value is not None and not isinstance(value, str):
            self.errors.append(f"{path}.{key}: expected a string, got {value!r}")
            return default
        return value


def number(value: Any) -> float | None:
    """YAML 1.1 reads 5e6 as a string; accept numeric strings for sizes and rates."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


__all__ = ["Checker", "number"]
