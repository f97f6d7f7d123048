# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""States, Nagios threshold ranges and perfdata for healer_diagnose.

Pure functions only: the same rules as the monitoring-plugins (``check_disk``, ``check_load``…),
so that a threshold written for Nagios means the same thing here.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional

OK = "ok"
WARNING = "warning"
CRITICAL = "critical"
UNKNOWN = "unknown"
SKIPPED = "skipped"

STATES = (OK, WARNING, CRITICAL, UNKNOWN, SKIPPED)
# Health order: ok < unknown < warning < critical; skipped never counts.
_RANK = {SKIPPED: -1, OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}
# Nagios plugin exit codes, used for the per-check state metric.
NAGIOS_CODE = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}

ABOVE = "above"
BELOW = "below"

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE_RE = re.compile(rf"^(?P<inside>@)?(?:(?P<start>~|{_NUMBER})?:)?(?P<end>{_NUMBER})?$")


class ThresholdError(ValueError):
    """A threshold that cannot be parsed; the message names the parameter."""


def rank(state: str) -> int:
    """Position of a state in the health order (skipped is below ok)."""
    return _RANK[state]


def worst(states: Iterable[str]) -> str:
    """The worst state of several; ``ok`` when there are none or all are skipped."""
    result = OK
    for state in states:
        if rank(state) > rank(result):
            result = state
    return result


class Threshold:
    """A parsed Nagios range: alert when the value is outside ``start..end`` (or inside with ``@``)."""

    __slots__ = ("end", "inside", "start", "text")

    def __init__(self, start: float, end: float, inside: bool, text: str) -> None:
        self.start = start
        self.end = end
        self.inside = inside
        self.text = text

    def alerts(self, value: float) -> bool:
        """True when ``value`` should raise this threshold's state."""
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __repr__(self) -> str:
        return f"Threshold({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Threshold) and (self.start, self.end, self.inside) == (
            other.start,
            other.end,
            other.inside,
        )

    def __hash__(self) -> int:
        return hash((self.start, self.end, self.inside))


def _format_number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def parse_threshold(value: Any, name: str, direction: str = ABOVE) -> Optional[Threshold]:
    """Parse a number or Nagios range string; ``None``/``''`` disables the threshold.

    A bare number alerts *above* it (Nagios ``N`` = ``0:N``) for ``direction=above`` checks, and
    *below* it (``N:``) for ``direction=below`` checks such as certificate days or uptime, the way
    ``check_http -C 14`` reads a bare number. A string with ``:``, ``~`` or ``@`` is always taken as
    a literal Nagios range.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ThresholdError(f"{name}: invalid range {value!r} (expected a number or a Nagios range)")
    if isinstance(value, (int, float)):
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            raise ThresholdError(f"{name}: invalid range {value!r}")
        text = _format_number(number)
        if direction == BELOW:
            return Threshold(number, math.inf, False, text + ":")
        return Threshold(0.0, number, False, text)
    if not isinstance(value, str):
        raise ThresholdError(f"{name}: invalid range {value!r} (expected a number or a Nagios range)")
    text = value.strip()
    if text == "":
        return None
    match = _RANGE_RE.match(text)
    if not match or text == "@":
        raise ThresholdError(f"{name}: invalid range {value!r}")
    has_colon = ":" in text
    start_text = match.group("start")
    end_text = match.group("end")
    if not has_colon:
        if end_text is None:
            raise ThresholdError(f"{name}: invalid range {value!r}")
        if direction == BELOW and not match.group("inside"):
            return parse_threshold(float(end_text), name, BELOW)
        start, end = 0.0, float(end_text)
    else:
        if start_text == "~":
            start = -math.inf
        elif start_text is None:
            start = 0.0
        else:
            start = float(start_text)
        end = math.inf if end_text is None else float(end_text)
    if start > end:
        raise ThresholdError(f"{name}: invalid range {value!r} (start is greater than end)")
    return Threshold(start, end, bool(match.group("inside")), text)


def evaluate(value: Optional[float], warning: Optional[Threshold], critical: Optional[Threshold]) -> str:
    """State of one measured value: critical is tested before warning; no value is ``unknown``."""
    if value is None:
        return UNKNOWN
    if critical is not None and critical.alerts(value):
        return CRITICAL
    if warning is not None and warning.alerts(value):
        return WARNING
    return OK


def _perf_number(value: Optional[float]) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        value = round(value, 6)
    return _format_number(float(value))


def perfdata(
    label: str,
    value: Optional[float],
    uom: str = "",
    warning: Optional[Threshold] = None,
    critical: Optional[Threshold] = None,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
) -> str:
    """One Nagios perfdata item: ``'label'=value[UOM];warn;crit;min;max`` (trailing blanks dropped)."""
    quoted = "'{}'".format(label.replace("'", "''"))
    shown = "U" if value is None else _perf_number(value) + uom
    fields = [
        shown,
        warning.text if warning is not None else "",
        critical.text if critical is not None else "",
        _perf_number(minimum),
        _perf_number(maximum),
    ]
    while len(fields) > 1 and fields[-1] == "":
        fields.pop()
    return "{}={}".format(quoted, ";".join(fields))
