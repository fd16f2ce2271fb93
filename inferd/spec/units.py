"""Go durations (`1h30m`, `250ms`) and Kubernetes quantities (`200m`, `512Mi`, `1G`)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_DURATION_UNITS = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),  # U+00B5, as Go accepts
    "μs": Decimal("1e-6"),  # U+03BC
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")

_QUANTITY_SUFFIXES = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<exponent>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?"
)


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; ValueError if it is not one."""
    text = text.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}")
    total = sum(
        (Decimal(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)),
        Decimal(0),
    )
    return float(-total if text.startswith("-") else total)


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity (cores for cpu, bytes for memory); ValueError if invalid."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid quantity {text!r}")
    try:
        value = Decimal(match["number"])
        if match["exponent"]:
            return value * Decimal(10) ** int(match["exponent"][1:])
        return value * _QUANTITY_SUFFIXES[match["suffix"] or ""]
    except InvalidOperation as exc:
        raise ValueError(f"invalid quantity {text!r}") from exc
