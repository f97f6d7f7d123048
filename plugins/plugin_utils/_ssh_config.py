# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jump host specifications and the few OpenSSH client config keywords we honour.

Runs in the worker (not the daemon): ``~`` and the config file are the worker's, and a
bad spec is reported as the option it came from. Precedence, documented for users:
an Ansible option that is set wins; a value from ``ssh_config`` fills only what the
inventory left unset (for the port: left at 22).
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

#: The ``ssh_config`` keywords we read; everything else in the file is ignored.
HONOURED = ("hostname", "user", "port", "identityfile", "proxyjump", "proxycommand")


class JumpSpecError(ValueError):
    """A malformed ``proxy_jump`` value; the message says which hop."""


_HOP = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s\[\]@]+))(?::(?P<port>\d+))?$")


def parse_jump(value: Optional[str]) -> List[Dict[str, Any]]:
    """Parse OpenSSH's ``ProxyJump`` syntax: ``[user@]host[:port]``, comma-separated, first hop first.

    ``none`` (or empty) means no jump host. A hop's ``user`` and ``port`` are None when the
    spec does not give them: :func:`resolve_hops` fills them in.
    """
    if not value or value.strip().lower() == "none":
        return []
    hops = []
    for raw in value.split(","):
        text = raw.strip()
        if text.startswith("ssh://"):
            text = text[len("ssh://") :].rstrip("/")
        match = _HOP.match(text)
        if not match:
            raise JumpSpecError(f"cannot parse jump host {raw.strip()!r}: expected [user@]host[:port]")
        port = int(match.group("port")) if match.group("port") else None
        if port is not None and not 0 < port < 65536:
            raise JumpSpecError(f"jump host {raw.strip()!r}: {port} is not a valid port number")
        name = match.group("v6") or match.group("host")
        hops.append({"host": name, "addr": name, "port": port, "user": match.group("user")})
    return hops


def lookup(path: str, name: str) -> Dict[str, Any]:
    """The honoured keywords of ``path`` for host ``name`` (paramiko's SSHConfig does the matching).

    Returns only what the file sets: ``hostname``, ``user``, ``port`` (int),
    ``identityfile`` (first existing file, expanded), ``proxyjump``, ``proxycommand``.
    """
    import paramiko

    config_path = os.path.expanduser(path)
    try:
        config = paramiko.SSHConfig.from_path(config_path)
    except FileNotFoundError:
        raise JumpSpecError(f"ssh_config_file {config_path} does not exist") from None
    found = config.lookup(name)
    result: Dict[str, Any] = {}
    if found.get("hostname") and found["hostname"] != name:
        result["hostname"] = found["hostname"]
    if found.get("user"):
        result["user"] = found["user"]
    if found.get("port"):
        try:
            result["port"] = int(found["port"])
        except ValueError:
            raise JumpSpecError(f"{config_path}: Port {found['port']!r} for {name} is not a number") from None
    for candidate in found.get("identityfile") or []:
        expanded = os.path.abspath(os.path.expanduser(candidate))
        if os.path.exists(expanded):
            result["identityfile"] = expanded
            break
    for keyword in ("proxyjump", "proxycommand"):
        value = found.get(keyword)
        if value and value.strip().lower() != "none":
            result[keyword] = value
    return result


def resolve_hops(hops: List[Dict[str, Any]], config_path: Optional[str], default_user: str) -> List[Dict[str, Any]]:
    """Fill in each hop as OpenSSH would: the spec first, then ``ssh_config`` for that alias
    (HostName, Port, User, IdentityFile), then port 22 and the target's login user."""
    resolved = []
    for hop in hops:
        hop = dict(hop)
        found = lookup(config_path, hop["host"]) if config_path else {}
        hop["addr"] = found.get("hostname", hop["addr"])
        hop["port"] = hop["port"] or found.get("port") or 22
        hop["user"] = hop["user"] or found.get("user") or default_user
        if "identityfile" in found:
            hop["private_key_file"] = found["identityfile"]
        resolved.append(hop)
    return resolved
