# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Opening a transport: the socket (direct, proxy command or jump host), the handshake, the host key.

The pool's connector. It turns Paramiko's exceptions into :class:`PoolError` with one line that
names the address and port and says what to do, because that line is what the user sees as
Ansible's UNREACHABLE message. The jump-host opener is injected (a :class:`Tunnel`): this
module knows nothing of the pool or the daemon.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from .. import _host_certs, _known_hosts
from ..errors import ErrorKind, PoolError
from ..pool.settings import PoolKey, PoolSettings
from ..wire.spec import ConnectionSpec
from . import exit_signal, negotiation
from .auth import authenticate, fail
from .limiter import HandshakeLimiter
from .paramiko_guard import paramiko
from .paramiko_text import ParamikoText, classify
from .transport import CHANNEL_TIMEOUT, PooledTransport, Releasable

log = logging.getLogger("pooled_ssh.ssh")

#: How long a failed login is remembered for the same host, user and credentials. Every
#: task of a playbook would otherwise try again, and sshd's MaxAuthTries, fail2ban's
#: maxretry (5) and PerSourcePenalties count each try.
AUTH_FAILURE_TTL = 30.0
#: Bound on remembered failures (oldest dropped first).
AUTH_FAILURE_MAX = 4096
#: A handshake dropped before the banner (MaxStartups) is tried at most this many times in all.
MAX_DROPS = 10
#: How long a request may queue for a handshake slot behind other forks' handshakes to the same
#: address (at least ``timeout``).
QUEUE_ALLOWANCE = 60.0
#: A refused TCP connect is retried this many times (sshd restarting), with jittered delays
#: starting at REFUSED_DELAY and doubling: about 1.4 s in all, within the connect timeout.
REFUSED_RETRIES = 3
REFUSED_DELAY = 0.2


@dataclass(frozen=True)
class Target:
    """What the pool hands the connector: whom to connect to, and the settings of the request."""

    spec: ConnectionSpec
    settings: PoolSettings


class Tunnel(Protocol):
    """Opens a channel to the target through its jump host; the lease is held while the transport lives."""

    def __call__(self, target: Target, timeout: float) -> Tuple[Any, Releasable]:
        """A socket-like channel to ``target`` and the lease that holds its slot."""


class _Dropped(Exception):
    """The server closed the connection before its banner: MaxStartups, retry later."""


class _Refused(Exception):
    """TCP connection refused: nothing listens (yet). Retried briefly: sshd may be restarting."""

    def __init__(self, error: PoolError) -> None:
        super().__init__(str(error))
        self.error = error


class AuthFailures:
    """Failed logins remembered for a while, so every task of a playbook does not try again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: PoolKey (host, port, user and a salted fingerprint of the identity) -> (expiry, message).
        self._failures: Dict[PoolKey, Tuple[float, str]] = {}

    def check(self, key: PoolKey) -> None:
        """Fail at once, without contacting the server, when these credentials just failed."""
        now = self._clock()
        with self._lock:
            cached = self._failures.get(key)
            if cached is None:
                return
            expiry, message = cached
            if expiry <= now:
                del self._failures[key]
                return
        raise PoolError(
            f"{message} (not retried: this login failed {AUTH_FAILURE_TTL - (expiry - now):.0f}s ago; "
            f"the failure is remembered for {AUTH_FAILURE_TTL:g}s to spare the server's MaxAuthTries "
            "and fail2ban)",
            kind=ErrorKind.AUTH,
        )

    def remember(self, key: PoolKey, message: str) -> None:
        now = self._clock()
        with self._lock:
            for old in [k for k, (expiry, _why) in self._failures.items() if expiry <= now]:
                del self._failures[old]
            while len(self._failures) >= AUTH_FAILURE_MAX:
                del self._failures[next(iter(self._failures))]
            self._failures[key] = (now + AUTH_FAILURE_TTL, message)

    def forget(self, match: Callable[[PoolKey], bool]) -> int:
        with self._lock:
            gone = [k for k in self._failures if match(k)]
            for k in gone:
                del self._failures[k]
        return len(gone)


class Connector:
    """Opens authenticated transports for the pool."""

    def __init__(self, tunnel: Optional[Tunnel] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = HandshakeLimiter()
        self.tunnel = tunnel
        self.auth_failures = AuthFailures(clock)

    def connect(self, key: PoolKey, target: Target) -> PooledTransport:
        self.auth_failures.check(key)
        try:
            return self._connect(key, target)
        except PoolError as e:
            if e.kind is ErrorKind.AUTH:
                self.auth_failures.remember(key, str(e))
            raise

    def forget_auth_failures(self, match: Callable[[PoolKey], bool]) -> int:
        """Drop remembered failures of matching keys (``meta: reset_connection`` retries at once)."""
        return self.auth_failures.forget(match)

    def _connect(self, key: PoolKey, target: Target) -> PooledTransport:
        """Handshake with bounded retries of what a busy or restarting server does to us.

        ``timeout`` bounds the time this request spends on the server (its handshakes and its
        own backoff); queueing behind other forks' handshakes to the same address is bounded
        separately (QUEUE_ALLOWANCE), because it is not the server's fault.
        """
        spec = target.spec
        timeout = float(spec.timeout or 10)
        address = (spec.addr, spec.port)
        queue_deadline = time.monotonic() + max(timeout, QUEUE_ALLOWANCE)
        spent, dropped_times, refused = 0.0, 0, 0
        ticket: Optional[int] = None
        while True:
            ticket = self.limiter.acquire(address, spec.max_handshakes_per_address, queue_deadline + spent, ticket)
            started = time.monotonic()
            dropped, delay = False, 0.0
            try:
                return self._handshake(key, target, timeout)
            except _Dropped as e:
                dropped = True
                dropped_times += 1
                spent += time.monotonic() - started
                delay = min(2.0, 0.1 * 2 ** (dropped_times - 1)) * (0.5 + random.random())
                if dropped_times >= MAX_DROPS or spent + delay >= timeout:
                    raise fail(
                        spec,
                        f"the server dropped the connection before its banner {dropped_times} times ({e})",
                        "sshd's MaxStartups is too low for this many forks: raise it, "
                        "or lower max_handshakes_per_address",
                    ) from None
                spent += delay
                log.info(
                    "%s: handshake dropped by the server (attempt %d), retrying in %.2fs",
                    key.label,
                    dropped_times,
                    delay,
                )
            except _Refused as e:
                # Nothing reached sshd, so no MaxStartups slot, penalty or fail2ban count is spent.
                refused += 1
                spent += time.monotonic() - started
                delay = REFUSED_DELAY * 2 ** (refused - 1) * (0.5 + random.random())
                if refused > REFUSED_RETRIES or spent + delay >= timeout:
                    raise e.error from None
                spent += delay
                log.info(
                    "%s: connection refused (attempt %d; sshd may be restarting), retrying in %.2fs",
                    key.label,
                    refused,
                    delay,
                )
            finally:
                # A drop pauses every handshake to this address for the backoff (see HandshakeLimiter).
                self.limiter.release(address, dropped, backoff=delay if dropped else 0.0)
            if not dropped:
                time.sleep(delay)

    # -- one attempt -------------------------------------------------------------

    def _open_socket(self, target: Target, timeout: float) -> Tuple[Any, Optional[Releasable]]:
        spec = target.spec
        if spec.proxy_command:
            try:
                return paramiko.ProxyCommand(spec.proxy_command), None
            except Exception as e:
                raise fail(spec, f"proxy command failed to start ({e})", "fix proxy_command") from e
        if spec.proxy_jump and self.tunnel is not None:
            return self.tunnel(target, timeout)
        return _tcp_socket(spec, timeout), None

    def _handshake(self, key: PoolKey, target: Target, timeout: float) -> PooledTransport:
        spec = target.spec
        name = _known_hosts.host_name(spec.addr, spec.port)
        known = _load_known_hosts(spec)  # before the socket: nothing is spent on a check that cannot be made
        sock, via = self._open_socket(target, timeout)
        disabled: Dict[str, List[str]] = {}
        if not spec.use_rsa_sha2_algorithms:
            disabled = {
                "pubkeys": [
                    a
                    for a in paramiko.Transport._preferred_pubkeys  # type: ignore[attr-defined]
                    if "rsa-sha2" in a
                ],
                "keys": [
                    a
                    for a in paramiko.Transport._preferred_keys  # type: ignore[attr-defined]
                    if "rsa-sha2" in a
                ],
            }
        transport = exit_signal.transport_class(paramiko.Transport)(sock, disabled_algorithms=disabled or None)
        ok = False
        try:
            transport.banner_timeout = float(spec.banner_timeout or 30)
            transport.auth_timeout = timeout
            transport.channel_timeout = CHANNEL_TIMEOUT
            _prefer_key_types(transport, spec, known, name)
            _start(transport, spec, timeout)
            verified = verify_host_key(transport, spec, name, known)
            authenticate(transport, spec)
            transport.set_keepalive(0)
            ok = True
            return PooledTransport(transport, key.label, via, host_key_verified=verified)
        finally:
            if not ok:
                transport.close()
                if via is not None:
                    via.release()


def _load_known_hosts(spec: ConnectionSpec) -> List[_known_hosts.KnownHost]:
    if not spec.host_key_checking:
        return []
    try:
        return _known_hosts.load(spec.known_hosts_files)
    except _known_hosts.Unreadable as e:
        raise fail(
            spec,
            f"{e}; the host key cannot be checked",
            f"make {e.path} a readable file, or list the files to use in known_hosts_files",
            ErrorKind.HOSTKEY,
        ) from None


def _tcp_socket(spec: ConnectionSpec, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((spec.addr, spec.port), timeout=timeout)
    except socket.gaierror as e:
        raise fail(
            spec, f"cannot resolve host name ({e.strerror})", "check ansible_host and your DNS or /etc/hosts"
        ) from e
    except UnicodeError as e:
        raise fail(spec, "cannot resolve host name (not a valid DNS name)", "check ansible_host") from e
    except ConnectionRefusedError as e:
        raise _Refused(fail(spec, "connection refused", "check that sshd is running and listening on that port")) from e
    except TimeoutError as e:
        raise fail(
            spec,
            f"TCP connect timed out after {timeout:g}s",
            "check that the host is up and no firewall drops SSH, or raise timeout",
        ) from e
    except OSError as e:
        raise fail(spec, f"cannot connect ({e.strerror or e})", "check the address and the network") from e
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def _prefer_key_types(
    transport: paramiko.Transport, spec: ConnectionSpec, known: List[_known_hosts.KnownHost], name: str
) -> None:
    """Ask first for what known_hosts can vouch for, as OpenSSH does: host certificates where a CA
    is trusted for this server, then the key types it has for it."""
    if not spec.host_key_checking:
        return
    preferred = _known_hosts.known_types(known, name)
    certificates = _host_certs.prefers_certificates(known, name)
    if not preferred and not certificates:
        return
    options = transport.get_security_options()
    plain = [t for t in options.key_types if not _host_certs.is_certificate_type(t)]
    ordered = [t for t in plain if t in preferred or (t.startswith("rsa-sha2") and "ssh-rsa" in preferred)]
    rest = [t for t in plain if t not in ordered]
    # Paramiko offers a certificate type after every plain one; naming them first puts them first.
    front: List[str] = []
    if certificates:
        offered = transport.preferred_keys  # Paramiko's plain types, then a certificate type for each
        front = [t for t in _host_certs.certificate_types(ordered + rest) if t in offered]
    options.key_types = front + ordered + rest


def _start(transport: paramiko.Transport, spec: ConnectionSpec, timeout: float) -> None:
    started = time.monotonic()
    try:
        transport.start_client(timeout=timeout)
    except paramiko.SSHException as e:
        context = e.__context__
        if classify(e) is ParamikoText.NO_BANNER:
            if isinstance(context, (EOFError, ConnectionResetError, BrokenPipeError)):
                raise _Dropped(str(e)) from None
            raise fail(
                spec,
                f"no SSH banner within {transport.banner_timeout:g}s",
                "the port answers but is not a responsive sshd; check ansible_port",
            ) from None
        kind = negotiation.kind_of(str(e))
        if kind is not None:
            raise _incompatible(transport, spec, kind, timeout) from None
        raise fail(spec, f"SSH negotiation failed ({e})", "check the server's algorithms and logs") from None
    except (EOFError, OSError) as e:
        raise _Dropped(repr(e)) from None
    if transport.host_key is None:
        raise fail(
            spec,
            f"SSH negotiation timed out after {time.monotonic() - started:.1f}s",
            "check the network, or raise timeout",
        )


def _offered_certificate(transport: paramiko.Transport, server_key: paramiko.PKey) -> Optional[bytes]:
    """The host certificate the server proved it holds, when it offered one."""
    if not _host_certs.is_certificate_type(transport.host_key_type or ""):
        return None
    blob = getattr(server_key, "public_blob", None)
    return getattr(blob, "key_blob", None)


def _incompatible(
    transport: paramiko.Transport, spec: ConnectionSpec, kind: negotiation.Kind, timeout: float
) -> PoolError:
    """No algorithm of a kind in common: name both sides (the server's offer is read again on a
    direct connection; through a proxy or jump host it is not)."""
    offer = None
    if not spec.proxy_command and not spec.proxy_jump:
        offer = negotiation.server_offer(spec.addr, spec.port, min(timeout, 10.0))
    options = transport.get_security_options()
    supported = {
        negotiation.Kind.KEX: options.kex,
        negotiation.Kind.HOST_KEY: transport.preferred_keys,
        negotiation.Kind.CIPHER: options.ciphers,
        negotiation.Kind.MAC: options.digests,
        negotiation.Kind.COMPRESSION: options.compression,
    }[kind]
    detail = negotiation.explain(kind, offer.get(kind.field) if offer else None, list(supported), paramiko.__version__)
    return fail(
        spec,
        f"SSH negotiation failed: {detail}",
        "this is a Paramiko limitation: use ansible_connection=ssh for this host, or enable one of "
        "those algorithms on the server",
    )


def verify_host_key(
    transport: paramiko.Transport, spec: ConnectionSpec, name: str, known: List[_known_hosts.KnownHost]
) -> bool:
    """Check the server's key (or host certificate) before any credential is sent; True when
    known_hosts vouched for it."""
    server_key = transport.get_remote_server_key()
    keytype, blob = server_key.get_name(), server_key.get_base64()
    if not spec.host_key_checking:
        return False
    cert_blob = _offered_certificate(transport, server_key)
    verdict, cert = _host_certs.verify_offer(known, name, [spec.addr], keytype, blob, cert_blob)
    offered = f"{keytype} {_known_hosts.fingerprint(blob)}"
    if verdict.status is _known_hosts.Status.KNOWN:
        if cert is not None and cert.cert is not None and cert.status is _host_certs.CertStatus.ACCEPTED:
            log.info(
                "%s: host certificate %s accepted (CA at %s)",
                spec.where,
                cert.cert.describe(),
                cert.entry.where if cert.entry else "?",
            )
        return True
    entry = verdict.entry
    if verdict.status is _known_hosts.Status.REVOKED and entry is not None:
        what = (
            f"host certificate {cert.cert.describe()}: {cert.reason}"
            if cert and cert.cert
            else f"host key {offered} is marked @revoked in {entry.where}"
        )
        raise fail(spec, what, "the server's key or its CA was revoked: do not connect", ErrorKind.HOSTKEY)
    if verdict.status is _known_hosts.Status.CHANGED and entry is not None:
        raise fail(
            spec,
            f"REMOTE HOST IDENTIFICATION HAS CHANGED: the server offers {offered} but "
            f"{entry.where} has {entry.keytype} {_known_hosts.fingerprint(entry.key)}",
            f"if the change is expected, remove that line (ssh-keygen -R '{name}') and reconnect",
            ErrorKind.HOSTKEY,
        )
    if cert is not None and cert.cert is not None and cert.status is _host_certs.CertStatus.INVALID:
        # A CA is trusted for this host and its certificate failed: never fall back to learning the key.
        raise fail(
            spec,
            f"host certificate refused: {cert.reason} ({cert.cert.describe()}, CA trusted at "
            f"{cert.entry.where if cert.entry else '?'})",
            "renew or re-sign the host's certificate (ssh-keygen -s ... -h -n <name>)",
            ErrorKind.HOSTKEY,
        )
    if spec.host_key_auto_add:
        files = spec.known_hosts_files
        try:
            if spec.record_host_keys and files and _known_hosts.record(files[0], name, keytype, blob):
                log.info("recorded host key %s for %s in %s", offered, name, files[0])
        except (OSError, _known_hosts.Unreadable) as e:
            # As OpenSSH: the key was accepted for this connection; only remembering it failed.
            log.warning(
                "%s: failed to add the host key %s to %s (%s); it will be asked about again",
                spec.where,
                offered,
                files[0],
                getattr(e, "strerror", None) or e,
            )
        return False
    if cert is not None and cert.cert is not None:
        raise fail(
            spec,
            f"host certificate not trusted: {cert.reason}",
            f"add its CA as '@cert-authority {name} <CA public key>' to known_hosts, or the host key "
            f"(ssh-keyscan -p {spec.port} {spec.addr})",
            ErrorKind.HOSTKEY,
        )
    raise fail(
        spec,
        f"host key is unknown ({offered})",
        f"verify it and add it to known_hosts (ssh-keyscan -p {spec.port} {spec.addr}), or set host_key_auto_add=true",
        ErrorKind.HOSTKEY,
    )
