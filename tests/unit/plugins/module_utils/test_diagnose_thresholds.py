"""Nagios ranges, states and perfdata, tested at the edges of each range."""

from __future__ import annotations

import math

import pytest
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_thresholds import (
    BELOW,
    CRITICAL,
    OK,
    SKIPPED,
    UNKNOWN,
    WARNING,
    ThresholdError,
    evaluate,
    parse_threshold,
    perfdata,
    worst,
)
from hypothesis import given
from hypothesis import strategies as st


def alerts(text, value, direction="above"):
    return parse_threshold(text, "t", direction).alerts(value)


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        # "10": alert outside 0..10
        ("10", 10, False),
        ("10", 10.0001, True),
        ("10", 0, False),
        ("10", -0.0001, True),
        ("10", 5, False),
        (10, 10, False),
        (10, 11, True),
        (10.5, 10.5, False),
        (10.5, 10.50001, True),
        # "10:": alert below 10
        ("10:", 10, False),
        ("10:", 9.9999, True),
        ("10:", 1e12, False),
        # "~:10": alert above 10, negative values fine
        ("~:10", 10, False),
        ("~:10", 10.0001, True),
        ("~:10", -1e9, False),
        # "10:20": alert outside 10..20
        ("10:20", 10, False),
        ("10:20", 20, False),
        ("10:20", 9.999, True),
        ("10:20", 20.001, True),
        # "@10:20": alert inside 10..20, inclusive
        ("@10:20", 10, True),
        ("@10:20", 20, True),
        ("@10:20", 15, True),
        ("@10:20", 9.999, False),
        ("@10:20", 20.001, False),
        # negative bounds
        ("-10:-5", -7, False),
        ("-10:-5", -4, True),
        ("~:-1", -1, False),
        ("~:-1", 0, True),
        # ":10" is "10" (start defaults to 0)
        (":10", 10, False),
        (":10", 11, True),
        ("@~:0", -3, True),
        ("@~:0", 0.1, False),
        ("1e1", 10, False),
        ("1e1", 10.1, True),
        (" 5 ", 6, True),
    ],
)
def test_range_edges(text, value, expected):
    assert alerts(text, value) is expected


@pytest.mark.parametrize(
    "text",
    ["10::", "abc", "", "~", "@", "10%", "20:10", "-5", "1:2:3", "@@1", "~10", "10:~", "0x10", "nan", "inf:"],
)
def test_bad_ranges_name_the_parameter(text):
    if text == "":
        assert parse_threshold(text, "thresholds.memory.warning") is None  # empty disables
        return
    with pytest.raises(ThresholdError) as info:
        parse_threshold(text, "thresholds.memory.warning")
    assert str(info.value).startswith(f"thresholds.memory.warning: invalid range {text!r}")


@pytest.mark.parametrize("value", [True, False, [10], {"a": 1}, float("nan"), float("inf")])
def test_bad_types_name_the_parameter(value):
    with pytest.raises(ThresholdError, match=r"^thresholds\.load\.critical: invalid range"):
        parse_threshold(value, "thresholds.load.critical")


def test_start_greater_than_end_is_explained():
    with pytest.raises(ThresholdError, match="start is greater than end"):
        parse_threshold("20:10", "x")


def test_none_disables():
    assert parse_threshold(None, "x") is None
    assert evaluate(99, None, None) == OK


def test_below_direction_reads_a_bare_number_as_a_minimum():
    threshold = parse_threshold(14, "cert_warning", BELOW)
    assert threshold.text == "14:"
    assert threshold.alerts(13.99) and not threshold.alerts(14) and not threshold.alerts(400)
    assert parse_threshold("600", "uptime", BELOW).text == "600:"
    # an explicit range is never reinterpreted
    assert parse_threshold("~:600", "uptime", BELOW).alerts(601)
    assert parse_threshold("@0:600", "uptime", BELOW).alerts(300)


def test_text_is_kept_for_perfdata():
    assert parse_threshold(90, "x").text == "90"
    assert parse_threshold(0.05, "x").text == "0.05"
    assert parse_threshold("@10:20", "x").text == "@10:20"


def test_critical_is_tested_before_warning():
    warning = parse_threshold("10", "w")
    critical = parse_threshold("20", "c")
    assert evaluate(5, warning, critical) == OK
    assert evaluate(10, warning, critical) == OK
    assert evaluate(10.5, warning, critical) == WARNING
    assert evaluate(20.5, warning, critical) == CRITICAL
    # a critical range that is "looser" than warning still wins when both match
    assert evaluate(50, parse_threshold("@0:100", "w"), parse_threshold("@40:60", "c")) == CRITICAL
    assert evaluate(None, warning, critical) == UNKNOWN


def test_worst_follows_the_health_order():
    assert worst([]) == OK
    assert worst([SKIPPED, SKIPPED]) == OK
    assert worst([OK, UNKNOWN]) == UNKNOWN
    assert worst([UNKNOWN, WARNING]) == WARNING
    assert worst([WARNING, CRITICAL, UNKNOWN]) == CRITICAL
    assert worst([SKIPPED, OK]) == OK


def test_perfdata_format():
    w, c = parse_threshold(90, "w"), parse_threshold(95, "c")
    assert perfdata("/", 84.21, "%", w, c, 0, 100) == "'/'=84.21%;90;95;0;100"
    assert perfdata("load1", 0.5) == "'load1'=0.5"
    assert perfdata("it's", 3, "", None, c) == "'it''s'=3;;95"
    assert perfdata("x", None) == "'x'=U"
    assert perfdata("time", 0.1234567891, "s", None, None, 0) == "'time'=0.123457s;;;0"
    assert perfdata("cert", 3, "", parse_threshold(14, "x", BELOW)) == "'cert'=3;14:"


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)


@given(start=finite, end=finite, value=finite)
def test_inside_is_the_negation_of_outside(start, end, value):
    low, high = min(start, end), max(start, end)
    outside = parse_threshold(f"{low!r}:{high!r}", "x")
    inside = parse_threshold(f"@{low!r}:{high!r}", "x")
    assert outside.alerts(value) is not inside.alerts(value)
    assert outside.alerts(value) is (value < low or value > high)


@given(limit=st.floats(min_value=0, max_value=1e9, allow_nan=False), value=finite)
def test_bare_number_alerts_outside_zero_to_n(limit, value):
    assert parse_threshold(limit, "x").alerts(value) is (value < 0 or value > limit)
    assert not math.isnan(limit)
