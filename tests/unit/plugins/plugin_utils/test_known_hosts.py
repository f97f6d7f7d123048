"""The tolerant known_hosts reader and the locked writer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import multiprocessing
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, List, Optional

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _known_hosts as kh
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

TIMEOUT = 60.0


def new_key(kind: str = "ed25519") -> tuple:
    """A real OpenSSH public key: (keytype, base64 blob)."""
    if kind == "ed25519":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
    elif kind == "ecdsa":
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
    else:
        public = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    keytype, blob = public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode().split()[:2]
    return keytype, blob


ED_TYPE, ED_KEY = new_key("ed25519")
ED_TYPE2, ED_KEY2 = new_key("ed25519")
EC_TYPE, EC_KEY = new_key("ecdsa")
RSA_TYPE, RSA_KEY = new_key("rsa")
RSA_TYPE2, RSA_KEY2 = new_key("rsa")


def hashed(name: str, salt: Optional[bytes] = None) -> str:
    """OpenSSH's HashKnownHosts form: |1|base64(salt)|base64(HMAC-SHA1(salt, name))."""
    salt = salt if salt is not None else os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def verdict(text: str, name: str, keytype: str, key: str) -> kh.Verdict:
    return kh.verify(kh.parse(text, "/kh"), name, keytype, key)


# -- names and fingerprints ------------------------------------------------------------


def test_host_name_uses_brackets_for_other_ports() -> None:
    assert kh.host_name("Web1.Example.COM", 22) == "web1.example.com"
    assert kh.host_name("web1", 2222) == "[web1]:2222"
    assert kh.host_name("2001:db8::1", 2222) == "[2001:db8::1]:2222"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(f"{ED_TYPE} {ED_KEY} c\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert out.split()[1] == kh.fingerprint(ED_KEY)


# -- parsing ---------------------------------------------------------------------------


def test_parse_keeps_path_lineno_marker_and_skips_what_it_cannot_use() -> None:
    text = "\n".join(
        [
            "# comment",
            "",
            f"web1 {ED_TYPE} {ED_KEY} a comment",
            "garbage",
            f"web2 {ED_TYPE}",
            f"web3 {ED_TYPE} !!!not-base64!!!",
            f"@revoked * {RSA_TYPE} {RSA_KEY}",
            f"@cert-authority *.example.com {EC_TYPE} {EC_KEY}",
            "@revoked",
            "   ",
            f"  web4,10.0.0.4 {EC_TYPE} {EC_KEY}  ",
        ]
    )
    entries = kh.parse(text, "/etc/kh")
    assert [(e.lineno, e.patterns, e.marker) for e in entries] == [
        (3, "web1", ""),
        (7, "*", "@revoked"),
        (8, "*.example.com", "@cert-authority"),
        (11, "web4,10.0.0.4", ""),
    ]
    assert all(e.path == "/etc/kh" for e in entries)
    assert entries[0].keytype == ED_TYPE and entries[0].key == ED_KEY


def test_load_skips_missing_files_and_reads_the_rest(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text(f"web1 {ED_TYPE} {ED_KEY}\n")
    entries = kh.load([str(tmp_path / "missing"), str(a), str(tmp_path / "missing" / "sub")])
    assert [(e.path, e.lineno) for e in entries] == [(str(a), 1)]


def test_load_tolerates_undecodable_bytes(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(b"\xff\xfe junk \x00\n" + f"web1 {ED_TYPE} {ED_KEY}\n".encode())
    assert [e.lineno for e in kh.load([str(a)])] == [2]


# -- verification ----------------------------------------------------------------------


def test_plain_entry_known() -> None:
    assert verdict(f"web1 {ED_TYPE} {ED_KEY}\n", "web1", ED_TYPE, ED_KEY).status == "known"


def test_unknown_host() -> None:
    v = verdict(f"web1 {ED_TYPE} {ED_KEY}\n", "web2", ED_TYPE, ED_KEY)
    assert v.status == "unknown"
    assert v.entry is None


def test_empty_file_means_unknown() -> None:
    assert verdict("", "web1", ED_TYPE, ED_KEY).status == "unknown"


def test_port_entries_use_brackets() -> None:
    text = f"[web1]:2222 {ED_TYPE} {ED_KEY}\n"
    assert verdict(text, "[web1]:2222", ED_TYPE, ED_KEY).status == "known"
    assert verdict(text, "web1", ED_TYPE, ED_KEY).status == "unknown"
    assert verdict(text, "[web1]:2223", ED_TYPE, ED_KEY).status == "unknown"


def test_hashed_entry() -> None:
    text = f"{hashed('web1')} {ED_TYPE} {ED_KEY}\n{hashed('[web2]:2222')} {EC_TYPE} {EC_KEY}\n"
    assert verdict(text, "web1", ED_TYPE, ED_KEY).status == "known"
    assert verdict(text, "[web2]:2222", EC_TYPE, EC_KEY).status == "known"
    assert verdict(text, "web2", EC_TYPE, EC_KEY).status == "unknown"
    assert verdict(text, "web3", ED_TYPE, ED_KEY).status == "unknown"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_hashed_entry_written_by_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"web1 {ED_TYPE} {ED_KEY}\n[web2]:2222 {EC_TYPE} {EC_KEY}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], capture_output=True, check=True, timeout=30)
    text = path.read_text()
    assert "web1" not in text and text.startswith("|1|")
    assert verdict(text, "web1", ED_TYPE, ED_KEY).status == "known"
    assert verdict(text, "[web2]:2222", EC_TYPE, EC_KEY).status == "known"


def test_hashed_entry_with_the_hash_of_another_name_or_salt() -> None:
    salt = os.urandom(20)
    good = hashed("web1", salt)
    magic, salt_b64, digest = good.split("|")[1:]
    assert magic == "1"
    other_salt = base64.b64encode(os.urandom(20)).decode()
    for pattern in (
        f"|1|{other_salt}|{digest}",
        f"|2|{salt_b64}|{digest}",
        "|1|notbase64!|x",
        "|1|onlytwo",
        "|1|a|b|c",
    ):
        assert verdict(f"{pattern} {ED_TYPE} {ED_KEY}\n", "web1", ED_TYPE, ED_KEY).status == "unknown"


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*.example.com", "web1.example.com", True),
        ("*.example.com", "example.com", False),
        ("web?", "web1", True),
        ("web?", "web12", False),
        ("*", "anything", True),
        ("10.0.0.*", "10.0.0.7", True),
        ("10.0.0.*", "10.0.1.7", False),
        ("[web1]:*", "[web1]:2222", True),
        ("[web?]:2222", "[web1]:2222", True),
        ("web1.example.com", "web1xexample.com", False),  # dots are literal
        ("WEB1", "web1", True),  # patterns are case-insensitive
    ],
)
def test_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert kh.matches(pattern, name) is expected
    status = verdict(f"{pattern} {ED_TYPE} {ED_KEY}\n", name, ED_TYPE, ED_KEY).status
    assert status == ("known" if expected else "unknown")


def test_comma_lists_and_negation() -> None:
    assert kh.matches("web1,web2,10.0.0.3", "web2")
    assert kh.matches("web1,web2,10.0.0.3", "10.0.0.3")
    assert not kh.matches("web1,web2", "web3")
    assert kh.matches("*.example.com,!db.example.com", "web.example.com")
    assert not kh.matches("*.example.com,!db.example.com", "db.example.com")
    assert not kh.matches("!db.example.com,*.example.com", "db.example.com")
    assert not kh.matches("!web1", "web2"), "a negation alone matches nothing"
    text = f"*.example.com,!db.example.com {ED_TYPE} {ED_KEY}\n"
    assert verdict(text, "web.example.com", ED_TYPE, ED_KEY).status == "known"
    assert verdict(text, "db.example.com", ED_TYPE, ED_KEY).status == "unknown"


def test_changed_key_reports_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# header\nweb2 {ED_TYPE} {ED_KEY2}\nweb1 {RSA_TYPE} {RSA_KEY}\nweb1 {ED_TYPE} {ED_KEY2}\n")
    v = kh.verify(kh.load([str(path)]), "web1", ED_TYPE, ED_KEY)
    assert v.status == "changed"
    assert v.entry is not None
    assert (v.entry.path, v.entry.lineno) == (str(path), 4)
    assert v.entry.key == ED_KEY2
    assert kh.fingerprint(v.entry.key) != kh.fingerprint(ED_KEY)


def test_a_known_key_of_another_type_is_not_a_change() -> None:
    # OpenSSH: a host known only by an RSA key that now offers ed25519 is "unknown", not "changed".
    text = f"web1 {RSA_TYPE} {RSA_KEY}\n"
    assert verdict(text, "web1", ED_TYPE, ED_KEY).status == "unknown"


def test_one_matching_line_among_several_is_enough() -> None:
    text = f"web1 {ED_TYPE} {ED_KEY2}\nweb1 {ED_TYPE} {ED_KEY}\n"
    assert verdict(text, "web1", ED_TYPE, ED_KEY).status == "known"


@pytest.mark.parametrize("offered", ["ssh-rsa", "rsa-sha2-256", "rsa-sha2-512"])
def test_rsa_sha2_algorithms_are_the_ssh_rsa_key_family(offered: str) -> None:
    text = f"web1 ssh-rsa {RSA_KEY}\n"
    assert verdict(text, "web1", offered, RSA_KEY).status == "known"
    v = verdict(text, "web1", offered, RSA_KEY2)
    assert v.status == "changed"
    assert v.entry is not None and v.entry.lineno == 1


def test_revoked_key_is_refused_even_when_also_listed() -> None:
    text = f"web1 {ED_TYPE} {ED_KEY}\n@revoked web1 {ED_TYPE} {ED_KEY}\n"
    v = verdict(text, "web1", ED_TYPE, ED_KEY)
    assert v.status == "revoked"
    assert v.entry is not None and v.entry.lineno == 2 and v.entry.marker == "@revoked"


def test_revoked_wildcard_line_and_unrevoked_keys() -> None:
    text = f"@revoked * {ED_TYPE} {ED_KEY2}\nweb1 {ED_TYPE} {ED_KEY}\n"
    assert verdict(text, "web1", ED_TYPE, ED_KEY2).status == "revoked"
    assert verdict(text, "web1", ED_TYPE, ED_KEY).status == "known"


def test_cert_authority_lines_are_ignored() -> None:
    text = f"@cert-authority *.example.com {ED_TYPE} {ED_KEY}\nweb1.example.com {EC_TYPE} {EC_KEY}\n"
    # The CA key is not a host key: offering it as the host key is "unknown", not "known".
    assert verdict(text, "web1.example.com", ED_TYPE, ED_KEY).status == "unknown"
    assert verdict(text, "web1.example.com", EC_TYPE, EC_KEY).status == "known"
    assert kh.known_types(kh.parse(text), "web1.example.com") == [EC_TYPE]


def test_known_types_lists_types_for_matching_lines() -> None:
    text = f"web1 {ED_TYPE} {ED_KEY}\n{hashed('web1')} {RSA_TYPE} {RSA_KEY}\nweb2 {EC_TYPE} {EC_KEY}\n"
    assert kh.known_types(kh.parse(text), "web1") == [ED_TYPE, RSA_TYPE]
    assert kh.known_types(kh.parse(text), "web3") == []


def test_a_file_full_of_oddities_still_works(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(
        "\n".join(
            [
                f"@cert-authority * {ED_TYPE} {ED_KEY2}",
                f"@revoked * {RSA_TYPE} {RSA_KEY2}",
                "this is not a known_hosts line at all",
                f"*.lan,!router.lan {EC_TYPE} {EC_KEY}",
                f"{hashed('[web1]:2200')} {ED_TYPE} {ED_KEY}",
                "@unknown-marker web1 ssh-ed25519",
            ]
        )
    )
    entries = kh.load([str(path)])
    assert kh.verify(entries, "[web1]:2200", ED_TYPE, ED_KEY).status == "known"
    assert kh.verify(entries, "nas.lan", EC_TYPE, EC_KEY).status == "known"
    assert kh.verify(entries, "router.lan", EC_TYPE, EC_KEY).status == "unknown"
    assert kh.verify(entries, "any", RSA_TYPE, RSA_KEY2).status == "revoked"


# -- recording -------------------------------------------------------------------------


def test_record_appends_once(tmp_path: Path) -> None:
    path = tmp_path / "ssh" / "known_hosts"
    assert kh.record(str(path), "[web1]:2222", ED_TYPE, ED_KEY) is True
    assert kh.record(str(path), "[web1]:2222", ED_TYPE, ED_KEY) is False
    assert path.read_text() == f"[web1]:2222 {ED_TYPE} {ED_KEY}\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ssh").stat().st_mode & 0o777 == 0o700
    assert kh.verify(kh.load([str(path)]), "[web1]:2222", ED_TYPE, ED_KEY).status == "known"


def test_record_adds_the_missing_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"web0 {EC_TYPE} {EC_KEY}")
    assert kh.record(str(path), "web1", ED_TYPE, ED_KEY) is True
    assert path.read_text() == f"web0 {EC_TYPE} {EC_KEY}\nweb1 {ED_TYPE} {ED_KEY}\n"
    assert [e.patterns for e in kh.load([str(path)])] == ["web0", "web1"]


def test_record_does_not_touch_a_host_already_covered(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    original = f"{hashed('web1')} {ED_TYPE} {ED_KEY}\n"
    path.write_text(original)
    assert kh.record(str(path), "web1", ED_TYPE, ED_KEY) is False
    assert path.read_text() == original


def _record_all(path: str, names: List[str], keys: List[str], start: Any, results: Any) -> None:
    """Process entry point: wait for the start signal, record every name, report how many lines we wrote."""
    if not start.wait(TIMEOUT):
        results.put(-1)
        return
    written = 0
    for name, key in zip(names, keys, strict=False):
        written += kh.record(path, name, ED_TYPE, key)
    results.put(written)


def _race(path: Path, names: List[str], keys: List[str], threads: int = 20, processes: int = 10) -> int:
    """Record every name from `threads` threads and `processes` processes at once; total lines written."""
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    results = ctx.Queue()
    # Fork first, while this process has no other threads.
    procs = [
        ctx.Process(target=_record_all, args=(str(path), names, keys, start, results), daemon=True)
        for _round in range(processes)
    ]
    for p in procs:
        p.start()
    thread_start = threading.Event()
    thread_results: List[int] = []
    errors: List[BaseException] = []
    lock = threading.Lock()

    def in_thread() -> None:
        try:
            if not thread_start.wait(TIMEOUT):
                raise TimeoutError("never started")
            written = sum(kh.record(str(path), n, ED_TYPE, k) for n, k in zip(names, keys, strict=False))
            with lock:
                thread_results.append(written)
        except BaseException as e:
            with lock:
                errors.append(e)

    workers = [threading.Thread(target=in_thread, daemon=True) for _round in range(threads)]
    for t in workers:
        t.start()
    start.set()
    thread_start.set()
    process_results = []
    try:
        for _round in procs:
            process_results.append(results.get(timeout=TIMEOUT))
    finally:
        for t in workers:
            t.join(timeout=TIMEOUT)
        for p in procs:
            p.join(timeout=TIMEOUT)
            if p.is_alive():
                p.kill()
                p.join(timeout=TIMEOUT)
    assert not errors, errors
    assert not any(t.is_alive() for t in workers)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert -1 not in process_results
    assert len(thread_results) == threads and len(process_results) == processes
    return sum(thread_results) + sum(process_results)


def test_concurrent_record_of_one_host_writes_exactly_one_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    written = _race(path, ["[web1]:2222"], [ED_KEY])
    assert written == 1
    assert path.read_text() == f"[web1]:2222 {ED_TYPE} {ED_KEY}\n"


def test_concurrent_record_of_twenty_hosts_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"existing {EC_TYPE} {EC_KEY}")  # no trailing newline, to make it harder
    names = [f"host{i:02d}" for i in range(20)]
    keys = [new_key("ed25519")[1] for _round in names]
    written = _race(path, names, keys)
    assert written == 20
    lines = path.read_text().splitlines()
    assert lines[0] == f"existing {EC_TYPE} {EC_KEY}"
    assert sorted(lines[1:]) == sorted(f"{n} {ED_TYPE} {k}" for n, k in zip(names, keys, strict=False))
    assert path.read_text().endswith("\n")
    entries = kh.load([str(path)])
    for name, key in zip(names, keys, strict=False):
        assert kh.verify(entries, name, ED_TYPE, key).status == "known"
