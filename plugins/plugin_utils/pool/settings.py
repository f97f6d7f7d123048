# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the pool keys transports on, and the limits and timings a request brings with it."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from typing import Any, Dict


class Priority(IntEnum):
    """Which queued request the fair queue serves first: higher first, then oldest first."""

    LOW = 1
    NORMAL = 2
    HIGH = 3


class OnExhausted(str, Enum):
    """What a request does when its key is at ``max_connections`` and no transport has room.

    ``wait`` queues (up to ``wait_timeout``), ``fail`` reports exhaustion at once, ``direct`` opens
    an unpooled one-off transport past the limit, closed after that request (the fallback of the
    healer service's defaults), counted as ``directConnections``.
    """

    WAIT = "wait"
    FAIL = "fail"
    DIRECT = "direct"


@dataclass(frozen=True)
class PoolKey:
    """Inventory host, port and user, plus a salted fingerprint of the identity.

    Two requests share transports only when all four match, so a session authenticated
    with one password or key (or trusting one set of host keys) is never handed to a
    request that carries another.
    """

    host: str
    port: int
    user: str
    cred: str = ""

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class PoolSettings:
    """One request's limits and timings: they apply to that request, never to another client's."""

    max_connections: int = 5
    max_channels: int = 10
    idle_timeout: float = 60.0
    wait_timeout: float = 60.0
    max_waiters: int = 1000
    health_checks: bool = True
    health_check_interval: float = 30.0
    keepalive_interval: float = 10.0
    keepalive_max_missed: int = 3
    #: Recycle a transport after this many channels (Paramiko never prunes its channel table).
    max_transport_channels: int = 5000
    #: Seconds between two idle sweeps of a transport (the ``SSH_POOL_CLEANUP_INTERVAL`` environment name).
    cleanup_interval: float = 1.0
    priority: Priority = Priority.NORMAL
    on_exhausted: OnExhausted = OnExhausted.WAIT

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> PoolSettings:
        """Settings from a request; raises ValueError for a value of the wrong type or range.

        Checked here, before the pool stores them: a transport holding a bad value would make
        every later sweep fail, for every host.
        """
        if not isinstance(data, dict):
            raise ValueError("pool must be an object")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        defaults = cls()
        for name, value in values.items():
            default = getattr(defaults, name)
            if isinstance(default, Enum):
                values[name] = _member(type(default), name, value)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"pool setting {name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"pool setting {name} must be a number")
            elif isinstance(default, int):
                if value != int(value) or not 1 <= value <= 1_000_000:
                    raise ValueError(f"pool setting {name} must be a whole number from 1 to 1000000")
                values[name] = int(value)
            elif not 0 <= value <= 10 * 365 * 86400:
                raise ValueError(f"pool setting {name} is out of range")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    """The wire form of a setting: an enum travels as its value."""
    return value.value if isinstance(value, Enum) else value


def _member(kind: Any, name: str, value: Any) -> Any:
    """The enum member a request names (by value, or a priority by its name too)."""
    if isinstance(value, bool):
        raise ValueError(f"pool setting {name} must be one of {', '.join(str(m.value) for m in kind)}")
    if isinstance(value, str) and issubclass(kind, IntEnum) and value.upper() in kind.__members__:
        return kind[value.upper()]
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"pool setting {name} must be one of {', '.join(str(m.value) for m in kind)}") from None
