"""Pure parts of the servers work: fetch through cat framed by a marker, servers that get no spare
channels, Paramiko tracebacks out of daemon.log, and what a server offers in its key exchange."""

from __future__ import annotations

import logging
import struct
import subprocess

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.spare import spares_unsafe
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.daemon.transfer import MarkerReader, fetch_command
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh import negotiation
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.ssh.paramiko_text import ParamikoLogFilter


def _run(cmd: str, rc_text: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", f"{rc_text}{cmd}"], capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize("noise", [b"", b"Welcome!\n", b"no newline at all", b"POOLED-SSH-fake 12\n"])
@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_what_the_shell_printed_is_skipped(tmp_path, noise, chunk):
    data = bytes(range(256)) * 40 + b"POOLED-SSH-0011 5\n"
    remote = tmp_path / "file with 'quotes' and spaces"
    remote.write_bytes(data)
    marker = "POOLED-SSH-0123456789abcdef"
    proc = _run(fetch_command(str(remote), marker))
    assert proc.returncode == 0, proc.stderr
    stream = noise + proc.stdout
    reader = MarkerReader(marker)
    out = b"".join(reader.feed(stream[i : i + chunk]) for i in range(0, len(stream), chunk))
    assert out == data and reader.complete() and reader.noise == noise


def test_a_cut_stream_is_incomplete_and_a_missing_file_has_its_own_status(tmp_path):
    remote = tmp_path / "f"
    remote.write_bytes(b"x" * 100)
    marker = "POOLED-SSH-00"
    stream = _run(fetch_command(str(remote), marker)).stdout
    reader = MarkerReader(marker)
    reader.feed(stream[:-10])
    assert not reader.complete() and (reader.received, reader.size) == (90, 100)
    assert _run(fetch_command(str(tmp_path / "missing"), marker)).returncode == 66
    assert _run(fetch_command(str(tmp_path), marker)).returncode == 66  # a directory


def test_no_marker_is_an_error_not_a_hang():
    reader = MarkerReader("POOLED-SSH-00")
    with pytest.raises(ValueError):
        for _round in range(20):
            reader.feed(b"y" * 65536)


@pytest.mark.parametrize(
    ("banner", "unsafe"),
    [
        ("SSH-2.0-dropbear_2022.83", True),
        ("SSH-2.0-dropbear_2020.81", True),
        ("SSH-2.0-dropbear_2024.86", False),
        ("SSH-2.0-dropbear_2025.87", False),
        ("SSH-2.0-dropbear", True),
        ("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", False),
        ("", False),
    ],
)
def test_spares_unsafe_for_old_dropbear(banner, unsafe):
    assert spares_unsafe(banner) is unsafe


# -- daemon.log: one line per Paramiko failure -------------------------------------------------


def _records(lines):
    return [logging.LogRecord("paramiko.transport", logging.ERROR, __file__, 1, line, None, None) for line in lines]


@pytest.mark.parametrize("debug", [False, True])
def test_paramiko_tracebacks_leave_the_log_at_the_default_level(debug):
    lines = [
        "Exception (client): Error reading SSH protocol banner",
        "Traceback (most recent call last):",
        '  File "transport.py", line 2094, in run',
        "    self._handler_table[ptype](m)",
        "paramiko.ssh_exception.SSHException: Error reading SSH protocol banner",
        "Secsh channel 3 opened.",
    ]
    log_filter = ParamikoLogFilter(debug=debug)
    kept = [r.getMessage() for r in _records(lines) if log_filter.filter(r)]
    assert kept == (lines if debug else [lines[0], lines[-1]])
    other = logging.LogRecord(
        "pooled_ssh.daemon", logging.ERROR, __file__, 1, "Traceback (most recent call last):", None, None
    )
    assert log_filter.filter(other), "only Paramiko's records are filtered"


# -- what the server offers --------------------------------------------------------------------


def test_kexinit_lists_are_read_and_signals_left_out():
    names = [
        b"sntrup761x25519-sha512@openssh.com,kex-strict-s-v00@openssh.com",
        b"ssh-ed25519",
        b"chacha20-poly1305@openssh.com",
        b"chacha20-poly1305@openssh.com",
        b"umac-64-etm@openssh.com",
        b"umac-64-etm@openssh.com",
        b"none",
        b"none",
        b"",
        b"",
    ]
    payload = bytes([20]) + b"c" * 16 + b"".join(struct.pack(">I", len(n)) + n for n in names) + b"\0" * 5
    lists = negotiation.parse_kexinit(payload)
    assert lists["kex"] == ["sntrup761x25519-sha512@openssh.com", "kex-strict-s-v00@openssh.com"]
    assert lists["ciphers_s2c"] == ["chacha20-poly1305@openssh.com"] and lists["languages_c2s"] == []
    text = negotiation.explain(negotiation.Kind.KEX, lists["kex"], ["curve25519-sha256@libssh.org"], "5.1.0")
    assert text == (
        "no key exchange algorithm in common: the server offers sntrup761x25519-sha512@openssh.com; "
        "Paramiko 5.1.0 supports curve25519-sha256@libssh.org"
    )
    with pytest.raises(ValueError):
        negotiation.parse_kexinit(payload[:30])
    assert negotiation.kind_of("Incompatible ssh peer (no acceptable macs)") is negotiation.Kind.MAC
    assert negotiation.kind_of("Incompatible ssh peer (no acceptable host key)") is negotiation.Kind.HOST_KEY
    assert negotiation.kind_of("Error reading SSH protocol banner") is None
