"""Every check against the fixture trees: exact values, states, summaries and perfdata."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import urllib.error

import pytest
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_checks import (
    check_cpu,
    check_dns,
    check_file_descriptors,
    check_filesystem,
    check_http,
    check_load,
    check_log_errors,
    check_memory,
    check_oom_kills,
    check_ports,
    check_processes,
    check_services,
    check_time_sync,
    check_uptime,
    human_bytes,
    parse_failed_units,
)
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import Job
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_runner import execute
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_system import CommandResult, Skip
from ansible_collections.healer.pooled_ssh.tests.unit.plugins.module_utils.diagnose_fakes import (
    FIXTURES,
    SYNCED,
    UNSYNCED,
    FixtureSystem,
    command,
    context,
)

DER_2026 = (FIXTURES / "certs" / "utctime.der").read_bytes()  # notAfter 2026-12-23T18:10:13Z


def run_check(system, check, **kwargs):
    """Run through the runner's ``execute`` so Skip/errors become states as in production."""
    ctx = context(system, check, **kwargs)
    return execute(Job(check, check, None, ctx.options, ctx.thresholds, ctx.timeout), system, ctx.previous)


# -- filesystem --------------------------------------------------------------------------------
def test_filesystem_host_all_ok():
    result = check_filesystem(context(FixtureSystem("host"), "filesystem"))
    assert result["state"] == "ok"
    assert result["summary"] == "5 filesystems ok, fullest / 84.2% used"
    by_point = {e["mountpoint"]: e for e in result["measured"]["filesystems"]}
    assert by_point["/"]["used_percent"] == 84.21 and by_point["/"]["inodes_used_percent"] == 50.0
    assert by_point["/boot"]["used_percent"] == 42.11 and by_point["/boot"]["inodes_used_percent"] == 2.34
    assert by_point["/run"]["used_percent"] == 0.15
    assert by_point["/srv/my data"]["inodes_used_percent"] is None  # btrfs reports no inodes
    assert by_point["/media/archive"]["used_percent"] == 100.0 and by_point["/media/archive"]["state"] == "ok"
    assert "'/'=84.21%;90;95;0;100" in result["perfdata"]
    assert "'/ inodes'=50%;90;95;0;100" in result["perfdata"]
    assert not any(p.startswith("'/media/archive'") for p in result["perfdata"])  # read-only: no alerting data


def test_filesystem_thresholds_warning_and_critical():
    result = check_filesystem(
        context(
            FixtureSystem("host"), "filesystem", thresholds={"warning": 80, "critical": "84.2", "inodes_warning": 40}
        )
    )
    assert result["state"] == "critical"
    assert result["summary"] == "/ 84.2% used (critical); / inodes 50.0% used (warning)"
    warning = check_filesystem(context(FixtureSystem("host"), "filesystem", thresholds={"warning": 80}))
    assert warning["state"] == "warning" and warning["summary"] == "/ 84.2% used (warning)"


def test_filesystem_listed_mountpoints_and_missing_one():
    result = check_filesystem(context(FixtureSystem("host"), "filesystem", options={"mountpoints": ["/boot", "/nfs"]}))
    assert result["state"] == "critical"
    assert result["summary"] == "/nfs not mounted (critical)"
    assert [e["mountpoint"] for e in result["measured"]["filesystems"]] == ["/nfs", "/boot"]


def test_filesystem_container_overlay_root():
    result = check_filesystem(context(FixtureSystem("container"), "filesystem"))
    assert result["state"] == "ok"
    entries = result["measured"]["filesystems"]
    assert entries[0]["mountpoint"] == "/" and entries[0]["fstype"] == "overlay"
    assert entries[0]["used_percent"] == 88.89


def test_filesystem_statvfs_error_is_unknown_for_that_mount():
    system = FixtureSystem("host")
    original = system.statvfs

    def statvfs(point):
        if point == "/boot":
            raise PermissionError(13, "Permission denied")
        return original(point)

    system.statvfs = statvfs
    result = check_filesystem(context(system, "filesystem"))
    assert result["state"] == "unknown"
    assert result["summary"] == "/boot statvfs failed (unknown)"


# -- memory ------------------------------------------------------------------------------------
def test_memory_host():
    result = check_memory(context(FixtureSystem("host"), "memory"))
    assert result["state"] == "ok"
    assert result["measured"]["used_percent"] == 50.0 and result["measured"]["swap_used_percent"] == 25.0
    assert result["measured"]["scope"] == "host"
    assert result["summary"] == "memory 50.0% used (7.8 GiB of 15.6 GiB, 7.8 GiB available); swap 25.0% used"
    assert result["perfdata"] == ["'memory'=50%;90;95;0;100", "'swap'=25%;80;90;0;100"]


def test_memory_swap_threshold():
    result = check_memory(
        context(FixtureSystem("host"), "memory", thresholds={"swap_warning": 20, "swap_critical": 30})
    )
    assert result["state"] == "warning"
    assert check_memory(context(FixtureSystem("host"), "memory", thresholds={"critical": "50:"}))["state"] == "ok"
    assert (
        check_memory(context(FixtureSystem("host"), "memory", thresholds={"critical": "@50:60"}))["state"] == "critical"
    )


def test_memory_no_swap_is_ok():
    result = check_memory(context(FixtureSystem("noswap"), "memory", thresholds={"swap_warning": 0}))
    assert result["state"] == "ok"
    assert result["summary"].endswith("; no swap")
    assert result["measured"]["swap_used_percent"] is None
    assert result["perfdata"] == ["'memory'=50%;90;95;0;100"]


def test_memory_container_uses_the_cgroup_limit():
    result = check_memory(context(FixtureSystem("container"), "memory"))
    values = result["measured"]
    assert values["scope"] == "cgroup"
    # working set 469762048 - 46137344 inactive_file = 423624704 of 536870912
    assert values["cgroup"] == {
        "limit_bytes": 536870912,
        "current_bytes": 469762048,
        "working_set_bytes": 423624704,
    }
    assert values["used_percent"] == 78.91
    assert values["host_used_percent"] == 50.0
    assert result["summary"] == "memory 78.9% of the cgroup limit used (404.0 MiB of 512.0 MiB); no swap"
    assert check_memory(context(FixtureSystem("container"), "memory", thresholds={"warning": 75}))["state"] == "warning"


def test_memory_unlimited_cgroup_is_the_host():
    assert check_memory(context(FixtureSystem("host"), "memory"))["measured"]["scope"] == "host"


def test_memory_estimated_without_memavailable():
    result = check_memory(context(FixtureSystem("nopsi"), "memory"))
    assert result["measured"]["available_estimated"] is True and result["measured"]["used_percent"] == 45.68


# -- oom_kills ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("previous", "state", "new", "reset", "summary"),
    [
        (None, "ok", None, False, "3 OOM kills since boot; no previous run to compare"),
        (
            {"oom_kill": 3, "boot_time": 1700000000},
            "ok",
            0,
            False,
            "0 new OOM kills since the previous run (3 since boot)",
        ),
        (
            {"oom_kill": 1, "boot_time": 1700000000},
            "warning",
            2,
            False,
            "2 new OOM kills since the previous run (3 since boot)",
        ),
        (
            {"oom_kill": 1, "boot_time": 1700000001},
            "warning",
            2,
            False,
            "2 new OOM kills since the previous run (3 since boot)",
        ),
        (
            {"oom_kill": 1, "boot_time": 1690000000},
            "warning",
            3,
            True,
            "3 OOM kills since the counter reset (rebooted)",
        ),
        ({"oom_kill": 9}, "warning", 3, True, "3 OOM kills since the counter reset (counter went backwards)"),
    ],
)
def test_oom_kills(previous, state, new, reset, summary):
    result = check_oom_kills(context(FixtureSystem("host"), "oom_kills", previous=previous))
    assert (result["state"], result["measured"]["new"], result["measured"]["reset"], result["summary"]) == (
        state,
        new,
        reset,
        summary,
    )
    assert result["measured"]["oom_kill_total"] == 3 and result["measured"]["boot_time"] == 1700000000


def test_oom_kills_counter_backwards_fixture():
    result = check_oom_kills(
        context(FixtureSystem("backwards"), "oom_kills", previous={"oom_kill": 5, "boot_time": 1700000000})
    )
    assert result["measured"]["reset"] is True and result["measured"]["new"] == 1
    assert result["state"] == "warning"
    tolerant = check_oom_kills(
        context(FixtureSystem("backwards"), "oom_kills", previous={"oom_kill": 5}, thresholds={"warning": 1})
    )
    assert tolerant["state"] == "ok"


def test_oom_kills_old_kernel_is_skipped():
    result = run_check(FixtureSystem("nopsi"), "oom_kills")
    assert result["state"] == "skipped"
    assert "no oom_kill in /proc/vmstat" in result["summary"]


# -- cpu ---------------------------------------------------------------------------------------
def test_cpu_two_samples():
    system = FixtureSystem("host")
    result = check_cpu(context(system, "cpu", options={"interval": 0.25}))
    assert system.sleeps == [0.25]
    assert result["state"] == "ok"
    assert result["measured"] == {
        "busy_percent": 45.0,
        "iowait_percent": 5.0,
        "steal_percent": 2.5,
        "interval_seconds": 0.25,
    }
    assert result["summary"] == "cpu 45.0% busy, iowait 5.0%, steal 2.5% over 0.25 s"
    assert result["perfdata"] == ["'busy'=45%;90;95;0;100", "'iowait'=5%;20;;0;100", "'steal'=2.5%;10;;0;100"]
    assert result["metrics"] == [
        ("cpu_busy_ratio", 0.45, {}),
        ("cpu_iowait_ratio", 0.05, {}),
        ("cpu_steal_ratio", 0.025, {}),
    ]


@pytest.mark.parametrize(
    ("thresholds", "state"),
    [
        ({"warning": 45}, "ok"),
        ({"warning": 44.99}, "warning"),
        ({"critical": 40}, "critical"),
        ({"iowait_warning": 4}, "warning"),
        ({"steal_warning": 2, "steal_critical": 2.4}, "critical"),
    ],
)
def test_cpu_thresholds(thresholds, state):
    assert check_cpu(context(FixtureSystem("host"), "cpu", thresholds=thresholds))["state"] == state


def test_cpu_counters_going_backwards():
    result = check_cpu(context(FixtureSystem("backwards"), "cpu"))
    assert result["measured"]["busy_percent"] == 28.57
    assert result["measured"]["iowait_percent"] == 0.0 and result["measured"]["steal_percent"] == 0.0


def test_cpu_without_elapsed_time_is_unknown(tmp_path):
    (tmp_path / "proc").mkdir()
    shutil.copy(FIXTURES / "host" / "proc" / "stat", tmp_path / "proc" / "stat")
    result = run_check(FixtureSystem("x", root=tmp_path), "cpu")
    assert result["state"] == "unknown"
    assert "no CPU time elapsed" in result["summary"]


# -- load --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cpus", "per_cpu", "state"), [(4, 1.5, "ok"), (3, 2.0, "ok"), (2, 3.0, "warning"), (1, 6.0, "critical")]
)
def test_load_per_usable_cpu(cpus, per_cpu, state):
    result = check_load(context(FixtureSystem("host", cpus=cpus), "load"))
    assert result["measured"]["load5_per_cpu"] == per_cpu
    assert result["state"] == state
    assert result["measured"]["load1"] == 3.2 and result["measured"]["load15"] == 5.0


def test_load_summary_and_perfdata():
    result = check_load(context(FixtureSystem("host"), "load"))
    assert result["summary"] == "load 3.20 6.00 5.00 on 4 CPUs, load5 per CPU 1.50"
    assert result["perfdata"][-1] == "'load5_per_cpu'=1.5;2;4;0"


# -- processes ---------------------------------------------------------------------------------
def test_processes_host():
    result = check_processes(context(FixtureSystem("host"), "processes"))
    values = result["measured"]
    assert values["processes"] == 7 and values["threads"] == 10
    assert values["states"] == {"S": 5, "R": 1, "Z": 1}
    assert values["zombies"] == 1 and values["pid_max"] == 1000 and values["pids_percent"] == 1.0
    assert result["state"] == "ok"
    assert result["summary"] == "7 processes, 10 threads (1.00% of pid_max), 1 zombies"
    assert result["perfdata"] == ["'zombies'=1;5;10;0", "'pids'=1%;90;95;0;100"]


def test_processes_zombie_and_pid_thresholds():
    assert check_processes(context(FixtureSystem("host"), "processes", thresholds={"warning": 0}))["state"] == "warning"
    assert (
        check_processes(context(FixtureSystem("host"), "processes", thresholds={"pids_critical": 0.5}))["state"]
        == "critical"
    )


def test_processes_named():
    names = ["nginx", "python3", "very-long-process-name", "my (odd) proc", "postgres"]
    result = check_processes(context(FixtureSystem("host"), "processes", options={"names": names}, scope="application"))
    assert result["measured"]["named"] == {
        "nginx": 1,
        "python3": 1,
        "very-long-process-name": 1,
        "my (odd) proc": 1,
        "postgres": 0,
    }
    assert result["measured"]["missing"] == ["postgres"]
    assert result["state"] == "critical"
    assert "zombies" not in result["measured"]  # application scope: only the named processes
    assert result["summary"] == "nginx 1, python3 1, very-long-process-name 1, my (odd) proc 1, postgres missing"
    ok = check_processes(context(FixtureSystem("host"), "processes", options=["nginx"], scope="application"))
    assert ok["state"] == "ok"


# -- file_descriptors --------------------------------------------------------------------------
def test_file_descriptors():
    result = check_file_descriptors(context(FixtureSystem("host"), "file_descriptors"))
    assert result["measured"] == {"allocated": 10000, "unused": 0, "maximum": 100000, "used_percent": 10.0}
    assert result["state"] == "ok"
    assert result["summary"] == "10000 of 100000 file handles in use (10.00%)"
    assert (
        check_file_descriptors(context(FixtureSystem("host"), "file_descriptors", thresholds={"warning": 9}))["state"]
        == "warning"
    )


# -- services ----------------------------------------------------------------------------------
FAILED = (
    "\u25cf nginx.service loaded failed failed A high performance web server\ncron.service loaded failed failed cron\n"
)


def systemctl(failed: str = "", active: str = "active\n"):
    def answer(argv):
        if argv[1] == "list-units":
            return CommandResult(0, failed, "")
        assert argv[1:3] == ["is-active", "--"]
        return CommandResult(0 if set(active.split()) == {"active"} else 3, active, "")

    return answer


def test_services_without_systemd_are_skipped():
    result = run_check(FixtureSystem("container"), "services")
    assert result["state"] == "skipped"
    assert result["summary"] == "skipped: no systemd: /run/systemd/system is absent (container or another init system)"


def test_services_without_systemctl_are_skipped():
    result = run_check(FixtureSystem("host", binaries=()), "services")
    assert result["state"] == "skipped" and "systemctl is not installed" in result["summary"]


def test_services_failed_units_warn():
    system = FixtureSystem("host", commands={"systemctl": systemctl(FAILED)})
    result = check_services(context(system, "services"))
    assert result["state"] == "warning"
    assert result["measured"]["failed_units"] == ["nginx.service", "cron.service"]
    assert result["summary"] == "2 failed units: nginx.service, cron.service"
    argv, timeout = system.calls[0]
    assert argv[1:] == ["list-units", "--state=failed", "--no-legend", "--plain", "--no-pager"]
    assert timeout == 8.0  # 80% of the check's timeout


def test_services_all_fine():
    system = FixtureSystem("host", commands={"systemctl": systemctl("", "active\nactive\n")})
    result = check_services(context(system, "services", options={"units": ["sshd.service", "cron.service"]}))
    assert result["state"] == "ok"
    assert result["summary"] == "0 failed units; sshd.service active, cron.service active"


@pytest.mark.parametrize(
    ("answer", "state"),
    [("active\n", "ok"), ("activating\n", "warning"), ("inactive\n", "critical"), ("failed\n", "critical")],
)
def test_services_named_unit(answer, state):
    system = FixtureSystem("host", commands={"systemctl": systemctl("", answer)})
    result = check_services(context(system, "services", options=["nginx.service"], scope="application"))
    assert result["state"] == state
    assert result["measured"] == {"units": {"nginx.service": answer.strip()}}
    assert [c[0][1] for c in system.calls] == ["is-active"]  # application scope: no failed-unit listing


def test_services_systemctl_failure_is_unknown():
    system = FixtureSystem("host", commands={"systemctl": command("", 1, "Failed to connect to bus")})
    result = run_check(system, "services")
    assert result["state"] == "unknown" and "Failed to connect to bus" in result["summary"]


def test_services_systemctl_timeout_is_unknown():
    def hang(argv):
        raise subprocess.TimeoutExpired(argv, 8.0)

    result = run_check(FixtureSystem("host", commands={"systemctl": hang}), "services")
    assert result["state"] == "unknown"
    assert result["summary"] == "/usr/bin/systemctl timed out after 8 s"


def test_parse_failed_units_plain_and_bulleted():
    assert parse_failed_units(FAILED) == ["nginx.service", "cron.service"]
    assert parse_failed_units("\n") == []


# -- ports -------------------------------------------------------------------------------------
def test_ports_listening():
    result = check_ports(context(FixtureSystem("host"), "ports", options=[22, 80, "5432", 443]))
    assert result["state"] == "critical"
    assert [p["listening"] for p in result["measured"]["ports"]] == [True, True, True, False]
    assert result["summary"] == "22 listening, 80 listening, 5432 listening, 443 not listening (critical)"


def test_ports_connect():
    system = FixtureSystem("host")
    answers = {"db": 0.002, "slow": 2.0, "slower": 6.0}

    def connect(host, port, timeout):
        if host == "down":
            raise ConnectionRefusedError(111, "Connection refused")
        if host == "hang":
            raise socket.timeout("timed out")
        return answers[host]

    system.connect_fn = connect
    targets = [{"host": h, "port": 5432} for h in ("db", "slow", "slower", "down", "hang")]
    result = check_ports(context(system, "ports", options={"ports": targets}))
    states = [p["state"] for p in result["measured"]["ports"]]
    assert states == ["ok", "warning", "critical", "critical", "critical"]
    assert result["summary"] == (
        "db:5432 connected in 0.002 s, slow:5432 connected in 2.000 s (warning), "
        "slower:5432 connected in 6.000 s (critical), down:5432 refused (critical), hang:5432 timed out (critical)"
    )
    assert ("probe_success", 0, {"target": "down:5432"}) in result["metrics"]
    assert ("probe_duration_seconds", 0.002, {"target": "db:5432"}) in result["metrics"]
    assert result["perfdata"][0] == "'db:5432'=0.002s;1;5;0"


def test_ports_without_proc_net_are_skipped(tmp_path):
    result = run_check(FixtureSystem("x", root=tmp_path), "ports", options=[22])
    assert result["state"] == "skipped" and "/proc/net/tcp" in result["summary"]


# -- http --------------------------------------------------------------------------------------
def http_system(status=200, body=b'{"status": "ok"}', seconds=0.1, der=DER_2026, now=1795456090.0):
    system = FixtureSystem("host", now=now)
    system.http_fn = lambda *args: (status, body, seconds)
    system.cert_fn = lambda host, port, timeout: der
    return system


def test_http_ok_with_certificate():
    # now = 2026-11-23T17:48:10Z: the certificate has 30.01 days left
    system = http_system()
    result = check_http(
        context(system, "http", options={"url": "https://app.example:8443/health", "body_match": '"status": "ok"'})
    )
    assert result["state"] == "ok"
    assert result["measured"]["cert_days_left"] == 30.02
    assert result["measured"]["cert_not_after"] == "2026-12-23T18:10:13Z"
    assert result["measured"]["body_matched"] is True
    assert result["summary"] == "https://app.example:8443/health 200 in 0.100 s, certificate expires in 30.0 days"
    assert result["perfdata"] == ["'time'=0.1s;2;5;0", "'cert_days'=30.02;14:;7:"]
    labels = {"url": "https://app.example:8443/health"}
    assert ("probe_http_status_code", 200, labels) in result["metrics"]
    assert ("probe_ssl_earliest_cert_expiry", 1798049413.0, labels) in result["metrics"]
    assert ("probe_success", 1, labels) in result["metrics"]


@pytest.mark.parametrize(
    ("days_before", "state"),
    [(40, "ok"), (14.5, "ok"), (13.9, "warning"), (7.1, "warning"), (6.9, "critical"), (-1, "critical")],
)
def test_http_certificate_expiry(days_before, state):
    not_after = 1798049413.0
    result = check_http(
        context(http_system(now=not_after - days_before * 86400), "http", options={"url": "https://x/"})
    )
    assert result["state"] == state


@pytest.mark.parametrize(
    ("status", "expect", "state"),
    [
        (200, None, "ok"),
        (301, None, "ok"),
        (404, None, "warning"),
        (503, None, "critical"),
        (404, [404], "ok"),
        (200, [201, 204], "critical"),
    ],
)
def test_http_status(status, expect, state):
    options = {"url": "http://127.0.0.1/"}
    if expect:
        options["expect_status"] = expect
    assert check_http(context(http_system(status=status), "http", options=options))["state"] == state


def test_http_latency_and_body():
    slow = check_http(context(http_system(seconds=2.5), "http", options={"url": "http://x/"}))
    assert slow["state"] == "warning"
    miss = check_http(context(http_system(), "http", options={"url": "http://x/", "body_match": "healthy"}))
    assert miss["state"] == "critical" and "body does not match 'healthy'" in miss["summary"]


def test_http_connection_failures_are_critical():
    system = http_system()

    def refuse(*args):
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    system.http_fn = refuse
    result = check_http(context(system, "http", options={"url": "http://127.0.0.1:9/"}))
    assert result["state"] == "critical"
    assert result["summary"] == "http://127.0.0.1:9/: [Errno 111] Connection refused"
    assert result["metrics"] == [("probe_success", 0, {"url": "http://127.0.0.1:9/"})]


def test_http_protocol_errors_are_critical():
    system = http_system()

    def garbage(*args):
        raise http.client.BadStatusLine("SSH-2.0-OpenSSH_9.2")

    system.http_fn = garbage
    result = check_http(context(system, "http", options={"url": "http://127.0.0.1:22/"}))
    assert result["state"] == "critical"
    assert result["summary"] == "http://127.0.0.1:22/: SSH-2.0-OpenSSH_9.2"


def test_http_unreadable_certificate_is_unknown_part():
    result = check_http(context(http_system(der=b"garbage"), "http", options={"url": "https://x/"}))
    assert result["state"] == "unknown" and "certificate unreadable" in result["summary"]


# -- dns ---------------------------------------------------------------------------------------
def test_dns():
    system = FixtureSystem("host")

    def resolve(name):
        if name == "missing.invalid":
            raise socket.gaierror(-2, "Name or service not known")
        return ["192.0.2.1", "2001:db8::1"]

    system.resolve_fn = resolve
    result = check_dns(context(system, "dns", options=["example.com", "missing.invalid"]))
    assert result["state"] == "critical"
    assert result["measured"]["names"][0] == {
        "name": "example.com",
        "addresses": ["192.0.2.1", "2001:db8::1"],
        "seconds": 0.0,
        "state": "ok",
    }
    assert result["summary"] == "example.com in 0.000 s, missing.invalid failed: [Errno -2] Name or service not known"


def test_dns_resolver_that_never_answers():
    system = FixtureSystem("host")
    release = threading.Event()
    system.resolve_fn = lambda name: release.wait(30) and []
    try:
        result = check_dns(context(system, "dns", options={"names": ["slow.example"], "timeout": 0.1}))
    finally:
        release.set()
    assert result["state"] == "critical"
    assert "no answer within 0.08 s" in result["summary"]


# -- time_sync ---------------------------------------------------------------------------------
def test_time_sync_synced():
    result = check_time_sync(context(FixtureSystem("host", adjtimex=SYNCED), "time_sync"))
    assert result["state"] == "ok"
    assert result["summary"] == "clock synchronised, offset 0.012500 s"
    assert result["perfdata"] == ["'offset'=0.0125s;0.05;;0"]


def test_time_sync_offset_warns_in_both_directions():
    behind = dict(SYNCED, offset_seconds=-0.2)
    assert check_time_sync(context(FixtureSystem("host", adjtimex=behind), "time_sync"))["state"] == "warning"


def test_time_sync_unsynced_after_grace_warns():
    result = check_time_sync(context(FixtureSystem("host", adjtimex=UNSYNCED), "time_sync"))
    assert result["state"] == "warning"
    assert result["summary"] == "clock not synchronised (uptime 86400 s)"
    early = check_time_sync(
        context(FixtureSystem("host", adjtimex=UNSYNCED), "time_sync", options={"grace_seconds": 90000})
    )
    assert early["state"] == "ok" and "not synchronised yet" in early["summary"]


def test_time_sync_falls_back_to_timedatectl():
    system = FixtureSystem("host", commands={"timedatectl": command("yes\n")})
    result = check_time_sync(context(system, "time_sync"))
    assert result["state"] == "ok" and result["measured"]["source"] == "timedatectl"
    assert system.calls[0][0][1:] == ["show", "-p", "NTPSynchronized", "--value"]


def test_time_sync_without_any_source_is_skipped():
    result = run_check(FixtureSystem("container"), "time_sync")
    assert result["state"] == "skipped" and "adjtimex unavailable" in result["summary"]


# -- uptime ------------------------------------------------------------------------------------
def test_uptime_host():
    result = check_uptime(context(FixtureSystem("host"), "uptime"))
    assert result["state"] == "ok"
    assert result["summary"] == "up 1d 0h 0m"
    assert result["measured"]["boot_time"] == 1700000000 and result["measured"]["reboot_required"] is False
    assert result["perfdata"] == ["'uptime'=86400.5s;600:;;0"]


def test_uptime_recent_boot_and_reboot_required(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "uptime").write_text("599.99 100.0\n")
    (tmp_path / "var" / "run").mkdir(parents=True)
    (tmp_path / "var" / "run" / "reboot-required").write_text("*** System restart required ***\n")
    (tmp_path / "var" / "run" / "reboot-required.pkgs").write_text("linux-image-6.1.0\nlibc6\nlibc6\n")
    result = check_uptime(context(FixtureSystem("x", root=tmp_path), "uptime"))
    assert result["state"] == "warning"
    assert result["summary"] == "up 9m 59s (warning), reboot required"
    assert result["measured"]["reboot_required_packages"] == ["libc6", "linux-image-6.1.0"]
    assert result["measured"]["boot_time"] is None  # no /proc/stat in this tree
    (tmp_path / "proc" / "uptime").write_text("600 100.0\n")
    assert (
        check_uptime(context(FixtureSystem("x", root=tmp_path), "uptime", thresholds={"warning": None}))["state"]
        == "warning"
    )


# -- log_errors --------------------------------------------------------------------------------
def test_log_errors_file_mode():
    result = check_log_errors(context(FixtureSystem("host"), "log_errors", options={"path": "/var/log/app.log"}))
    assert result["measured"]["count"] == 3
    assert result["measured"]["last"][-1] == "2024-01-01 10:00:05 FATAL giving up"
    assert result["state"] == "ok"
    assert result["summary"] == "3 error lines in the last 1.0 MiB of /var/log/app.log"
    custom = check_log_errors(
        context(
            FixtureSystem("host"),
            "log_errors",
            options={"path": "/var/log/app.log", "pattern": "WARN"},
            thresholds={"warning": 0},
        )
    )
    assert custom["measured"]["count"] == 1 and custom["state"] == "warning"


def test_log_errors_file_absent_is_skipped():
    result = run_check(FixtureSystem("host"), "log_errors", options={"path": "/var/log/none.log"})
    assert result["state"] == "skipped" and "/var/log/none.log is absent" in result["summary"]


def test_log_errors_journal():
    lines = [json.dumps({"MESSAGE": f"disk error {i}", "PRIORITY": "3"}) for i in range(12)]
    lines.append(json.dumps({"MESSAGE": list(b"binary \xff message"), "PRIORITY": "3"}))
    system = FixtureSystem("host", commands={"journalctl": command("\n".join(lines) + "\n")})
    result = check_log_errors(context(system, "log_errors", options={"unit": "nginx.service", "since": "10 min ago"}))
    assert result["measured"]["count"] == 13
    assert result["state"] == "warning"
    assert result["measured"]["last"][-1] == "binary \ufffd message"
    assert result["summary"] == "13 error lines since 10 min ago in nginx.service"
    argv = system.calls[0][0]
    assert argv[1:] == [
        "--no-pager",
        "--quiet",
        "--output=json",
        "--priority=err",
        "--since=10 min ago",
        "--unit=nginx.service",
    ]


def test_log_errors_without_journal_is_skipped():
    result = run_check(FixtureSystem("container"), "log_errors")
    assert result["state"] == "skipped" and "no systemd journal" in result["summary"]


def test_log_errors_journalctl_failure_is_unknown():
    system = FixtureSystem("host", commands={"journalctl": command("", 1, "Failed to parse timestamp: bogus")})
    result = run_check(system, "log_errors", options={"since": "bogus"})
    assert result["state"] == "unknown" and "Failed to parse timestamp" in result["summary"]


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(16384000 * 1024) == "15.6 GiB"


def test_skip_is_an_exception_with_a_reason():
    assert str(Skip("why")) == "why"
