# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool's records: a pooled transport, a lease on one of its channel slots, a waiting request."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Deque, Generic, List, Optional, Protocol, TypeVar, Union

from .settings import PoolKey, PoolSettings

if TYPE_CHECKING:
    from .core import Pool


class Conn(Protocol):
    """What the pool needs of a transport."""

    def is_active(self) -> bool:
        """Whether the transport is still up."""

    def close(self) -> None:
        """Close the transport."""


C = TypeVar("C", bound=Conn)
C_co = TypeVar("C_co", bound=Conn, covariant=True)


class Connector(Protocol[C_co]):
    """Opens a transport for a key; ``target`` is whatever the caller passed to ``acquire``."""

    def connect(self, key: PoolKey, target: Any) -> C_co:
        """A new, authenticated transport for ``key``."""


_ids = itertools.count(1)


@dataclass
class Entry(Generic[C]):
    """One pooled transport and the pool's bookkeeping about it."""

    key: PoolKey
    conn: C
    created: float
    last_used: float
    max_channels: int
    #: The settings of the request that used it last: its idle timeout, health checks, keepalives.
    settings: PoolSettings = field(default_factory=PoolSettings)
    id: int = field(default_factory=lambda: next(_ids))
    in_use: int = 0
    opened: int = 0
    dead: bool = False
    retire: bool = False
    #: Opened by warming and not used yet: its first lease is the request's login (a pool miss).
    ahead: bool = False
    checking: bool = False
    last_checked: float = 0.0
    #: When the idle sweep last looked at it (sweeps come every ``settings.cleanup_interval``).
    last_swept: float = 0.0

    @property
    def usable(self) -> bool:
        return not (self.dead or self.retire)


@dataclass
class Lease(Generic[C]):
    """One channel slot on one transport, held for the length of one operation."""

    pool: Pool[C]
    entry: Entry[C]
    hit: bool
    settings: PoolSettings
    waited: float = 0.0
    released: bool = False

    @property
    def conn(self) -> C:
        return self.entry.conn

    def release(self, *, broken: bool = False, refused: bool = False) -> None:
        self.pool.release(self, broken=broken, refused=refused)


@dataclass
class Reservation(Generic[C]):
    """A warm handshake counted in its key's pool until the handshake ends or it is given back."""

    kp: KeyPool[C]
    settled: bool = False


class OpenTicket(Enum):
    """A grant that is not a lease: permission to open a new transport for the key (``DIRECT``: a
    one-off past ``max_connections``, for ``on_exhausted: direct``)."""

    OPEN = "open"
    DIRECT = "direct"


Grant = Union[Lease[C], OpenTicket]


class Waiter(Generic[C]):
    """A request queued for a key, with its own settings (its wait, its limits)."""

    __slots__ = ("error", "grant", "settings")

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self.grant: Optional[Grant[C]] = None
        self.error: Optional[BaseException] = None


@dataclass
class KeyPool(Generic[C]):
    """The transports and the queue of one key."""

    key: PoolKey
    entries: List[Entry[C]] = field(default_factory=list)
    waiters: Deque[Waiter[C]] = field(default_factory=deque)
    connecting: int = 0
    #: Of those, the warm handshakes (Pool.reserve_warm): opened for whoever comes first.
    warming: int = 0
    #: The server's real MaxSessions once a refused channel has taught it to us.
    learned_max_channels: Optional[int] = None

    def handshakes_carry(self, demand: int, settings: PoolSettings) -> bool:
        """Whether the handshakes under way bring room for ``demand`` requests: one serves its opener
        and the rest of its channels; a warm one, opened for nobody, all of them."""
        return demand <= self.connecting * (self.channel_limit(settings) - 1) + self.warming

    def channel_limit(self, settings: PoolSettings) -> int:
        limit = settings.max_channels
        if self.learned_max_channels is not None:
            limit = min(limit, self.learned_max_channels)
        return max(1, limit)
