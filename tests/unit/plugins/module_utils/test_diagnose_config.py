"""Parameter validation: defaults, applications, and errors that name the parameter."""

from __future__ import annotations

import pytest
from ansible_collections.healer.pooled_ssh.plugins.module_utils._diagnose_config import (
    DEFAULT_CHECKS,
    ParamError,
    build_plan,
)


def plan(**params):
    return build_plan(params)


def test_defaults():
    result = plan()
    assert [job.name for job in result.jobs] == list(DEFAULT_CHECKS)
    assert DEFAULT_CHECKS == (
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
    )
    assert result.fail_on == "critical" and result.metrics is True and result.previous == {}
    memory = result.jobs[1]
    assert memory.timeout == 10.0
    assert {k: (t.text if t else None) for k, t in memory.thresholds.items()} == {
        "warning": "90",
        "critical": "95",
        "swap_warning": "80",
        "swap_critical": "90",
    }
    assert result.jobs[3].options == {"interval": 0.5, "scope": "host"}


def test_thresholds_options_and_timeouts():
    result = plan(
        checks=["memory", "cpu", "cpu", "uptime"],
        thresholds={"memory": {"warning": "80", "swap_critical": None}, "uptime": {"warning": 3600}},
        options={"cpu": {"interval": 1, "timeout": 3}},
        check_timeout=4,
    )
    memory, cpu, uptime = result.jobs  # duplicates removed, order kept
    assert memory.thresholds["warning"].text == "80" and memory.thresholds["swap_critical"] is None
    assert uptime.thresholds["warning"].text == "3600:"
    assert cpu.options["interval"] == 1.0 and cpu.timeout == 3.0 and memory.timeout == 4.0


def test_applications():
    result = plan(
        checks=[],
        thresholds={"http": {"warning": 1}},
        applications=[
            {
                "name": "web",
                "processes": ["nginx"],
                "services": ["nginx.service"],
                "ports": [80, "443", {"host": "db", "port": "5432"}],
                "http": {"url": "https://localhost/health", "expect_status": [200], "body_match": "ok"},
                "log_errors": {"unit": "nginx.service", "since": "1 hour ago"},
                "thresholds": {"http": {"critical": 3, "cert_warning": 30}},
                "timeout": 5,
            },
            {"name": "empty", "processes": [], "http": None},
        ],
    )
    names = [job.name for job in result.jobs]
    assert names == ["web/processes", "web/services", "web/ports", "web/http", "web/log_errors"]
    jobs = {job.name: job for job in result.jobs}
    assert jobs["web/processes"].options == {"names": ["nginx"], "scope": "application"}
    assert jobs["web/ports"].options["ports"] == [{"port": 80}, {"port": 443}, {"host": "db", "port": 5432}]
    http = jobs["web/http"]
    assert http.application == "web" and http.check == "http" and http.timeout == 5.0
    # defaults < thresholds.http < applications[0].thresholds.http
    assert {k: t.text for k, t in http.thresholds.items()} == {
        "warning": "1",
        "critical": "3",
        "cert_warning": "30:",
        "cert_critical": "7:",
    }
    assert http.options["validate_certs"] is True and http.options["method"] == "GET"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"thresholds": {"memory": {"warning": "10::"}}}, "thresholds.memory.warning: invalid range '10::'"),
        ({"thresholds": {"memory": {"warnin": 1}}}, "thresholds.memory.warnin: unknown threshold"),
        ({"thresholds": {"memroy": {}}}, "thresholds.memroy: unknown check"),
        ({"thresholds": {"load": 5}}, "thresholds.load: expected a dictionary"),
        ({"thresholds": "x"}, "thresholds: expected a dictionary"),
        ({"checks": ["cpu", "disk"]}, "checks[1]: unknown check 'disk'"),
        ({"check_timeout": 0}, "check_timeout: must be greater than 0"),
        ({"check_timeout": "soon"}, "check_timeout: expected a number"),
        ({"fail_on": "always"}, "fail_on: expected one of critical, warning, never"),
        ({"options": {"cpu": {"interval": 0.05}}}, "options.cpu.interval: must be at least 0.1 s"),
        (
            {"options": {"cpu": {"samples": 3}}},
            "options.cpu.samples: unknown option (expected one of: interval, timeout)",
        ),
        ({"options": {"cpu": {"timeout": -1}}}, "options.cpu.timeout: must be greater than 0"),
        (
            {"options": {"filesystem": {"mountpoints": [""]}}},
            "options.filesystem.mountpoints[0]: expected a non-empty string",
        ),
        ({"checks": ["ports"]}, "options.ports.ports: required by the ports check"),
        ({"checks": ["http"]}, "options.http.url: required by the http check"),
        ({"checks": ["dns"]}, "options.dns.names: required by the dns check"),
        (
            {"checks": ["http"], "options": {"http": {"url": "ftp://x"}}},
            "options.http.url: expected an http:// or https:// URL",
        ),
        ({"options": {"log_errors": {"pattern": "("}}}, "options.log_errors.pattern: invalid regular expression '('"),
        ({"options": {"log_errors": {"priority": "loud"}}}, "options.log_errors.priority: expected one of emerg"),
        (
            {"options": {"http": {"url": "http://x", "validate_certs": "maybe"}}},
            "options.http.validate_certs: expected a boolean",
        ),
        (
            {"options": {"http": {"url": "http://x", "expect_status": ["ok"]}}},
            "options.http.expect_status[0]: expected an integer",
        ),
        (
            {"options": {"http": {"url": "http://x", "max_body_bytes": 0}}},
            "options.http.max_body_bytes: must be at least 1",
        ),
        ({"options": {"http": {"url": "http://x", "headers": ["a"]}}}, "options.http.headers: expected a dictionary"),
        ({"options": {"memory": "x"}}, "options.memory: expected a dictionary"),
        ({"previous": {"oom_kill": "three"}}, "previous.oom_kill: expected a number"),
        ({"previous": [1]}, "previous: expected a dictionary"),
        ({"applications": {"name": "x"}}, "applications: expected a list"),
        ({"applications": ["web"]}, "applications[0]: expected a dictionary"),
        ({"applications": [{"processes": ["x"]}]}, "applications[0].name: expected a name"),
        ({"applications": [{"name": "a/b"}]}, "applications[0].name: expected a name"),
        ({"applications": [{"name": "a"}, {"name": "a"}]}, "applications[1].name: duplicate application 'a'"),
        ({"applications": [{"name": "a", "disk": 1}]}, "applications[0].disk: unknown key"),
        ({"applications": [{"name": "a", "ports": [0]}]}, "applications[0].ports[0]: port must be 1..65535, got 0"),
        ({"applications": [{"name": "a", "ports": [{"host": "x"}]}]}, "applications[0].ports[0]: port is required"),
        (
            {"applications": [{"name": "a", "ports": [{"port": 1, "proto": "udp"}]}]},
            "applications[0].ports[0]: unknown key 'proto'",
        ),
        ({"applications": [{"name": "a", "ports": [True]}]}, "applications[0].ports[0]: expected an integer"),
        (
            {"applications": [{"name": "a", "http": {"expect_status": [200]}}]},
            "applications[0].http.url: required by the http check",
        ),
        (
            {
                "applications": [
                    {"name": "a", "http": {"url": "http://x"}, "thresholds": {"http": {"cert_warning": "x"}}}
                ]
            },
            "applications[0].thresholds.http.cert_warning: invalid range 'x'",
        ),
        (
            {"applications": [{"name": "a", "thresholds": {"memory": {}}}]},
            "applications[0].thresholds.memory: not an application check",
        ),
        ({"applications": [{"name": "a", "timeout": 0}]}, "applications[0].timeout: must be greater than 0"),
        (
            {"applications": [{"name": "a", "thresholds": {"ports": {"warning": "x:"}}}]},
            "applications[0].thresholds.ports.warning: invalid range 'x:'",
        ),
        ({"options": {"http": {"method": ""}}}, "options.http.method: expected a non-empty string"),
    ],
)
def test_bad_parameters_are_named(params, message):
    with pytest.raises(ParamError) as info:
        build_plan(params)
    assert str(info.value).startswith(message), str(info.value)


def test_boolean_strings_and_previous_numbers():
    result = plan(
        checks=["http"],
        options={"http": {"url": "http://x", "validate_certs": "no", "expect_status": 204}},
        previous={"oom_kill": "3", "boot_time": 1700000000, "other": "kept"},
        metrics=False,
    )
    assert result.jobs[0].options["validate_certs"] is False and result.jobs[0].options["expect_status"] == [204]
    assert result.previous == {"oom_kill": 3, "boot_time": 1700000000, "other": "kept"}
    assert isinstance(result.previous["oom_kill"], int)  # summaries say "2 new OOM kills", not "2.0"
    assert result.metrics is False
