# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the server offers in its key exchange, for errors that say why negotiation failed.

Paramiko says only which kind of algorithm had no match ("no acceptable kex algorithm"). The
server's offer is its first, unencrypted packet (KEXINIT), so when a handshake fails that way
the connector reads it again on a connection of its own and names both sides in the error:
what the server offers, what this Paramiko supports, and that ``ansible_connection=ssh`` can
reach the host.
"""

from __future__ import annotations

import socket
import struct
from enum import Enum
from typing import Dict, List, Optional, Sequence

#: KEXINIT's name-lists, in order (RFC 4253 7.1).
_LISTS = (
    "kex",
    "host_keys",
    "ciphers_c2s",
    "ciphers_s2c",
    "macs_c2s",
    "macs_s2c",
    "compression_c2s",
    "compression_s2c",
    "languages_c2s",
    "languages_s2c",
)
MSG_KEXINIT = 20
#: Names in the kex list that are signals, not algorithms.
_PSEUDO = ("kex-strict-", "ext-info-", "kexguess2@")
#: Enough for any server's banner lines and KEXINIT.
MAX_READ = 256 * 1024


class Kind(Enum):
    """Which list had nothing in common (Paramiko's IncompatiblePeer texts)."""

    KEX = ("kex algorithm", "key exchange", "kex")
    HOST_KEY = ("host key", "host key", "host_keys")
    CIPHER = ("cipher", "cipher", "ciphers_s2c")
    MAC = ("mac", "MAC", "macs_s2c")
    COMPRESSION = ("compression", "compression", "compression_s2c")

    def __init__(self, paramiko_word: str, words: str, field: str) -> None:
        self.paramiko_word, self.words, self.field = paramiko_word, words, field


def kind_of(text: str) -> Optional[Kind]:
    """The list Paramiko's "Incompatible ssh peer (no acceptable …)" names, if it is one."""
    if "Incompatible ssh peer" not in text:
        return None
    return next((k for k in Kind if f"no acceptable {k.paramiko_word}" in text), None)


def parse_kexinit(payload: bytes) -> Dict[str, List[str]]:
    """The name-lists of a KEXINIT payload (message number first)."""
    if not payload or payload[0] != MSG_KEXINIT:
        raise ValueError("not a KEXINIT message")
    pos = 1 + 16  # cookie
    lists: Dict[str, List[str]] = {}
    for name in _LISTS:
        if pos + 4 > len(payload):
            raise ValueError("truncated KEXINIT")
        (n,) = struct.unpack(">I", payload[pos : pos + 4])
        value = payload[pos + 4 : pos + 4 + n]
        if len(value) != n:
            raise ValueError("truncated KEXINIT")
        lists[name] = [x for x in value.decode("ascii", "replace").split(",") if x]
        pos += 4 + n
    return lists


def read_kexinit(sock: socket.socket, banner: bytes = b"SSH-2.0-pooled_ssh_probe\r\n") -> Dict[str, List[str]]:
    """Exchange identification lines and read the server's KEXINIT from ``sock`` (then close it)."""
    data = b""
    try:
        sock.sendall(banner)
        while True:
            while b"\n" not in data:
                chunk = sock.recv(4096)
                if not chunk or len(data) > MAX_READ:
                    raise ValueError("no SSH identification")
                data += chunk
            line, data = data.split(b"\n", 1)
            if line.startswith(b"SSH-"):
                break
        while len(data) < 5:
            chunk = sock.recv(4096)
            if not chunk:
                raise ValueError("no KEXINIT")
            data += chunk
        (length,) = struct.unpack(">I", data[:4])
        if length > MAX_READ:
            raise ValueError("oversized packet")
        while len(data) < 4 + length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("truncated packet")
            data += chunk
        padding = data[4]
        return parse_kexinit(data[5 : 4 + length - padding])
    finally:
        sock.close()


def server_offer(addr: str, port: int, timeout: float) -> Optional[Dict[str, List[str]]]:
    """The server's KEXINIT lists over a direct TCP connection, or None when it cannot be read."""
    try:
        sock = socket.create_connection((addr, port), timeout=timeout)
        sock.settimeout(timeout)
        return read_kexinit(sock)
    except (OSError, ValueError):
        return None


def explain(kind: Kind, offered: Optional[Sequence[str]], supported: Sequence[str], version: str) -> str:
    """``no key exchange in common: the server offers …; Paramiko 5.1.0 supports …``."""
    real = [a for a in offered or () if not a.startswith(_PSEUDO)]
    theirs = ", ".join(real) if real else "(not readable from here: see the server's sshd -T)"
    return (
        f"no {kind.words} algorithm in common: the server offers {theirs}; Paramiko {version} supports "
        f"{', '.join(supported)}"
    )
