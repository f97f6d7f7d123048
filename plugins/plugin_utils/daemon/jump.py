# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jump hosts: a ``direct-tcpip`` channel to the target through a pooled transport to its bastion.

Injected into the connector as its :class:`~..ssh.connect.Tunnel`. The bastion's transport
comes from the same pool (its own key: the hop's name, port and user and its identity), so
many targets behind one bastion share one login to it. The lease holds one of the bastion
transport's channel slots for as long as the target transport lives (released when that
closes). Chains (``a,b``) recurse through the connector: ``b`` is reached through ``a``.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

from ..errors import ErrorKind, PoolError
from ..pool.core import Pool
from ..pool.entries import Lease
from ..ssh.connect import Target
from ..ssh.paramiko_guard import paramiko
from ..ssh.transport import PooledTransport

log = logging.getLogger("pooled_ssh.daemon")


class JumpOpener:
    """Opens the target's socket through its last jump host, on a transport leased from ``pool``."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self._pool: Optional[Pool[PooledTransport]] = None

    def attach(self, pool: Pool[PooledTransport]) -> None:
        """The pool that bastion transports come from (it holds the connector that holds us)."""
        self._pool = pool

    def __call__(self, target: Target, timeout: float) -> Tuple[paramiko.Channel, Lease[PooledTransport]]:
        if self._pool is None:
            raise PoolError(f"{target.spec.where}: jump hosts need a pool", kind=ErrorKind.INTERNAL)
        spec = target.spec
        bastion = Target(spec.bastion(), target.settings)
        key = bastion.spec.pool_key(self._salt)
        lease = self._pool.acquire(key, bastion.settings, bastion)
        where = spec.where
        try:
            chan = lease.conn.transport.open_channel(
                "direct-tcpip", dest_addr=(spec.addr, spec.port), src_addr=("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as e:
            lease.release()
            raise PoolError(
                f"{where}: the jump host {key.label} refused to connect to it ({e.text or e}); "
                "check that the target is reachable from the jump host and that its sshd has "
                "AllowTcpForwarding yes",
                kind=ErrorKind.CONNECT,
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            lease.release(broken=not lease.conn.is_active())
            raise PoolError(
                f"{where}: no channel through the jump host {key.label} within {timeout:g}s ({e}); "
                "raise timeout or check the jump host",
                kind=ErrorKind.CONNECT,
            ) from None
        log.info(
            "%s: tunnelled through jump host %s (transport %d, %s)",
            where,
            key.label,
            lease.entry.id,
            "reused" if lease.hit else "new",
        )
        return chan, lease
