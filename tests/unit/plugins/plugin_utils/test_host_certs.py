"""Host certificates checked against known_hosts as ssh(1) checks them.

Every certificate here is a real one, made at test time by ``ssh-keygen -s`` with CA and host
keys generated for the test (no private key is committed). Where a certificate ssh-keygen will
not make is needed (critical options on a host certificate), a real one is edited and signed
again with the CA's own private key.
"""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _host_certs as hc
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _known_hosts as kh
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

NAME = "[127.0.0.2]:2222"
ADDR = "127.0.0.2"


def _keygen(*args: str) -> None:
    # TZ=UTC: -V dates are local times.
    subprocess.run(
        ["ssh-keygen", "-q", *args], check=True, timeout=60, capture_output=True, env=dict(os.environ, TZ="UTC")
    )


class Keys:
    """Keys made once per test in ``tmp_path``: CAs and host keys of several types."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.paths: Dict[str, Path] = {}

    def key(self, name: str, kind: str = "ed25519", bits: Optional[int] = None) -> Path:
        if name not in self.paths:
            path = self.dir / name
            _keygen("-t", kind, *(["-b", str(bits)] if bits else []), "-N", "", "-C", name, "-f", str(path))
            self.paths[name] = path
        return self.paths[name]

    def pub(self, name: str) -> str:
        """``keytype base64`` of a key's public half."""
        return " ".join(self.key(name).with_name(name + ".pub").read_text().split()[:2])

    def b64(self, name: str) -> str:
        return self.pub(name).split()[1]

    def sign(
        self,
        ca: str,
        host: str,
        *,
        principals: Optional[str] = ADDR,
        host_cert: bool = True,
        validity: Optional[str] = "-5m:+1h",
        serial: int = 7,
        extra: tuple = (),
    ) -> bytes:
        """A certificate for ``host`` signed by ``ca`` with ssh-keygen; returns its blob."""
        ca_path, host_path = self.key(ca), self.key(host)
        args = ["-s", str(ca_path), "-I", f"{host}-id", "-z", str(serial), *extra]
        if host_cert:
            args.append("-h")
        if principals is not None:
            args += ["-n", principals]
        if validity is not None:
            args += ["-V", validity]
        _keygen(*args, str(host_path.with_name(host + ".pub")))
        cert_file = host_path.with_name(host + "-cert.pub")
        blob = base64.b64decode(cert_file.read_text().split()[1])
        cert_file.unlink()
        return blob


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def known(*lines: str) -> List[kh.KnownHost]:
    return kh.parse("\n".join(lines) + "\n", "known_hosts")


def check(
    blob: bytes, entries: List[kh.KnownHost], names: tuple = (ADDR,), now: Optional[float] = None, name: str = NAME
) -> hc.CertVerdict:
    return hc.check(blob, entries, name, names, now)


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "bits", "key_type"),
    [
        ("ed25519", None, "ssh-ed25519"),
        ("ecdsa", 256, "ecdsa-sha2-nistp256"),
        ("ecdsa", 384, "ecdsa-sha2-nistp384"),
        ("ecdsa", 521, "ecdsa-sha2-nistp521"),
        ("rsa", 2048, "ssh-rsa"),
    ],
)
def test_parse_reads_what_ssh_keygen_wrote(keys: Keys, kind: str, bits: Optional[int], key_type: str) -> None:
    keys.key("host", kind, bits)
    blob = keys.sign("ca", "host", principals="127.0.0.2,web1.example.com", validity="20300101:20300201", serial=42)
    cert = hc.parse(blob)
    assert cert.key_type == key_type
    assert cert.cert_type.endswith("-cert-v01@openssh.com")
    assert cert.key_b64 == keys.b64("host"), "the plain key is what @revoked and plain lines hold"
    assert cert.ca_b64 == keys.b64("ca")
    assert (cert.serial, cert.kind, cert.key_id) == (42, hc.HOST_CERT, "host-id")
    assert cert.principals == ("127.0.0.2", "web1.example.com")
    listing = subprocess.run(
        ["ssh-keygen", "-L", "-f", "-"],
        input=f"{cert.cert_type} {base64.b64encode(blob).decode()}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    # ssh-keygen prints local time; compare the span instead.
    assert cert.valid_before - cert.valid_after == 31 * 86400
    assert cert.describe().startswith(f'{cert.cert_type} ID "host-id" serial 42 signed by CA ssh-ed25519 SHA256:')


def test_parse_refuses_what_is_not_a_certificate(keys: Keys) -> None:
    plain = base64.b64decode(keys.b64("host"))
    with pytest.raises(hc.CertificateError, match="not a certificate type"):
        hc.parse(plain)
    blob = keys.sign("ca", "host")
    with pytest.raises(hc.CertificateError, match="truncated"):
        hc.parse(blob[:-10])
    with pytest.raises(hc.CertificateError, match="trailing data"):
        hc.parse(blob + b"\0")
    verdict = check(blob[:-10], known(f"@cert-authority * {keys.pub('ca')}"))
    assert verdict.status is hc.CertStatus.INVALID and "cannot be read (truncated" in verdict.reason


# -- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ca_kind", "ca_bits", "sig"),
    [
        ("ed25519", None, None),
        ("ecdsa", 256, None),
        ("ecdsa", 384, None),
        ("ecdsa", 521, None),
        ("rsa", 2048, "rsa-sha2-512"),
        ("rsa", 2048, "rsa-sha2-256"),
    ],
)
def test_a_certificate_from_a_listed_ca_is_accepted(
    keys: Keys, ca_kind: str, ca_bits: Optional[int], sig: Optional[str]
) -> None:
    keys.key("ca", ca_kind, ca_bits)
    blob = keys.sign("ca", "host", extra=("-t", sig) if sig else ())
    verdict = check(blob, known(f"@cert-authority [127.0.0.*]:2222 {keys.pub('ca')}"))
    assert verdict.status is hc.CertStatus.ACCEPTED, verdict.reason
    assert verdict.entry is not None and verdict.entry.where == "known_hosts:1"


def test_wildcard_principals_and_hashed_ca_patterns(keys: Keys) -> None:
    blob = keys.sign("ca", "host", principals="*.example.com")
    pattern = _hash("web1.example.com")
    entries = known(f"@cert-authority {pattern} {keys.pub('ca')}")
    verdict = check(blob, entries, names=("web1.example.com",), name="web1.example.com")
    assert verdict.status is hc.CertStatus.ACCEPTED, verdict.reason
    assert check(blob, entries, names=("example.com",), name="web1.example.com").status is hc.CertStatus.INVALID


def _hash(name: str) -> str:
    import hashlib
    import hmac

    salt = os.urandom(20)
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


def test_any_of_the_names_the_host_was_reached_by_may_be_the_principal(keys: Keys) -> None:
    blob = keys.sign("ca", "host", principals="db1.internal")
    entries = known(f"@cert-authority * {keys.pub('ca')}")
    assert check(blob, entries, names=(ADDR,)).status is hc.CertStatus.INVALID
    assert check(blob, entries, names=(ADDR, "DB1.internal")).status is hc.CertStatus.ACCEPTED


# -- refused -----------------------------------------------------------------------------------


def test_expired_and_not_yet_valid(keys: Keys) -> None:
    entries = known(f"@cert-authority * {keys.pub('ca')}")
    expired = check(keys.sign("ca", "host", validity="20200101:20200102"), entries)
    assert expired.status is hc.CertStatus.INVALID
    assert expired.reason == ("Certificate invalid: expired (valid from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z)")
    future = check(keys.sign("ca", "host", validity="+1d:+2d"), entries)
    assert future.status is hc.CertStatus.INVALID and future.reason.startswith("Certificate invalid: not yet valid")
    # The bounds are OpenSSH's: valid_after <= now < valid_before.
    cert = hc.parse(keys.sign("ca", "host", validity="20300101:20300102"))
    assert (
        check(keys.sign("ca", "host", validity="20300101:20300102"), entries, now=cert.valid_after).status
        is hc.CertStatus.ACCEPTED
    )
    at_end = check(keys.sign("ca", "host", validity="20300101:20300102"), entries, now=cert.valid_before)
    assert at_end.reason.startswith("Certificate invalid: expired")
    forever = check(keys.sign("ca", "host", validity=None), entries, now=time.time() + 100 * 365 * 86400)
    assert forever.status is hc.CertStatus.ACCEPTED and "forever" in forever.cert.validity()


def test_wrong_principal_and_no_principals(keys: Keys) -> None:
    entries = known(f"@cert-authority * {keys.pub('ca')}")
    wrong = check(keys.sign("ca", "host", principals="127.0.0.3,other.example.com"), entries)
    assert wrong.status is hc.CertStatus.INVALID
    assert wrong.reason == (
        "Certificate invalid: name is not a listed principal (127.0.0.2 not in 127.0.0.3, other.example.com)"
    )
    none = check(keys.sign("ca", "host", principals=None), entries)
    assert none.status is hc.CertStatus.INVALID and none.reason == "Certificate lacks principal list"


def test_a_user_certificate_is_not_a_host_certificate(keys: Keys) -> None:
    verdict = check(keys.sign("ca", "host", host_cert=False), known(f"@cert-authority * {keys.pub('ca')}"))
    assert verdict.status is hc.CertStatus.INVALID
    assert verdict.reason == "Certificate invalid: not a host certificate (a user certificate)"


def test_revoked_ca_and_revoked_host_key_are_refused_without_fallback(keys: Keys) -> None:
    blob = keys.sign("ca", "host")
    ca_line = f"@cert-authority * {keys.pub('ca')}"
    ca_revoked = check(blob, known(ca_line, f"@revoked * {keys.pub('ca')}"))
    assert ca_revoked.status is hc.CertStatus.REVOKED
    assert ca_revoked.reason == "the certificate's certificate authority is marked @revoked in known_hosts:2"
    key_revoked = check(blob, known(ca_line, f"@revoked {ADDR} {keys.pub('host')}"))
    assert key_revoked.status is hc.CertStatus.REVOKED
    assert key_revoked.reason == "the certificate's host key is marked @revoked in known_hosts:2"


def test_a_ca_not_listed_for_this_host_means_no_ca(keys: Keys) -> None:
    blob = keys.sign("ca", "host")
    other = keys.sign("other-ca", "host2")
    assert check(blob, known()).status is hc.CertStatus.NO_CA
    # Listed, but for other hosts only.
    elsewhere = check(blob, known(f"@cert-authority *.example.com {keys.pub('ca')}"))
    assert elsewhere.status is hc.CertStatus.NO_CA
    # A plain line with the CA's key is not a CA line.
    assert check(blob, known(f"{NAME} {keys.pub('ca')}")).status is hc.CertStatus.NO_CA
    listed = check(other, known(f"@cert-authority * {keys.pub('ca')}"))
    assert listed.status is hc.CertStatus.NO_CA and "lines for other CAs: known_hosts:1" in listed.reason


def test_a_sha1_rsa_signature_is_refused_as_openssh_refuses_it(keys: Keys) -> None:
    keys.key("ca", "rsa", 2048)
    blob = keys.sign("ca", "host", extra=("-t", "ssh-rsa"))
    verdict = check(blob, known(f"@cert-authority * {keys.pub('ca')}"))
    assert verdict.status is hc.CertStatus.INVALID
    assert verdict.reason == "Certificate signed with disallowed algorithm (ssh-rsa)"


def _fields(blob: bytes) -> List[bytes]:
    """An ed25519 host certificate's fields, as raw wire chunks (to edit one)."""
    out = []
    pos = 0
    layout = "sssQIssQQsssss"  # type nonce pk serial type id principals after before crit ext res ca sig
    for f in layout:
        if f == "s":
            (n,) = struct.unpack(">I", blob[pos : pos + 4])
            out.append(blob[pos : pos + 4 + n])
            pos += 4 + n
        else:
            size = 8 if f == "Q" else 4
            out.append(blob[pos : pos + size])
            pos += size
    assert pos == len(blob)
    return out


def _resign(keys: Keys, ca: str, fields: List[bytes]) -> bytes:
    private = load_ssh_private_key(keys.key(ca).read_bytes(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    signed = b"".join(fields[:-1])
    raw = private.sign(signed)
    sig = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", len(raw)) + raw
    return signed + struct.pack(">I", len(sig)) + sig


def test_a_tampered_certificate_fails_the_signature(keys: Keys) -> None:
    fields = _fields(keys.sign("ca", "host", principals="127.0.0.3"))
    principals = struct.pack(">I", len(ADDR)) + ADDR.encode()
    fields[6] = struct.pack(">I", len(principals)) + principals
    tampered = b"".join(fields)
    verdict = check(tampered, known(f"@cert-authority * {keys.pub('ca')}"))
    assert verdict.status is hc.CertStatus.INVALID
    assert verdict.reason == "the CA's signature on the certificate is invalid"
    # The same edit signed by the CA itself is fine: the check above failed on the signature alone.
    assert (
        check(_resign(keys, "ca", fields), known(f"@cert-authority * {keys.pub('ca')}")).status
        is hc.CertStatus.ACCEPTED
    )


def test_critical_options_are_refused(keys: Keys) -> None:
    fields = _fields(keys.sign("ca", "host"))
    command = struct.pack(">I", 4) + b"true"
    option = struct.pack(">I", 13) + b"force-command" + struct.pack(">I", len(command)) + command
    fields[9] = struct.pack(">I", len(option)) + option
    verdict = check(_resign(keys, "ca", fields), known(f"@cert-authority * {keys.pub('ca')}"))
    assert verdict.status is hc.CertStatus.INVALID
    assert verdict.reason == "Certificate contains unsupported critical options"


def test_certificate_types_for_negotiation() -> None:
    assert hc.certificate_types(["ssh-ed25519", "rsa-sha2-512", "ssh-ed25519-cert-v01@openssh.com"]) == [
        "ssh-ed25519-cert-v01@openssh.com",
        "rsa-sha2-512-cert-v01@openssh.com",
    ]


def test_known_hosts_keeps_ca_lines_and_matches_them(keys: Keys) -> None:
    entries = known(
        f"@cert-authority *.example.com,!bad.example.com {keys.pub('ca')}",
        f"@revoked * {keys.pub('host')}",
        f"@unknown-marker * {keys.pub('host2')}",
        f"web1.example.com {keys.pub('host3')}",
    )
    assert [e.marker for e in entries] == [kh.Marker.CERT_AUTHORITY, kh.Marker.REVOKED, kh.Marker.KEY]
    assert [e.where for e in kh.cert_authorities(entries, "web1.example.com")] == ["known_hosts:1"]
    assert kh.cert_authorities(entries, "bad.example.com") == []
    assert kh.known_types(entries, "web1.example.com") == ["ssh-ed25519"]
    assert kh.verify(entries, "web1.example.com", "ssh-ed25519", keys.b64("host")).status is kh.Status.REVOKED
    assert kh.verify(entries, "web2.example.com", "ssh-ed25519", keys.b64("ca")).status is kh.Status.UNKNOWN


def test_verify_offer_falls_back_to_the_plain_key_as_ssh_does(keys: Keys) -> None:
    ca_line = f"@cert-authority * {keys.pub('ca')}"
    plain_line = f"{NAME} {keys.pub('host')}"
    good, expired = keys.sign("ca", "host"), keys.sign("ca", "host", validity="20200101:20200102")
    key_type, key = keys.pub("host").split()

    verdict, cert = hc.verify_offer(known(ca_line), NAME, (ADDR,), key_type, key, good)
    assert verdict.status is kh.Status.KNOWN and cert is not None and cert.status is hc.CertStatus.ACCEPTED
    # An expired certificate: refused, unless the plain key is known too.
    verdict, cert = hc.verify_offer(known(ca_line), NAME, (ADDR,), key_type, key, expired)
    assert verdict.status is kh.Status.UNKNOWN and cert is not None and cert.status is hc.CertStatus.INVALID
    verdict, _unused = hc.verify_offer(known(ca_line, plain_line), NAME, (ADDR,), key_type, key, expired)
    assert verdict.status is kh.Status.KNOWN
    # A revoked CA: no fallback, even with the plain key known.
    verdict, cert = hc.verify_offer(
        known(ca_line, plain_line, f"@revoked * {keys.pub('ca')}"), NAME, (ADDR,), key_type, key, good
    )
    assert verdict.status is kh.Status.REVOKED and verdict.entry is not None and verdict.entry.lineno == 3
    # No certificate offered: the plain rules.
    verdict, cert = hc.verify_offer(known(plain_line), NAME, (ADDR,), key_type, key)
    assert verdict.status is kh.Status.KNOWN and cert is None
    assert hc.prefers_certificates(known(ca_line), NAME) and not hc.prefers_certificates(known(plain_line), NAME)
