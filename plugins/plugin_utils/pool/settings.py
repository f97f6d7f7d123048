# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the pool keys transports on, and the limits and timings a request brings with it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict


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
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"pool setting {name} must be true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"pool setting {name} must be a number")
            elif isinstance(default, int):
                if value != int(value) or not 1 <= value <= 1_000_000:
                    raise ValueError(f"pool setting {name} must be a whole number from 1 to 1000000")
                values[name] = int(value)
            elif not 0 <= value <= 10 * 365 * 86400:
                raise ValueError(f"pool setting {name} is out of range")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
