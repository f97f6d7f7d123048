"""The runner: per-check timeouts, errors isolated to one check, health, fail_on and the result shape."""

from __future__ import annotations

import threading

import pytest
from ansible_collections.healer.pooled_ssh.plugins.module_utils import _diagnose_checks
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import build_plan
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_runner import (
    collect_metrics,
    diagnose,
    should_fail,
)
from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import (
    SYNCED,
    UNSYNCED,
    FixtureSystem,
    command,
)


def host_system(**kwargs):
    kwargs.setdefault("adjtimex", SYNCED)
    kwargs.setdefault("commands", {"systemctl": command("")})
    return FixtureSystem("host", **kwargs)


@pytest.fixture
def blocking_check(monkeypatch):
    """Replace the load check with one that blocks until the test ends (a hung NFS statvfs)."""
    release = threading.Event()
    started = threading.Event()

    def hang(ctx):
        started.set()
        release.wait(30)
        return {"state": "ok", "summary": "late", "measured": {}, "perfdata": []}

    monkeypatch.setitem(_diagnose_checks.CHECK_FUNCTIONS, "load", hang)
    yield started
    release.set()


def test_default_run_on_the_host_fixture():
    result = diagnose({}, host_system())
    assert result["health"] == "ok" and result["failed"] is False and result["changed"] is False
    assert set(result["checks"]) == {
        "filesystem",
        "memory",
        "oom_kills",
        "cpu",
        "load",
        "processes",
        "file_descriptors",
        "services",
        "time_sync",
        "uptime",
    }
    assert result["counts"] == {"ok": 10, "warning": 0, "critical": 0, "unknown": 0, "skipped": 0}
    assert result["summary"] == "ok: 10 ok"
    assert result["msg"] == "health ok: 10 ok"
    memory = result["checks"]["memory"]
    assert set(memory) == {
        "check",
        "application",
        "state",
        "summary",
        "measured",
        "thresholds",
        "perfdata",
        "duration_seconds",
    }
    assert memory["thresholds"] == {"critical": "95", "swap_critical": "90", "swap_warning": "80", "warning": "90"}
    assert memory["perfdata"] == "'memory'=50%;90;95;0;100 'swap'=25%;80;90;0;100"
    assert result["checks"]["oom_kills"]["thresholds"]["critical"] is None
    assert result["counters"] == {"boot_time": 1700000000, "oom_kill": 3, "collected_at": 1700086400.0}
    # metrics: host collectors plus the ratios of the cpu check plus one state per check
    assert result["metrics"]["cpu_busy_ratio"] == [{"labels": {}, "value": 0.45}]
    states = {s["labels"]["name"]: s["value"] for s in result["metrics"]["healer_check_state"]}
    assert states == dict.fromkeys(result["checks"], 0)
    assert result["metrics_skipped"] == {}


def test_container_without_systemd():
    result = diagnose({}, FixtureSystem("container", adjtimex=UNSYNCED))
    checks = result["checks"]
    assert checks["services"]["state"] == "skipped"
    assert checks["services"]["summary"].startswith("skipped: no systemd")
    assert checks["time_sync"]["state"] == "warning"
    assert checks["memory"]["measured"]["scope"] == "cgroup"
    assert result["health"] == "warning" and result["failed"] is False
    assert result["counts"]["skipped"] == 1
    assert "services" not in {s["labels"]["name"] for s in result["metrics"]["healer_check_state"]}
    assert (
        result["msg"]
        == "health warning: 1 warning, 8 ok, 1 skipped - time_sync warning: clock not synchronised (uptime 86400 s)"
    )


def test_one_check_timing_out_is_unknown_and_the_others_finish(blocking_check):
    result = diagnose(
        {"checks": ["load", "memory"], "options": {"load": {"timeout": 0.05}}, "metrics": False}, host_system()
    )
    assert blocking_check.is_set()
    load = result["checks"]["load"]
    assert load["state"] == "unknown" and load["summary"] == "timed out after 0.05 s"
    assert load["duration_seconds"] == 0.05
    assert result["checks"]["memory"]["state"] == "ok"
    assert result["health"] == "unknown" and result["failed"] is False
    assert result["metrics"] == {}


def test_an_exception_is_unknown_for_that_check_only(monkeypatch):
    def broken(ctx):
        return 1 / 0

    monkeypatch.setitem(_diagnose_checks.CHECK_FUNCTIONS, "load", broken)
    result = diagnose({"checks": ["load", "memory"]}, host_system())
    assert result["checks"]["load"]["state"] == "unknown"
    assert result["checks"]["load"]["summary"] == "internal error: ZeroDivisionError: division by zero"
    assert result["checks"]["memory"]["state"] == "ok"


def test_a_bad_state_from_a_check_is_unknown(monkeypatch):
    monkeypatch.setitem(_diagnose_checks.CHECK_FUNCTIONS, "load", lambda ctx: {"state": "fine", "summary": ""})
    result = diagnose({"checks": ["load"]}, host_system())
    assert result["checks"]["load"]["state"] == "unknown"


def test_permission_denied_and_absent_files_are_skipped(monkeypatch, tmp_path):
    def denied(ctx):
        raise PermissionError(13, "Permission denied", ctx.system.path("proc/1/environ"))

    monkeypatch.setitem(_diagnose_checks.CHECK_FUNCTIONS, "load", denied)
    result = diagnose({"checks": ["load", "file_descriptors"], "metrics": False}, FixtureSystem("x", root=tmp_path))
    assert result["checks"]["load"]["summary"] == "skipped: permission denied: /proc/1/environ"
    assert result["checks"]["file_descriptors"]["summary"] == "skipped: /proc/sys/fs/file-nr is absent"
    assert result["health"] == "ok"


@pytest.mark.parametrize(
    ("health", "fail_on", "failed"),
    [
        ("ok", "critical", False),
        ("unknown", "critical", False),
        ("warning", "critical", False),
        ("critical", "critical", True),
        ("unknown", "warning", False),
        ("warning", "warning", True),
        ("critical", "warning", True),
        ("critical", "never", False),
    ],
)
def test_should_fail(health, fail_on, failed):
    assert should_fail(health, fail_on) is failed


def test_fail_on_makes_the_result_failed_with_all_data():
    params = {"checks": ["memory", "load"], "thresholds": {"memory": {"critical": 40}}}
    result = diagnose(params, host_system())
    assert result["failed"] is True and result["health"] == "critical"
    assert result["msg"].startswith(
        "Diagnosis failed: health critical: 1 critical, 1 ok - memory critical: memory 50.0%"
    )
    assert result["metrics"]["node_load1"] == [{"labels": {}, "value": 3.2}]
    assert diagnose(dict(params, fail_on="never"), host_system())["failed"] is False
    warn = {"checks": ["load"], "thresholds": {"load": {"warning": 1}}}
    assert diagnose(warn, host_system())["failed"] is False
    assert diagnose(dict(warn, fail_on="warning"), host_system())["failed"] is True


def test_applications_in_one_run():
    system = host_system(
        commands={"systemctl": command("inactive\n", 3), "journalctl": command('{"MESSAGE": "boom"}\n')}
    )
    system.http_fn = lambda *args: (200, b"ok", 0.01)
    params = {
        "checks": [],
        "applications": [
            {
                "name": "web",
                "processes": ["nginx"],
                "services": ["nginx.service"],
                "ports": [80],
                "http": {"url": "http://localhost/", "body_match": "ok"},
                "log_errors": {"unit": "nginx.service"},
            }
        ],
    }
    result = diagnose(params, system)
    checks = result["checks"]
    assert list(checks) == ["web/processes", "web/services", "web/ports", "web/http", "web/log_errors"]
    assert {name: c["state"] for name, c in checks.items()} == {
        "web/processes": "ok",
        "web/services": "critical",
        "web/ports": "ok",
        "web/http": "ok",
        "web/log_errors": "ok",
    }
    assert checks["web/http"]["application"] == "web" and checks["web/http"]["check"] == "http"
    assert result["failed"] is True
    assert result["metrics"]["probe_http_status_code"] == [
        {"labels": {"url": "http://localhost/", "application": "web"}, "value": 200}
    ]
    state = [s for s in result["metrics"]["healer_check_state"] if s["labels"]["name"] == "web/services"]
    assert state == [{"labels": {"application": "web", "name": "web/services", "check": "services"}, "value": 2}]


def test_metrics_collection_has_its_own_deadline():
    system = host_system()
    release = threading.Event()
    original = system.statvfs

    def hang(point):
        release.wait(30)
        return original(point)

    system.statvfs = hang
    try:
        metrics, skipped = collect_metrics(system, 0.05)
    finally:
        release.set()
    assert skipped == {"timeout": "metrics collection timed out after 0.05 s; partial"}
    assert "node_load1" in metrics  # what was collected before the deadline is kept


def test_plan_can_be_given():
    plan = build_plan({"checks": ["uptime"], "metrics": False})
    result = diagnose({"ignored": True}, host_system(), plan=plan)
    assert list(result["checks"]) == ["uptime"] and result["metrics"] == {}


def test_previous_counters_round_trip():
    """The ``counters`` of one run, passed back as ``previous``, count only new OOM kills."""
    first = diagnose({"checks": ["oom_kills"], "metrics": False}, host_system())
    assert first["checks"]["oom_kills"]["measured"]["new"] is None
    previous = dict(first["counters"], oom_kill=1)  # as if 2 kills happened since
    second = diagnose({"checks": ["oom_kills"], "previous": previous}, host_system())
    check = second["checks"]["oom_kills"]
    assert check["summary"] == "2 new OOM kills since the previous run (3 since boot)"
    assert check["state"] == "warning" and check["perfdata"] == "'oom_kills'=2;0;;0"
