"""Every plugin, module and the role's argument spec render with ansible-doc, without warnings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PLUGINS = [
    ("connection", "healer.pooled_ssh.pooled_ssh"),
    ("callback", "healer.pooled_ssh.pool_stats"),
    ("module", "healer.pooled_ssh.healer_diagnose"),
    ("module", "healer.pooled_ssh.pool_info"),
    ("module", "healer.pooled_ssh.pool"),
    ("role", "healer.pooled_ssh.diagnose"),
    ("role", "healer.pooled_ssh.schedule"),
    ("filter", "healer.pooled_ssh.diagnose_host_entry"),
]


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[n for _kind, n in PLUGINS])
def test_ansible_doc_renders(kind, name, make_runner, tmp_path):
    runner = make_runner(tmp_path / "known_hosts")
    text = runner.run([runner.executable("ansible-doc"), "-t", kind, name])
    assert text.rc == 0, text.output_tail()
    # ansible-core 2.21 itself warns about its internal _protomatter collection when listing roles.
    warnings = [ln for ln in text.stderr.splitlines() if "WARNING" in ln.upper() and "_protomatter" not in ln]
    assert warnings == [], text.stderr
    assert name.split(".")[-1] in text.stdout
    data = json.loads(runner.run([runner.executable("ansible-doc"), "-t", kind, "--json", name]).stdout)
    doc = data[name]["doc"] if kind != "role" else data[name]
    assert doc, data


def test_connection_doc_lists_the_origin_and_paramiko_names(make_runner, tmp_path):
    runner = make_runner(tmp_path / "known_hosts")
    data = json.loads(
        runner.run(
            [runner.executable("ansible-doc"), "-t", "connection", "--json", "healer.pooled_ssh.pooled_ssh"]
        ).stdout
    )
    options = data["healer.pooled_ssh.pooled_ssh"]["doc"]["options"]
    envs = {e["name"] for o in options.values() for e in o.get("env", [])}
    for origin in (
        "SSH_POOL_MAX_CONNECTIONS",
        "SSH_POOL_IDLE_TIMEOUT_MS",
        "SSH_POOL_CONNECTION_TIMEOUT_MS",
        "SSH_POOL_HEALTH_CHECKS",
        "SSH_POOL_HEALTH_CHECK_INTERVAL_MS",
        "SSH_KEEPALIVE_INTERVAL",
        "SSH_POOL_MAX_SIZE",
        "SSH_POOL_TIMEOUT",
        "SSH_POOL_CLEANUP_INTERVAL",
        "SSH_KEEPALIVE_MAX_MISSED",
    ):
        assert origin in envs
    for old in (
        "remote_addr",
        "port",
        "remote_user",
        "password",
        "private_key_file",
        "host_key_checking",
        "host_key_auto_add",
        "record_host_keys",
        "look_for_keys",
        "proxy_command",
        "pty",
        "banner_timeout",
        "timeout",
        "use_rsa_sha2_algorithms",
    ):
        assert old in options


def test_options_doc_matches_the_plugin_documentation(make_runner, tmp_path):
    runner = make_runner(tmp_path / "known_hosts")
    script = Path(__file__).resolve().parents[2] / "scripts" / "gen_options_doc.py"
    result = runner.run([sys.executable, str(script), "--check", "--ansible-doc", runner.executable("ansible-doc")])
    assert result.rc == 0, result.output_tail()
