"""The healer.pooled_ssh.diagnose role on real sshd hosts through pooled_ssh (issue 4).

The fleet's hosts are all this machine, so whatever state it is in (a busy CI runner: cpu
critical) shows on every host. Tests that need "only host3 is critical" therefore run checks
that only their thresholds can make critical.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from harness import pool

DEFAULT_CHECKS = [
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
]
STATES = {"ok", "warning", "critical", "unknown", "skipped"}
HOSTS = ["host1", "host2", "host3", "host4", "host5"]

PLAY = """
- name: Diagnose the fleet
  hosts: fleet
  gather_facts: false
  roles:
    - role: healer.pooled_ssh.diagnose
"""

DIAGNOSE_TASK = "Diagnose the host, every check in one run"
PER_CHECK_TASK = "Diagnose the host, one run per check and per application"
FAIL_TASK = "Fail the hosts whose health reached diagnose_fail_on"


def role_task(run, host: str, name: str) -> Dict[str, Any]:
    """A role task's result (the callback names it "<role> : <name>")."""
    for res in reversed(run.hosts.get(host, [])):
        if res["_task"] == name or res["_task"].endswith(" : " + name):
            return res
    raise KeyError(f"no task {name!r} on {host}: {[r['_task'] for r in run.hosts.get(host, [])]}")


def failures(run) -> Dict[str, int]:
    """Failed tasks per host (ignored failures do not count), from the play's stats."""
    return {host: stats["failures"] for host, stats in run.stats.items()}


def read_report(report: Path) -> Dict[str, Any]:
    return json.loads((report / "health.json").read_text(encoding="utf-8"))


def health_table(report: Path) -> Tuple[List[str], Dict[str, List[str]]]:
    """(columns, rows) of summary.md's first table (hosts x checks)."""
    lines = (report / "summary.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| host | health |"))
    columns = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows: Dict[str, List[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return columns, rows


def accepted(fleet) -> Dict[str, int]:
    return {h.name: h.accepted_count("publickey") for h in fleet}


def one_miss_per_host(collections_root: Path, pool_dir: Path) -> None:
    stats = pool.stats(collections_root, pool_dir)
    assert {h: stats["hosts"][h]["poolMisses"] for h in HOSTS} == {h: 1 for h in HOSTS}, stats
    assert stats["total"]["poolMisses"] == len(HOSTS)


# --------------------------------------------------------------------------- Prometheus parser

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL})(?:,{_LABEL})*,?)?\}})? (\S+)(?: (-?\d+))?$")
_VALUE = re.compile(r"^(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?Inf|NaN)$")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_prometheus(text: str) -> Dict[str, Dict[str, Any]]:
    """Validate a text exposition (format 0.0.4) as node_exporter's textfile collector reads it;
    return {family: {"help", "type", "samples": [(labels, value)]}}. Raises AssertionError.

    Every sample line must match the grammar; a family's HELP and TYPE come at most once and
    before its first sample; a family's samples are contiguous; no series is repeated.
    """
    assert text.endswith("\n"), "the file must end with a newline"
    families: Dict[str, Dict[str, Any]] = {}
    closed = set()
    current = None
    series = set()
    for number, line in enumerate(text.split("\n")[:-1], 1):
        where = f"line {number}: {line!r}"
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), where
                family = families.setdefault(name, {"help": None, "type": None, "samples": []})
                assert not family["samples"], f"{where}: {parts[1]} after the family's samples"
                key = parts[1].lower()
                assert family[key] is None, f"{where}: second {parts[1]}"
                if key == "type":
                    assert len(parts) == 4 and parts[3] in _TYPES, where
                    family["type"] = parts[3]
                else:
                    assert len(parts) == 4 and not re.search(r"\\[^\\n]", parts[3]), where
                    family["help"] = parts[3]
            continue
        match = _SAMPLE.match(line)
        assert match, f"{where}: not a sample line"
        name, labels_text, value = match.group(1), match.group(2) or "", match.group(7)
        assert _VALUE.match(value), f"{where}: bad value"
        labels = re.findall(_LABEL, labels_text)
        assert len({k for k, _value in labels}) == len(labels), f"{where}: repeated label"
        family_name = name
        if name not in families:
            base = re.sub(r"_(sum|count|bucket)$", "", name)
            family_name = base if base in families else name
        family = families.get(family_name)
        assert family is not None and family["type"] and family["help"] is not None, (
            f"{where}: HELP and TYPE must precede the samples"
        )
        if family_name != current:
            assert family_name not in closed, f"{where}: the samples of {family_name} are not contiguous"
            if current is not None:
                closed.add(current)
            current = family_name
        key = (name, tuple(sorted(labels)))
        assert key not in series, f"{where}: repeated series"
        series.add(key)
        family["samples"].append((dict(labels), float(value)))
    return families


def test_prometheus_parser_rejects_what_node_exporter_rejects():
    good = '# HELP a_total A.\n# TYPE a_total counter\na_total{instance="h",x="q\\""} 1.5e3\n'
    assert parse_prometheus(good)["a_total"]["samples"] == [({"instance": "h", "x": 'q\\"'}, 1500.0)]
    bad = [
        "a 1\n",  # no HELP/TYPE
        "# HELP a A.\n# TYPE a gauge\na{x=unquoted} 1\n",
        "# HELP a A.\n# TYPE a gauge\na 1\n# TYPE a gauge\n",
        '# HELP a A.\n# TYPE a gauge\na{x="1"} 1\na{x="1"} 2\n',
        '# HELP a A.\n# TYPE a gauge\n# HELP b B.\n# TYPE b gauge\na 1\nb 1\na{x="2"} 1\n',
        "# HELP a A.\n# TYPE a gauge\na True\n",
        "# HELP a A.\n# TYPE a gauge\na 1",
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse_prometheus(text)


# --------------------------------------------------------------------------- the role


@pytest.mark.compat
def test_role_reports_every_host_and_check_through_the_pool(fleet, runner, tmp_path, collections_root, pool_dir):
    report = tmp_path / "report"
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={"diagnose_report_dir": str(report), "diagnose_fail_on": "never", "diagnose_prometheus": True},
    )

    first = runner.run_json(PLAY, inventory)
    assert first.rc == 0, first.result.output_tail()
    health = read_report(report)
    assert health["format"] == "healer.pooled_ssh.diagnose/1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", health["generated_at"])
    assert sorted(health["hosts"]) == HOSTS and health["run_hosts"] == HOSTS
    for name, entry in health["hosts"].items():
        assert sorted(entry["checks"]) == sorted(DEFAULT_CHECKS), name  # health.json sorts its keys
        for check_name, check in entry["checks"].items():
            assert check["state"] in STATES, (name, check_name, check)
            assert isinstance(check["summary"], str) and check["summary"], (name, check_name, check)
            assert check["streak"] == (0 if check["state"] in ("ok", "skipped") else 1)
        assert entry["health"] in STATES - {"skipped"}
        assert entry["metrics"]["node_load1"][0]["value"] >= 0
        assert entry["counters"]["boot_time"] > 0 and entry["collected_at"] > 0
        assert entry["rates"] == {} and entry["rate_resets"] == ["no previous run"]
        assert role_task(first, name, DIAGNOSE_TASK)["health"] == entry["measured_health"]

    columns, rows = health_table(report)
    assert columns == ["host", "health", *DEFAULT_CHECKS]
    assert sorted(rows) == HOSTS
    for name, cells in rows.items():
        assert cells[1] == f"**{health['hosts'][name]['health']}**"
        assert cells[2:] == [health["hosts"][name]["checks"][c]["alert_state"] for c in DEFAULT_CHECKS]

    # One handshake per host: every task of the role went through the pool.
    one_miss_per_host(collections_root, pool_dir)
    assert accepted(fleet) == {h: 1 for h in HOSTS}

    second = runner.run_json(PLAY, inventory)
    assert second.rc == 0, second.result.output_tail()
    health2 = read_report(report)
    for name, entry in health2["hosts"].items():
        rates = entry["rates"]
        assert entry["rate_resets"] == [], (name, entry["rate_resets"])
        assert rates["interval_seconds"] > 0
        assert isinstance(rates["cpu_busy_ratio"], float) and 0 <= rates["cpu_busy_ratio"] <= 1, rates
        assert rates["network_receive_bytes_per_second"]["lo"] >= 0, rates
        assert rates["oom_kills"] >= 0
        # The module got the previous counters: the oom_kills check compared against them.
        assert "previous run" in entry["checks"]["oom_kills"]["summary"]
    # The warm pool served the second run: still one handshake per host.
    one_miss_per_host(collections_root, pool_dir)
    assert accepted(fleet) == {h: 1 for h in HOSTS}

    families = parse_prometheus((report / "healer.prom").read_text(encoding="utf-8"))
    assert {s[0]["instance"] for s in families["healer_host_health"]["samples"]} == set(HOSTS)
    assert families["healer_node_cpu_seconds_total"]["type"] == "counter"
    assert families["healer_node_load1"]["type"] == "gauge"
    assert {s[0]["instance"] for s in families["healer_rate_cpu_busy_ratio"]["samples"]} == set(HOSTS)
    for family in families.values():
        for labels, _value in family["samples"]:
            assert labels["instance"] in HOSTS
    assert not any(name.startswith("node_") for name in families), "every family is prefixed healer_"
    assert not list(report.glob(".*")), "no temporary file left in the report directory"


def threshold_inventory(fleet, path: Path, report: Path, **group_vars: Any) -> Path:
    """Checks that only thresholds make critical; load critical on host3 only."""
    return fleet.write_inventory(
        path,
        group_vars={
            "diagnose_report_dir": str(report),
            "diagnose_checks": ["load", "uptime", "oom_kills"],
            "diagnose_thresholds": {"load": {"warning": None, "critical": None}},
            **group_vars,
        },
        host_vars={"host3": {"diagnose_thresholds": {"load": {"critical": "@0:1000"}}}},
    )


def test_one_critical_host_fails_only_where_fail_on_says(fleet, runner, tmp_path):
    report = tmp_path / "report"
    inventory = threshold_inventory(fleet, tmp_path / "inventory.yml", report)

    run = runner.run_json(PLAY, inventory)
    assert run.rc == 2, run.result.output_tail()  # some hosts failed
    assert failures(run) == {h: int(h == "host3") for h in HOSTS}, run.stats
    module = role_task(run, "host3", DIAGNOSE_TASK)
    assert module["failed"] and module["ignore_errors"] and module["health"] == "critical"
    assert "load critical" in role_task(run, "host3", FAIL_TASK)["msg"]
    for host in HOSTS:
        if host != "host3":
            assert not role_task(run, host, DIAGNOSE_TASK).get("failed"), host
            assert role_task(run, host, FAIL_TASK).get("skipped"), host

    health = read_report(report)
    host3 = health["hosts"]["host3"]
    assert host3["health"] == "critical" and host3["failed"]
    assert host3["checks"]["load"]["state"] == "critical"
    assert host3["checks"]["load"]["thresholds"]["critical"] == "@0:1000"
    for host in HOSTS:
        if host != "host3":
            entry = health["hosts"][host]
            assert entry["health"] != "critical" and not entry["failed"], entry["msg"]
            assert entry["checks"]["load"]["state"] == "ok"
            assert entry["checks"]["load"]["thresholds"]["critical"] is None
    _columns, rows = health_table(report)
    assert next(iter(rows)) == "host3", "worst first"
    assert rows["host3"][1] == "**critical**"
    assert "**host3** load critical" in (report / "summary.md").read_text(encoding="utf-8")

    never = runner.run_json(PLAY, inventory, "-e", "diagnose_fail_on=never")
    assert never.rc == 0, never.result.output_tail()
    assert failures(never) == {h: 0 for h in HOSTS}, never.stats
    assert not role_task(never, "host3", DIAGNOSE_TASK).get("failed")
    assert read_report(report)["hosts"]["host3"]["health"] == "critical"


def test_per_check_mode_gives_the_same_checks(fleet, runner, tmp_path, collections_root, pool_dir):
    combined_report, per_check_report = tmp_path / "combined", tmp_path / "per_check"
    inventory = fleet.write_inventory(tmp_path / "inventory.yml", group_vars={"diagnose_fail_on": "never"})
    combined = runner.run_json(PLAY, inventory, "-e", f"diagnose_report_dir={combined_report}")
    assert combined.rc == 0, combined.result.output_tail()
    per_check = runner.run_json(
        PLAY, inventory, "-e", f"diagnose_report_dir={per_check_report}", "-e", "diagnose_mode=per_check"
    )
    assert per_check.rc == 0, per_check.result.output_tail()

    one = read_report(combined_report)["hosts"]
    other = read_report(per_check_report)["hosts"]
    for host in HOSTS:
        assert sorted(other[host]["checks"]) == sorted(one[host]["checks"]) == sorted(DEFAULT_CHECKS)
        for name, check in other[host]["checks"].items():
            assert check["check"] == name and check["state"] in STATES and check["summary"]
        # one module run per check, merged: host metrics once per series, a state per check
        runs = role_task(per_check, host, PER_CHECK_TASK)["results"]
        assert [r["__diagnose_unit"] for r in runs] == DEFAULT_CHECKS
        assert all(list(r["checks"]) == [r["__diagnose_unit"]] for r in runs)
        metrics = other[host]["metrics"]
        assert len(metrics["node_load1"]) == 1
        assert sorted(s["labels"]["name"] for s in metrics["healer_check_state"]) == sorted(
            n for n, c in other[host]["checks"].items() if c["state"] != "skipped"
        )
        assert set(metrics) == set(one[host]["metrics"])
        assert other[host]["mode"] == "per_check"
    one_miss_per_host(collections_root, pool_dir)


def test_damping_alerts_after_consecutive_bad_runs(fleet, runner, tmp_path):
    report = tmp_path / "report"
    inventory = threshold_inventory(fleet, tmp_path / "inventory.yml", report, diagnose_alert_after=2)

    first = runner.run_json(PLAY, inventory)
    assert first.rc == 0, first.result.output_tail()  # the first bad run does not alert
    load = read_report(report)["hosts"]["host3"]["checks"]["load"]
    assert (load["state"], load["streak"], load["pending"], load["alert_state"]) == ("critical", 1, True, "ok")
    host3 = read_report(report)["hosts"]["host3"]
    assert host3["measured_health"] == "critical" and host3["health"] != "critical" and not host3["failed"]
    assert "ok (critical 1/2)" in health_table(report)[1]["host3"]
    assert not role_task(first, "host3", DIAGNOSE_TASK).get("failed")

    second = runner.run_json(PLAY, inventory)
    assert second.rc == 2, second.result.output_tail()  # the second one does
    assert failures(second) == {h: int(h == "host3") for h in HOSTS}, second.stats
    host3 = read_report(report)["hosts"]["host3"]
    load = host3["checks"]["load"]
    assert (load["state"], load["streak"], load["pending"], load["alert_state"]) == ("critical", 2, False, "critical")
    assert host3["health"] == "critical" and host3["failed"]
    assert health_table(report)[1]["host3"][1] == "**critical**"
    for host in HOSTS:
        if host != "host3":
            assert read_report(report)["hosts"][host]["checks"]["load"]["streak"] == 0


def test_check_mode_diagnoses_but_writes_no_report(fleet, runner, tmp_path):
    report = tmp_path / "report"
    inventory = fleet.write_inventory(
        tmp_path / "inventory.yml",
        group_vars={"diagnose_report_dir": str(report), "diagnose_fail_on": "never", "diagnose_checks": ["load"]},
    )
    run = runner.run_json(PLAY, inventory, "--check")
    assert run.rc == 0, run.result.output_tail()
    assert role_task(run, "host1", DIAGNOSE_TASK)["checks"]["load"]["state"] in STATES
    assert not report.exists()


# --------------------------------------------------------------------------- Python 3.8 target

PY38_PLAY = """
- name: The module on a Python 3.8 target
  hosts: py38
  gather_facts: false
  tasks:
    - name: The target's interpreter
      ansible.builtin.setup:
        gather_subset: ["!all", "!min", "python"]

    - name: Diagnose
      healer.pooled_ssh.healer_diagnose:
        fail_on: never
      register: diagnosis

    - name: The role on the same target
      ansible.builtin.include_role:
        name: healer.pooled_ssh.diagnose
      vars:
        diagnose_fail_on: never
"""


def compat_tools() -> Tuple[str, Path]:
    """(python3.8, ansible bin dir) from HEALER_PYTHON38 and HEALER_COMPAT_ANSIBLE_BIN.

    Skips only when both are unset outside CI; set but broken (or unset in CI) fails."""
    python38 = os.environ.get("HEALER_PYTHON38", "")
    bin_dir = os.environ.get("HEALER_COMPAT_ANSIBLE_BIN", "")
    if not python38 and not bin_dir:
        if os.environ.get("CI"):
            pytest.fail("CI must set HEALER_PYTHON38 and HEALER_COMPAT_ANSIBLE_BIN (./run test does)")
        pytest.skip("HEALER_PYTHON38 and HEALER_COMPAT_ANSIBLE_BIN are unset (./run test sets them)")
    if not python38 or not bin_dir:
        pytest.fail("set both HEALER_PYTHON38 and HEALER_COMPAT_ANSIBLE_BIN, not only one")
    try:
        version = subprocess.run(
            [python38, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"HEALER_PYTHON38={python38!r} does not run: {exc}")
    if version != "3.8":
        pytest.fail(f"HEALER_PYTHON38={python38!r} is Python {version}, not 3.8")
    if not os.access(Path(bin_dir) / "ansible-playbook", os.X_OK):
        pytest.fail(f"HEALER_COMPAT_ANSIBLE_BIN={bin_dir!r} has no ansible-playbook")
    return python38, Path(bin_dir)


def test_module_and_role_on_a_python38_target(make_runner, tmp_path):
    python38, bin_dir = compat_tools()
    report = tmp_path / "report"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "children": {
                        "py38": {
                            "hosts": {
                                "py38": {
                                    "ansible_connection": "local",
                                    "ansible_python_interpreter": python38,
                                    "diagnose_report_dir": str(report),
                                }
                            }
                        }
                    }
                }
            }
        ),
        encoding="utf-8",
    )
    runner = make_runner(tmp_path / "known_hosts", python_bin_dir=str(bin_dir))
    run = runner.run_json(PY38_PLAY, inventory)
    assert run.rc == 0, run.result.output_tail()
    facts = run.task("py38", "The target's interpreter")["ansible_facts"]
    assert facts["ansible_python"]["version"]["major"] == 3 and facts["ansible_python"]["version"]["minor"] == 8
    diagnosis = run.task("py38", "Diagnose")
    assert sorted(diagnosis["checks"]) == sorted(DEFAULT_CHECKS)
    assert all(c["state"] in STATES and c["summary"] for c in diagnosis["checks"].values())
    assert not [c for c in diagnosis["checks"].values() if c["state"] == "unknown"], diagnosis["msg"]
    assert diagnosis["metrics"]["node_load1"] and diagnosis["counters"]["boot_time"] > 0
    entry = read_report(report)["hosts"]["py38"]
    assert sorted(entry["checks"]) == sorted(DEFAULT_CHECKS) and not math.isnan(entry["collected_at"])
