# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping the pool healthy: idle timeouts, health checks of idle transports, keepalives of busy ones,
and the daemon's own exit once it has held nothing for a while."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..pool.entries import Entry
from ..ssh.transport import PooledTransport
from .xrun import expire_idle_executors

if TYPE_CHECKING:
    from .server import Daemon

log = logging.getLogger("pooled_ssh.daemon")


class Maintainer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def run(self) -> None:
        while not self.daemon.stopping.wait(1.0):
            try:
                self.once()
            except Exception:
                log.exception("maintenance failed")

    def once(self) -> None:
        daemon = self.daemon
        _closed, due = daemon.pool.sweep()
        for entry in due:
            threading.Thread(target=self._health_check, args=(entry,), daemon=True).start()
        now = time.monotonic()
        for entry in daemon.pool.entries():
            pt, settings = entry.conn, entry.settings
            interval = settings.keepalive_interval
            if entry.in_use and interval > 0 and now - pt.last_probe >= interval:
                pt.last_probe = now
                threading.Thread(
                    target=self._keepalive, args=(entry, interval * settings.keepalive_max_missed), daemon=True
                ).start()
        expire_idle_executors()
        if daemon.client_count() > 0 or not daemon.pool.is_empty():
            daemon.last_busy = now
        elif daemon.idle_exit >= 0 and now - daemon.last_busy >= daemon.idle_exit:
            # The accept loop decides: only it takes clients, so only it can know none is arriving.
            daemon.idle_exit_due.set()

    def _health_check(self, entry: Entry[PooledTransport]) -> None:
        settings = entry.settings
        ok = entry.conn.probe(max(1.0, settings.keepalive_interval * settings.keepalive_max_missed))
        self.daemon.pool.report_health(entry, ok)

    def _keepalive(self, entry: Entry[PooledTransport], timeout: float) -> None:
        if entry.conn.probe(timeout):
            return
        if entry.conn.is_active():
            log.warning("keepalive: %s did not answer within %.0fs; closing it", entry.key.label, timeout)
            entry.conn.lost_reason = f"the server did not answer keepalives for {timeout:g}s"
        else:
            # The transport died (reset, closed by the server) while a keepalive waited: not silence.
            log.warning("keepalive: %s: the connection closed", entry.key.label)
        self.daemon.pool.mark_dead(entry)
        entry.conn.close()
