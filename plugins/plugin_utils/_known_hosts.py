# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tolerant reader and a safe writer for OpenSSH ``known_hosts`` files.

Paramiko's ``HostKeys.load()`` raises on ``@cert-authority`` and ``@revoked`` lines and
never matches wildcard patterns, so one unusual line would break every connection. We
read the file ourselves, as OpenSSH does: hashed ``|1|`` names, ``[host]:port`` names,
wildcards and negations, ``@revoked`` honoured, ``@cert-authority`` lines kept for host
certificates (see :mod:`._host_certs`), anything we cannot use skipped. Each entry
remembers its file and line so that a changed key can be reported the way OpenSSH
reports it.

Pure Python (no Paramiko): keys are compared as base64 blobs.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, List, Optional, Sequence


class Marker(str, Enum):
    """What a known_hosts line says about its key (the text before the host patterns)."""

    KEY = ""
    REVOKED = "@revoked"
    CERT_AUTHORITY = "@cert-authority"


@dataclass(frozen=True)
class KnownHost:
    path: str
    lineno: int
    patterns: str
    keytype: str
    key: str  # base64 blob
    marker: Marker = Marker.KEY

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def host_name(addr: str, port: int) -> str:
    """The name OpenSSH stores: ``host`` on port 22, ``[host]:port`` otherwise."""
    addr = addr.lower()
    return addr if port == 22 else f"[{addr}]:{port}"


def fingerprint(key_b64: str) -> str:
    """OpenSSH's ``SHA256:…`` fingerprint of a base64 key blob."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def parse(text: str, path: str = "<string>") -> List[KnownHost]:
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = Marker.KEY
        if fields[0].startswith("@"):
            try:
                marker = Marker(fields[0])
            except ValueError:
                continue  # a marker OpenSSH does not know either: the line is ignored, as ssh ignores it
            fields = fields[1:]
        if len(fields) < 3:
            continue
        patterns, keytype, key = fields[0], fields[1], fields[2]
        try:
            base64.b64decode(key, validate=True)
        except ValueError:
            continue
        entries.append(KnownHost(path, lineno, patterns, keytype, key, marker))
    return entries


def _match_hashed(pattern: str, name: str) -> bool:
    try:
        _empty, magic, salt, digest = pattern.split("|")
        if magic != "1":
            return False
        mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(base64.b64encode(mac).decode(), digest)
    except ValueError:
        return False


def glob(pattern: str, name: str) -> bool:
    """OpenSSH globs: only ``*`` and ``?`` are special (brackets are literal, as in ``[host]:port``)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def matches(patterns: str, name: str) -> bool:
    """OpenSSH pattern-list semantics: any positive match and no negated match."""
    if patterns.startswith("|"):
        return _match_hashed(patterns, name)
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if negated:
            pattern = pattern[1:]
        if glob(pattern.lower(), name):
            if negated:
                return False
            positive = True
    return positive


class Status(str, Enum):
    KNOWN = "known"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    REVOKED = "revoked"


@dataclass
class Verdict:
    status: Status
    entry: Optional[KnownHost] = None


def verify(entries: Iterable[KnownHost], name: str, keytype: str, key: str) -> Verdict:
    """Decide whether ``key`` (offered by the server as ``keytype``) is known for ``name``."""
    mismatch: Optional[KnownHost] = None
    known = False
    entries = list(entries)
    revoked_entry = revoked(entries, key)
    if revoked_entry is not None:
        return Verdict(Status.REVOKED, revoked_entry)
    for entry in entries:
        if entry.marker is not Marker.KEY or not matches(entry.patterns, name):
            continue
        if entry.key == key:
            known = True
        elif mismatch is None and _same_family(entry.keytype, keytype):
            mismatch = entry
    if known:
        return Verdict(Status.KNOWN)
    if mismatch is not None:
        return Verdict(Status.CHANGED, mismatch)
    return Verdict(Status.UNKNOWN)


def revoked(entries: Iterable[KnownHost], key: str) -> Optional[KnownHost]:
    """The ``@revoked`` line of ``key`` (base64 blob), whatever its host patterns: a revoked key
    is refused for every host."""
    return next((e for e in entries if e.marker is Marker.REVOKED and e.key == key), None)


def cert_authorities(entries: Iterable[KnownHost], name: str) -> List[KnownHost]:
    """The ``@cert-authority`` lines whose patterns match ``name``: the CAs trusted to sign
    host certificates for it."""
    return [e for e in entries if e.marker is Marker.CERT_AUTHORITY and matches(e.patterns, name)]


def _same_family(a: str, b: str) -> bool:
    """rsa-sha2-* signatures use an ``ssh-rsa`` key."""

    def family(t: str) -> str:
        return "ssh-rsa" if t.startswith("rsa-sha2") else t

    return family(a) == family(b)


def known_types(entries: Iterable[KnownHost], name: str) -> List[str]:
    """Key types we already know for ``name``, to prefer them in negotiation as OpenSSH does."""
    return [e.keytype for e in entries if e.marker is Marker.KEY and matches(e.patterns, name)]


class Unreadable(Exception):
    """A known_hosts file that is there but cannot be read (a directory, no permission, an I/O error).

    A missing file vouches for nothing and is skipped, as OpenSSH does; one that cannot be read
    may hold the very key of this host, so the check cannot be made and the caller must say so."""

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(f"cannot read known_hosts file {path} ({error.strerror or error})")
        self.path = path


def load(paths: Sequence[str]) -> List[KnownHost]:
    """The entries of every file in ``paths``; :class:`Unreadable` for a file that cannot be read."""
    entries: List[KnownHost] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                entries.extend(parse(f.read(), path))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise Unreadable(path, e) from None
    return entries


#: The names we write: letters, digits and ``. _ : % -`` (IPv6 addresses and zones), alone or as
#: ``[name]:port``. Anything else could be a pattern (``*``, ``!``, ``,``), a marker, a hashed
#: name or a second line, and would make the file trust a key for hosts nobody vouched for.
_RECORDABLE_NAME = re.compile(r"(?:[a-z0-9_.:%][a-z0-9_.:%-]*|\[[a-z0-9_.:%][a-z0-9_.:%-]*\]:[0-9]{1,5})")
_RECORDABLE_KEYTYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+-]*")


class UnsafeHostName(ValueError):
    """A host name or key we refuse to write into a known_hosts file; the message says why."""


def check_recordable(name: str, keytype: str, key: str) -> None:
    """Refuse a line that would say more than "this host has this key"."""
    if not _RECORDABLE_NAME.fullmatch(name):
        raise UnsafeHostName(
            f"host name {name!r} has characters a known_hosts entry must not hold "
            "(only letters, digits and . _ : % - are recorded); not recorded"
        )
    if not _RECORDABLE_KEYTYPE.fullmatch(keytype):
        raise UnsafeHostName(f"key type {keytype!r} is not a plain key type name; not recorded")
    try:
        base64.b64decode(key, validate=True)
    except ValueError:
        raise UnsafeHostName("the host key is not base64; not recorded") from None


def record(path: str, name: str, keytype: str, key: str) -> bool:
    """Append ``name keytype key`` to ``path`` unless an entry already covers it.

    Many forks may learn the same key at once: the check and the append happen under an
    exclusive lock on a side file, and the line is written with one ``write`` in append
    mode, so no line is lost or duplicated. Returns True when a line was written.
    Raises :class:`UnsafeHostName` (and writes nothing) for a name outside the strict set.
    """
    check_recordable(name, keytype, key)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    lock_path = os.path.join(directory, "." + os.path.basename(path) + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if verify(load([path]), name, keytype, key).status is Status.KNOWN:
                return False
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                prefix = b""
                if size:
                    with open(path, "rb") as f:
                        f.seek(size - 1)
                        prefix = b"" if f.read(1) == b"\n" else b"\n"
                os.write(fd, prefix + f"{name} {keytype} {key}\n".encode())
            finally:
                os.close(fd)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
