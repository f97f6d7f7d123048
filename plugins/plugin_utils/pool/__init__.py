# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool: transports keyed by host, port, user and identity (see :mod:`.core`)."""

from __future__ import annotations

from .core import Pool, PoolExhausted
from .entries import Conn, Connector, Entry, Lease
from .settings import OnExhausted, PoolKey, PoolSettings, Priority

__all__ = [
    "Conn",
    "Connector",
    "Entry",
    "Lease",
    "OnExhausted",
    "Pool",
    "PoolExhausted",
    "PoolKey",
    "PoolSettings",
    "Priority",
]
