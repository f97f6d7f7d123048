# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The connection spec: everything the daemon needs to open (or find) a transport for a host.

Built by the worker from the plugin's options (:mod:`.._options`), sent once per worker
connection in a ``bind``, checked and fingerprinted once there. The fields marked
``identity`` are every input that decides who we authenticate as and whom we trust: two
requests share a transport only when all of them agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..pool.settings import PoolKey
from .fields import Malformed, fingerprint, parse, to_wire, wire

_STR = (str,)
_OPT_STR = (str, type(None))
_SECONDS = (float,)
_COUNT = (int,)
_PORT = "must be a port number"
_MAX_SECONDS = 86400


@dataclass(frozen=True)
class JumpHop:
    """One bastion of a ``proxy_jump`` chain, as the worker resolved it (ssh_config included)."""

    host: str = wire(_STR, required=True)
    addr: str = wire(_STR, required=True)
    port: int = wire(_COUNT, required=True, low=1, high=65535, problem=_PORT)
    user: str = wire(_STR, required=True)
    private_key_file: Optional[str] = wire(_OPT_STR, path=True)
    #: sha256 of that key file's bytes, read by the worker (None: no such file, or none set).
    key_fingerprint: Optional[str] = wire(_OPT_STR)
    #: The hop's own password (``proxy_jump_password``) and agent: never the target's.
    password: Optional[str] = wire(_OPT_STR)
    agent_socket: Optional[str] = wire(_OPT_STR, path=True)


@dataclass(frozen=True)
class ConnectionSpec:
    """Who to connect to, as whom, and how to trust the server."""

    host: str = wire(_STR, required=True)
    addr: str = wire(_STR, required=True, identity=True)
    port: int = wire(_COUNT, required=True, low=1, high=65535, problem=_PORT, identity=True)
    user: str = wire(_STR, required=True)
    password: Optional[str] = wire(_OPT_STR, identity=True)
    private_key_file: Optional[str] = wire(_OPT_STR, identity=True, path=True)
    #: sha256 of the key file's bytes (a key rewritten at the same path is another identity).
    key_fingerprint: Optional[str] = wire(_OPT_STR, identity=True)
    private_key_passphrase: Optional[str] = wire(_OPT_STR, identity=True)
    look_for_keys: bool = wire((bool,), default=True, identity=True)
    default_key_files: List[str] = wire((list,), default=[], items=_STR, path=True, identity=True)
    agent_socket: Optional[str] = wire(_OPT_STR, identity=True, path=True)
    host_key_checking: bool = wire((bool,), default=True, identity=True)
    host_key_auto_add: bool = wire((bool,), default=False, identity=True)
    record_host_keys: bool = wire((bool,), default=True, identity=True)
    known_hosts_files: List[str] = wire((list,), default=[], items=_STR, path=True, identity=True)
    timeout: float = wire(_SECONDS, default=10.0, low=0, high=_MAX_SECONDS)
    banner_timeout: float = wire(_SECONDS, default=30.0, low=0, high=_MAX_SECONDS)
    use_rsa_sha2_algorithms: bool = wire((bool,), default=True)
    proxy_command: Optional[str] = wire(_OPT_STR, identity=True)
    proxy_jump: List[JumpHop] = wire((list,), default=[], nested=JumpHop, identity=True)
    max_handshakes_per_address: int = wire(_COUNT, default=6, low=1, high=1_000_000)
    max_auth_attempts: int = wire(_COUNT, default=3, low=1, high=1_000_000)

    @classmethod
    def from_wire(cls, data: Any, prefix: str = "conn.") -> ConnectionSpec:
        """Checked field by field (and item by item); raises :class:`Malformed` naming the field."""
        if not isinstance(data, dict):
            raise Malformed(f"{prefix.rstrip('.')} must be an object")
        return parse(cls, data, prefix)

    def to_wire(self) -> Dict[str, Any]:
        return to_wire(self)

    def fingerprint(self, salt: bytes) -> str:
        return fingerprint(self, salt)

    def pool_key(self, salt: bytes) -> PoolKey:
        """The key transports for this spec are pooled under (the identity salted by the daemon)."""
        return PoolKey(self.host, self.port, self.user, self.fingerprint(salt))

    @property
    def where(self) -> str:
        """``addr:port``, how every message names the server."""
        return f"{self.addr}:{self.port}"

    def bastion(self) -> ConnectionSpec:
        """The spec of the last hop of the jump chain, reached through the hops before it.

        As OpenSSH's ``-J``, the hop authenticates with its own credentials only (the worker put them in
        the hop): never with the target's password or passphrase, which a bastion offering passwords would
        receive. It offers the target's key file unless it has its own (a signature reveals no secret).
        """
        hop = self.proxy_jump[-1]
        changes: Dict[str, Any] = {
            "host": hop.host,
            "addr": hop.addr,
            "port": hop.port,
            "user": hop.user,
            "proxy_jump": list(self.proxy_jump[:-1]),
            "proxy_command": None,
            "password": hop.password,
            "private_key_passphrase": None,
            "agent_socket": hop.agent_socket,
        }
        if hop.private_key_file:
            changes.update(private_key_file=hop.private_key_file, key_fingerprint=hop.key_fingerprint)
        return dataclasses.replace(self, **changes)
