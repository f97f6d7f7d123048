"""Operators see the pool: the end-of-play table, pool_info and the CLI's machine formats (issue 7)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from harness import pool
from harness.sshd import wait_until

PLAY = """
- hosts: fleet
  gather_facts: false
  tasks:
    - ansible.builtin.command: "true"
    - ansible.builtin.command: "true"
    - ansible.builtin.command: "true"

- hosts: localhost
  gather_facts: false
  connection: local
  tasks:
    - name: Read the pool from a playbook
      healer.pooled_ssh.pool_info:
      register: info
    - ansible.builtin.copy:
        content: "{{ info | to_json }}"
        dest: "{{ out }}"
        mode: "0600"
"""

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? -?[0-9.eE+-]+$')


def test_callback_table_agrees_with_pool_info_and_sshd(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=3)
    runner = make_runner(
        fleet,
        extra_env={
            "ANSIBLE_CALLBACKS_ENABLED": "healer.pooled_ssh.pool_stats",
            "ANSIBLE_POOLED_SSH_STATS_JSON": str(tmp_path / "stats.json"),
        },
    )
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    out = tmp_path / "info.json"
    result = runner.playbook(PLAY, inventory, "-e", f"out={out}")
    assert result.rc == 0, result.output_tail()
    table = result.stdout[result.stdout.index("POOLED SSH") :]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:] if line.strip()}
    header = rows.pop("host")
    assert header[:3] == ["host", "hits", "misses"]
    info = json.loads(out.read_text())
    assert info["running"] is True
    for host in fleet:
        hits, misses = int(rows[host.name][1]), int(rows[host.name][2])
        assert misses == host.accepted_count("publickey") == 1
        assert hits == 2
        assert info["stats"]["hosts"][host.name]["poolMisses"] == misses
        assert info["stats"]["hosts"][host.name]["poolHits"] == hits
    assert int(rows["TOTAL"][2]) == 3
    assert {t["host"] for t in info["transports"]} == {h.name for h in fleet}
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["total"]["poolMisses"] == 3

    # A second playbook on the warm pool: its table shows its own share (no handshake).
    again = runner.playbook(PLAY, inventory, "-e", f"out={out}")
    assert again.rc == 0, again.output_tail()
    assert json.loads((tmp_path / "stats.json").read_text())["total"]["poolMisses"] == 0
    assert all(h.accepted_count("publickey") == 1 for h in fleet)


def test_stats_json_and_prometheus_parse(make_fleet, make_runner, tmp_path, pool_dir, collections_root):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    data = json.loads(pool.cli(collections_root, pool_dir, "stats", "--json").stdout)
    for name in (
        "poolHits",
        "poolMisses",
        "activeConnections",
        "idleConnections",
        "totalConnections",
        "healthCheckFailures",
        "healthChecksPassed",
    ):
        assert name in data["total"] and all(name in h for h in data["hosts"].values())
    text = pool.cli(collections_root, pool_dir, "stats", "--prometheus").stdout
    declared = set()
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            assert len(parts) >= 3, line
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge"), line
                declared.add(parts[2])
            continue
        assert SAMPLE.match(line), line
        metric = line.split("{")[0]
        assert metric in declared, f"{metric} has no TYPE before its samples"
        samples[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
    assert samples['pooled_ssh_pool_misses_total{host="host1"}'] == 1
    assert samples['pooled_ssh_total_connections{host="host2"}'] == 1


def test_pool_info_flushes_a_host_and_stops_the_daemon(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=2)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    play = """
- hosts: localhost
  gather_facts: false
  connection: local
  tasks:
    - healer.pooled_ssh.pool_info: {flush: host1}
      check_mode: true
      register: dry
    - healer.pooled_ssh.pool_info: {flush: host1}
      register: flushed
    - healer.pooled_ssh.pool_info:
      register: after
    - ansible.builtin.assert:
        that:
          - dry is changed and dry.closed == 1
          - flushed is changed and flushed.closed == 1
          - after.transports | map(attribute='host') | list == ['host2']
    - healer.pooled_ssh.pool_info: {stop: true}
"""
    pid = pool.daemon_pid(pool_dir)
    result = runner.playbook(play, inventory)
    assert result.rc == 0, result.output_tail()
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, interval=0.1, what="the daemon to stop")
    assert fleet.host("host1").accepted_count("publickey") == 1


def test_pool_events_in_the_daemon_log_and_at_vvv(make_fleet, make_runner, tmp_path, pool_dir):
    fleet = make_fleet(count=1)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    result = runner.playbook(PLAY.split("\n- hosts: localhost", maxsplit=1)[0], inventory, "-vvv")
    assert result.rc == 0, result.output_tail()
    assert result.stdout.count("POOL created transport") == 1
    assert result.stdout.count("POOL reused transport") == 2
    log = (Path(pool_dir) / "daemon.log").read_text()
    assert log.count("created key=") == 1 and log.count("reused key=") == 2


def test_console_script_from_pip_install(make_fleet, make_runner, tmp_path, pool_dir):
    """`pip install` (./run uses an editable install) provides the `pooled-ssh` command."""
    script = Path(sys.executable).parent / "pooled-ssh"
    assert script.is_file(), "pooled-ssh is declared in pyproject.toml [project.scripts]"
    fleet = make_fleet(count=1)
    runner = make_runner(fleet)
    inventory = fleet.write_inventory(tmp_path / "inventory.yml")
    assert runner.adhoc("fleet", "ansible.builtin.command", "true", inventory).rc == 0
    out = subprocess.run(
        [str(script), "--pool-dir", str(pool_dir), "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(out)["hosts"]["host1"]["poolMisses"] == 1
    missing = subprocess.run(
        [str(script), "--pool-dir", str(tmp_path / "nothing-here"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3 and "no pool daemon is running" in missing.stderr
    assert not (tmp_path / "nothing-here").exists(), "a read-only command must not create the pool dir"
