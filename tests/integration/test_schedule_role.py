"""healer.pooled_ssh.schedule: the diagnose role every N minutes through a warm pool, one run at a time.

systemd is not PID 1 here, so the role writes the units without enabling them (the same files
an enabled install gets) and the test starts the service's ExecStart itself, as the timer would.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Dict

PLAY = """
- name: Install the scheduled diagnosis on the controller
  hosts: localhost
  gather_facts: false
  roles:
    - role: healer.pooled_ssh.schedule
"""


def unit_values(path: Path) -> Dict[str, str]:
    """key=value lines of a systemd unit (the last of a repeated key)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def start_service(exec_start: str) -> subprocess.CompletedProcess:
    """What systemd does for a oneshot unit: run ExecStart with a bare environment."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [exec_start],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        check=False,
    )


def test_two_scheduled_runs_share_a_warm_pool_and_never_overlap(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=3)
    names = [h.name for h in fleet]
    runner = make_runner(fleet)
    report, state, units = tmp_path / "report", tmp_path / "state", tmp_path / "units"
    units.mkdir()
    hosts_inventory = fleet.write_inventory(
        tmp_path / "fleet.yml",
        group_vars={
            "diagnose_report_dir": str(report),
            "diagnose_fail_on": "never",
            "diagnose_checks": ["load", "uptime"],
        },
    )
    env = runner.env()
    carried = {
        k: env[k]
        for k in (
            "ANSIBLE_CONFIG",
            "ANSIBLE_COLLECTIONS_PATH",
            "ANSIBLE_POOLED_SSH_POOL_DIR",
            "ANSIBLE_POOLED_SSH_KNOWN_HOSTS_FILE",
            "ANSIBLE_HOME",
            "ANSIBLE_LOCAL_TEMP",
            "ANSIBLE_PIPELINING",
            "LC_ALL",
        )
    }
    # the pool's counters as a node_exporter textfile too, from the pool_stats callback
    textfile = tmp_path / "textfile" / "pooled_ssh.prom"
    textfile.parent.mkdir()
    carried.update(
        ANSIBLE_CALLBACKS_ENABLED="healer.pooled_ssh.pool_stats", ANSIBLE_POOLED_SSH_STATS_PROMETHEUS=str(textfile)
    )
    controller = tmp_path / "controller.yml"
    controller.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": fleet.python}}
                }
            }
        ),
        encoding="utf-8",
    )
    install = runner.run_json(
        PLAY,
        controller,
        "-e",
        json.dumps(
            {
                "schedule_inventory": str(hosts_inventory),
                "schedule_interval_minutes": 1,
                "schedule_method": "systemd",
                "schedule_enable": False,
                "schedule_state_dir": str(state),
                "schedule_unit_dir": str(units),
                "schedule_environment": carried,
            }
        ),
    )
    assert install.rc == 0, install.result.output_tail()

    service = unit_values(units / "healer-diagnose.service")
    timer = unit_values(units / "healer-diagnose.timer")
    assert service["Type"] == "oneshot" and timer["OnUnitActiveSec"] == "1min"
    assert timer["Unit"] == "healer-diagnose.service"
    script = Path(service["ExecStart"])
    text = script.read_text(encoding="utf-8")
    # the pool outlives the interval (60 s): transports and the daemon stay for the next run
    timeouts = {k: int(v) for k, v in re.findall(r"^(ANSIBLE_POOLED_SSH_(?:DAEMON_)?IDLE_TIMEOUT)=(\d+)$", text, re.M)}
    assert timeouts == {"ANSIBLE_POOLED_SSH_IDLE_TIMEOUT": 180, "ANSIBLE_POOLED_SSH_DAEMON_IDLE_TIMEOUT": 180}

    first = start_service(str(script))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert {h.name: h.accepted_count("publickey") for h in fleet} == {n: 1 for n in names}

    second = start_service(str(script))
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert {h.name: h.accepted_count("publickey") for h in fleet} == {n: 1 for n in names}, "0 new logins"
    history = (report / "history.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(history) == 2
    assert json.loads(history[1])["pool"]["logins"] == 0
    samples = dict(re.findall(r'^(pooled_ssh_\w+\{host="[^"]+"\}) (\S+)$', textfile.read_text(encoding="utf-8"), re.M))
    for name in names:  # the daemon's own counters: one login per host over both runs, then reuses
        assert float(samples[f'pooled_ssh_pool_misses_total{{host="{name}"}}']) == 1, samples
        assert float(samples[f'pooled_ssh_pool_hits_total{{host="{name}"}}']) >= 1, samples
    assert not [p for p in textfile.parent.iterdir() if p != textfile], "no temporary file left"

    # A start while another run holds the lock is refused, and does nothing.
    with open(state / "run.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = start_service(str(script))
    assert refused.returncode == 75, refused.stdout + refused.stderr
    assert "another run holds" in refused.stderr
    assert len((report / "history.jsonl").read_text(encoding="utf-8").splitlines()) == 2

    # The installation is idempotent.
    again = runner.run_json(
        PLAY,
        controller,
        "-e",
        json.dumps(
            {
                "schedule_inventory": str(hosts_inventory),
                "schedule_interval_minutes": 1,
                "schedule_method": "systemd",
                "schedule_enable": False,
                "schedule_state_dir": str(state),
                "schedule_unit_dir": str(units),
                "schedule_environment": carried,
            }
        ),
    )
    assert again.rc == 0 and sum(s["changed"] for s in again.stats.values()) == 0, again.stats


def test_the_schedule_refuses_an_idle_timeout_below_the_interval(make_runner, tmp_path):
    runner = make_runner(tmp_path / "known_hosts")
    controller = tmp_path / "controller.yml"
    controller.write_text(
        json.dumps({"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}}), encoding="utf-8"
    )
    run = runner.run_json(
        PLAY,
        controller,
        "-e",
        json.dumps(
            {
                "schedule_inventory": "/nonexistent",
                "schedule_interval_minutes": 10,
                "schedule_idle_timeout": 300,
                "schedule_state_dir": str(tmp_path / "state"),
                "schedule_method": "cron",
                "schedule_enable": False,
            }
        ),
    )
    assert run.rc == 2, run.result.output_tail()
    assert "above the interval" in run.result.stdout
    assert not (tmp_path / "state").exists()
