"""The diagnose role's report logic: merging runs, rates, counter resets, damping, the fleet."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.healer.pooled_ssh.plugins.filter import diagnose_report as filters
from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_report as report

NOW = "2026-01-01T00:00:00Z"


def check(state: str, summary: str = "") -> Dict[str, Any]:
    return {"state": state, "summary": summary or f"it is {state}"}


def cpu(**modes: float) -> List[Dict[str, Any]]:
    """Two CPUs sharing each mode's seconds equally."""
    return [
        {"labels": {"cpu": str(n), "mode": mode}, "value": value / 2} for mode, value in modes.items() for n in range(2)
    ]


def run(
    checks: Dict[str, Any],
    *,
    collected_at: float = 100.0,
    boot_time: float = 10.0,
    oom_kill: Any = 0,
    cpu_modes: Any = None,
    rx: float = 1000.0,
    tx: float = 500.0,
    **extra: Any,
) -> Dict[str, Any]:
    """A module result as the role registers it."""
    metrics = {
        "node_load1": [{"labels": {}, "value": 0.5}],
        "node_cpu_seconds_total": cpu(**(cpu_modes or {"user": 10, "system": 5, "idle": 80, "iowait": 5})),
        "node_network_receive_bytes_total": [{"labels": {"device": "lo"}, "value": rx}],
        "node_network_transmit_bytes_total": [{"labels": {"device": "lo"}, "value": tx}],
    }
    return {
        "checks": checks,
        "metrics": metrics,
        "metrics_skipped": {},
        "counters": {"collected_at": collected_at, "boot_time": boot_time, "oom_kill": oom_kill},
        **extra,
    }


def entry(runs: Any, previous: Any = None, **kwargs: Any) -> Dict[str, Any]:
    options = {"mode": "combined", "alert_after": 1, "fail_on": "critical", "reported_at": NOW, **kwargs}
    return report.host_entry(runs if isinstance(runs, list) else [runs], previous, **options)


# --------------------------------------------------------------------------- merging


def test_per_check_runs_merge_checks_and_keep_one_sample_per_series():
    first = run({"load": check("ok")}, __diagnose_unit="load")
    second = run({"cpu": check("warning")}, __diagnose_unit="cpu", collected_at=101.0)
    second["metrics"]["node_load1"] = [{"labels": {}, "value": 0.7}]
    second["metrics"]["node_extra"] = [{"labels": {"a": "1"}, "value": 1}]
    merged = report.merge_runs([first, second])
    assert list(merged["checks"]) == ["load", "cpu"]
    assert merged["metrics"]["node_load1"] == [{"labels": {}, "value": 0.7}], "the latest run's sample"
    assert merged["metrics"]["node_extra"] == [{"labels": {"a": "1"}, "value": 1}]
    assert len(merged["metrics"]["node_cpu_seconds_total"]) == 8
    assert merged["counters"]["collected_at"] == 101.0, "the last run's counters"
    assert merged["errors"] == []


def test_runs_without_checks_become_error_lines():
    runs = [
        {"failed": True, "msg": "boom", "__diagnose_unit": "dns"},
        {"skipped": True, "__diagnose_unit": {"name": "postgres"}},
        {"changed": False},
    ]
    assert report.merge_runs(runs)["errors"] == [
        "check dns did not run: boom",
        "application postgres did not run: skipped",
        "diagnosis did not run: no result",
    ]
    e = entry(runs)
    assert e["health"] == e["measured_health"] == "unknown" and e["failed"]
    assert e["summary"] == "unknown: no checks"
    assert e["msg"].startswith("Diagnosis failed: health unknown: no checks - check dns did not run: boom; ")
    assert e["collected_at"] is None and e["collected_at_iso"] is None


def test_a_single_run_keeps_its_metrics_as_they_are():
    one = run({"load": check("ok")})
    assert report.merge_runs([one])["metrics"] == one["metrics"]


# --------------------------------------------------------------------------- rates and resets


def test_rates_between_two_runs():
    before = entry(run({"load": check("ok")}, collected_at=100.0, oom_kill=1))
    assert before["rates"] == {} and before["rate_resets"] == ["no previous run"]
    assert before["totals"]["cpu_seconds_total"] == {"user": 10, "system": 5, "idle": 80, "iowait": 5}
    after = entry(
        run(
            {"load": check("ok")},
            collected_at=110.0,
            oom_kill=3,
            rx=2000.0,
            tx=500.0,
            cpu_modes={"user": 16, "system": 8, "idle": 85, "iowait": 6, "guest": 99},
        ),
        before,
    )
    assert after["rate_resets"] == []
    assert after["rates"] == {
        "interval_seconds": 10.0,
        "cpu_busy_ratio": round(9 / 15, 4),  # guest is already in user, and new modes are ignored
        "cpu_iowait_ratio": round(1 / 15, 4),
        "network_receive_bytes_per_second": {"lo": 100.0},
        "network_transmit_bytes_per_second": {"lo": 0.0},
        "oom_kills": 2,
    }
    assert after["collected_at_iso"] == "1970-01-01T00:01:50Z"


def test_a_reboot_resets_every_rate():
    before = entry(run({"load": check("ok")}, boot_time=10.0))
    after = entry(run({"load": check("ok")}, collected_at=200.0, boot_time=150.0, rx=1.0), before)
    assert after["rates"] == {} and after["rate_resets"] == ["the host rebooted (boot time changed)"]


def test_the_clock_must_advance():
    before = entry(run({"load": check("ok")}, collected_at=100.0))
    after = entry(run({"load": check("ok")}, collected_at=100.0), before)
    assert after["rates"] == {} and after["rate_resets"] == ["the collection time did not advance"]


def test_a_counter_that_went_backwards_drops_only_its_own_rates():
    before = entry(run({"load": check("ok")}, oom_kill=5, rx=5000.0))
    after = entry(
        run(
            {"load": check("ok")},
            collected_at=104.0,
            oom_kill=1,
            rx=100.0,
            tx=900.0,
            cpu_modes={"user": 1, "system": 5, "idle": 90, "iowait": 5},
        ),
        before,
    )
    assert after["rate_resets"] == [
        "cpu counters went backwards",
        "network receive counter of lo went backwards",
        "oom_kill counter went backwards",
    ]
    assert after["rates"] == {"interval_seconds": 4.0, "network_transmit_bytes_per_second": {"lo": 100.0}}


def test_no_oom_rate_without_numbers_and_no_cpu_rate_without_time():
    before = entry(run({"load": check("ok")}, oom_kill=None))
    after = entry(run({"load": check("ok")}, collected_at=101.0, oom_kill=None), before)
    assert "oom_kills" not in after["rates"] and "cpu_busy_ratio" not in after["rates"]
    assert after["rate_resets"] == []


# --------------------------------------------------------------------------- damping


def test_damping_alerts_after_consecutive_bad_runs():
    checks = {"load": check("critical", "load 9"), "uptime": check("ok"), "dns": check("skipped")}
    first = entry(run(checks), alert_after=2)
    load = first["checks"]["load"]
    assert (load["streak"], load["pending"], load["alert_state"]) == (1, True, "ok")
    assert first["checks"]["dns"]["alert_state"] == "skipped" and first["checks"]["dns"]["streak"] == 0
    assert first["health"] == "ok" and first["measured_health"] == "critical" and not first["failed"]
    assert first["summary"] == "ok: 2 ok, 1 skipped, 1 pending"
    assert first["counts"] == {"ok": 2, "warning": 0, "critical": 0, "unknown": 0, "skipped": 1}

    second = entry(run(checks, collected_at=110.0), first, alert_after=2)
    load = second["checks"]["load"]
    assert (load["streak"], load["pending"], load["alert_state"]) == (2, False, "critical")
    assert second["health"] == "critical" and second["failed"]
    assert second["msg"] == "Diagnosis failed: health critical: 1 critical, 1 ok, 1 skipped - load critical: load 9"

    recovered = entry(run({**checks, "load": check("ok")}, collected_at=120.0), second, alert_after=2)
    assert recovered["checks"]["load"]["streak"] == 0 and recovered["health"] == "ok"


def test_fail_on_and_alert_after_floor():
    checks = {"load": check("warning")}
    assert entry(run(checks), fail_on="warning")["failed"]
    assert not entry(run(checks), fail_on="critical")["failed"]
    never = entry(run({"load": check("critical")}), fail_on="never", alert_after=0)
    assert not never["failed"] and never["alert_after"] == 1 and never["health"] == "critical"


def test_a_broken_previous_streak_counts_from_zero():
    previous = {"checks": {"load": {"streak": "many"}}}
    assert entry(run({"load": check("unknown")}), previous)["checks"]["load"]["streak"] == 1


def test_problems_worst_first():
    checks = {"a": check("warning", "wa"), "b": check("critical", "cb"), "c": check("unknown", "uc")}
    assert entry(run(checks), fail_on="never")["msg"] == (
        "health critical: 1 critical, 1 warning, 1 unknown - b critical: cb; a warning: wa; c unknown: uc"
    )


# --------------------------------------------------------------------------- the fleet


def test_a_host_without_a_diagnosis_keeps_its_previous_state_and_is_stale():
    previous_host = entry(run({"load": check("critical")}), alert_after=3)
    previous = {"format": report.REPORT_FORMAT, "hosts": {"b": previous_host}}
    fresh = entry(run({"load": check("ok")}))
    hosts = report.fleet(["b", "a"], [{}, fresh], previous, NOW)
    assert list(hosts) == ["a", "b"]
    assert hosts["a"] is fresh
    stale = hosts["b"]
    assert stale["stale"] and stale["failed"] and stale["health"] == "unknown"
    assert stale["checks"] == previous_host["checks"] and stale["counters"] == previous_host["counters"]
    assert stale["rates"] == {} and stale["rate_resets"] == [report.STALE_REASON]
    unknown = report.fleet(["c"], [None], {}, NOW)["c"]
    assert unknown["checks"] == {} and unknown["collected_at"] is None


def test_layout_worst_first_and_columns_of_diagnosed_hosts():
    hosts = {
        "a": {"health": "ok", "checks": {"load": {}, "cpu": {}}},
        "b": {"health": "critical", "checks": {"dns": {}, "load": {}}},
        "c": {"health": "unknown", "stale": True, "checks": {"old": {}}},
        "d": {"health": "warning", "checks": {}},
    }
    assert report.layout(hosts) == {"hosts": ["b", "d", "c", "a"], "columns": ["dns", "load", "cpu"]}


def test_previous_report_only_in_this_format():
    good = {"format": report.REPORT_FORMAT, "hosts": {}}
    assert report.previous_report(good) == good
    assert report.previous_report({"format": "other/1"}) == {}
    assert report.previous_report([1]) == {}


# --------------------------------------------------------------------------- the filters


def test_filters_are_registered_and_validate_their_inputs():
    names = filters.FilterModule().filters()
    assert {"diagnose_host_entry", "diagnose_fleet", "diagnose_previous_report", "diagnose_layout"} <= set(names)
    one = run({"load": check("ok")})
    original = copy.deepcopy(one)
    e = filters.diagnose_host_entry(one, None, "combined", "1", "critical")
    assert e["health"] == "ok" and e["reported_at"].endswith("Z")
    assert one == original, "the registered result is not modified"
    with pytest.raises(AnsibleFilterError, match="fail_on"):
        filters.diagnose_host_entry([one], None, "combined", 1, "sometimes")
    with pytest.raises(AnsibleFilterError, match="unexpected module result"):
        filters.diagnose_host_entry([{"checks": {"load": {"summary": "no state"}}}])
    with pytest.raises(AnsibleFilterError, match="2 entries for 1 hosts"):
        filters.diagnose_fleet([{}, {}], ["a"])


def test_every_filter_has_its_documentation():
    here = Path(filters.__file__).parent
    for name in filters.FilterModule().filters():
        doc = yaml.safe_load((here / f"{name}.yml").read_text(encoding="utf-8"))
        assert doc["DOCUMENTATION"]["name"] == name and doc["DOCUMENTATION"]["short_description"], name
        assert "_input" in doc["DOCUMENTATION"]["options"] and "_value" in doc["RETURN"], name
