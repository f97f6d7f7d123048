# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything Paramiko: opening, verifying, authenticating and probing transports.

The daemon's only SSH module. It turns Paramiko's exceptions into :class:`PoolError` with
one line that names the address and port and says what to do, because that line is
what the user sees as Ansible's UNREACHABLE message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import paramiko

from . import _known_hosts
from ._pool import PoolError, PoolKey

log = logging.getLogger("pooled_ssh.ssh")

#: Give every channel open and request a deadline: Paramiko's own waits have none.
CHANNEL_TIMEOUT = 30.0
#: How long a failed login is remembered for the same host, user and credentials. Every
#: task of a playbook would otherwise try again, and sshd's MaxAuthTries, fail2ban's
#: maxretry (5) and PerSourcePenalties count each try.
AUTH_FAILURE_TTL = 30.0
#: Bound on remembered failures (oldest dropped first).
AUTH_FAILURE_MAX = 4096


class HandshakeLimiter:
    """Caps concurrent handshakes per server address so forks never trip ``MaxStartups``.

    The cap shrinks when the server drops a handshake before its banner (it told us
    its real limit) and never grows back above the configured value. A drop also pauses
    new handshakes to that address for the retry's backoff: sshd counts a connection as
    unauthenticated until its listener hears that the login finished, so handshakes sent
    back to back are dropped even one at a time; everyone waiting backs off together.

    Slots go first come, first served, and a retry keeps its first ticket: with fifty forks
    on one address, a request the server dropped goes next rather than racing the others
    again, so no single request can be dropped until its own budget runs out.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: Dict[Tuple[str, int], int] = {}
        self._limit: Dict[Tuple[str, int], int] = {}
        self._not_before: Dict[Tuple[str, int], float] = {}
        self._waiting: Dict[Tuple[str, int], List[int]] = {}  # tickets, a heap per address
        self._tickets = itertools.count()

    def acquire(self, address: Tuple[str, int], limit: int, deadline: float,
                ticket: Optional[int] = None) -> int:
        """Wait for a slot; returns the ticket to pass back when retrying after a drop."""
        with self._cond:
            if ticket is None:
                ticket = next(self._tickets)
            waiting = self._waiting.setdefault(address, [])
            heapq.heappush(waiting, ticket)
            self._cond.notify_all()  # for whoever watches the line (tests)
            try:
                while True:
                    current = self._active.get(address, 0)
                    now = time.monotonic()
                    paused = self._not_before.get(address, 0.0) - now
                    if (paused <= 0 and waiting[0] == ticket
                            and current < min(limit, self._limit.get(address, limit))):
                        self._active[address] = current + 1
                        return ticket
                    remaining = deadline - now
                    if remaining <= 0:
                        raise PoolError(
                            f"{address[0]}:{address[1]}: timed out waiting for a handshake slot "
                            f"({current} handshakes to this address under way); raise the timeout",
                            kind="connect",
                        )
                    self._cond.wait(min(remaining, max(paused, 0.001) if paused > 0 else 1.0))
            finally:
                waiting.remove(ticket)
                heapq.heapify(waiting)
                if not waiting:
                    self._waiting.pop(address, None)
                self._cond.notify_all()  # the next in line may go now

    def release(self, address: Tuple[str, int], dropped: bool, backoff: float = 0.0) -> None:
        with self._cond:
            current = self._active.get(address, 1)
            if dropped:
                self._limit[address] = max(1, min(self._limit.get(address, current), current - 1))
                if backoff > 0:
                    until = time.monotonic() + backoff
                    self._not_before[address] = max(self._not_before.get(address, 0.0), until)
            if current <= 1:
                self._active.pop(address, None)
            else:
                self._active[address] = current - 1
            self._cond.notify_all()

    def limit(self, address: Tuple[str, int]) -> Optional[int]:
        with self._cond:
            return self._limit.get(address)


class _Dropped(Exception):
    """The server closed the connection before its banner: MaxStartups, retry later."""


class _Refused(Exception):
    """TCP connection refused: nothing listens (yet). Retried briefly: sshd may be restarting."""

    def __init__(self, error: PoolError) -> None:
        super().__init__(str(error))
        self.error = error


#: A handshake dropped before the banner (MaxStartups) is tried at most this many times in all.
MAX_DROPS = 10
#: How long a request may queue for a handshake slot behind other forks' handshakes to the same
#: address (at least ``timeout``).
QUEUE_ALLOWANCE = 60.0
#: A refused TCP connect is retried this many times (sshd restarting), with jittered delays
#: starting at REFUSED_DELAY and doubling: about 1.4 s in all, within the connect timeout.
REFUSED_RETRIES = 3
REFUSED_DELAY = 0.2


class SshConn:
    """A pooled transport and what the daemon needs to keep it healthy."""

    def __init__(self, transport: paramiko.Transport, label: str, via: Optional[Any] = None) -> None:
        self.transport = transport
        transport.pooled_conn = self  # type: ignore[attr-defined]  # channel -> transport -> us, for messages
        self.label = label
        self._via = via  # the bastion's lease, released when we close
        self._probe_lock = threading.Lock()
        self.last_reply = time.monotonic()
        self.last_probe = 0.0
        self.settings: Any = None  # the PoolSettings of the latest request, set by the daemon
        #: Why the daemon gave up on this transport (keepalives unanswered...), for error messages.
        self.lost_reason: Optional[str] = None

    def is_active(self) -> bool:
        return self.transport.is_active()

    def open_channel(self, timeout: float = CHANNEL_TIMEOUT) -> paramiko.Channel:
        return self.transport.open_session(timeout=timeout)

    def probe(self, timeout: float) -> bool:
        """A keepalive that needs a reply, bounded by ``timeout``.

        Paramiko's keepalives ask for no reply and its ``global_request`` waits forever,
        so run it on a helper thread and give up at the deadline.
        """
        if not self._probe_lock.acquire(blocking=False):
            return time.monotonic() - self.last_reply < timeout
        result: List[Any] = []

        def run() -> None:
            try:
                result.append(self.transport.global_request("keepalive@openssh.com", wait=True))
            except Exception:
                result.append(None)
            finally:
                self._probe_lock.release()

        worker = threading.Thread(target=run, name=f"probe-{self.label}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            return False
        # Any reply (success or failure) proves the peer is there; None means the transport died.
        alive = bool(result) and self.transport.is_active()
        if alive:
            self.last_reply = time.monotonic()
        return alive

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            if self._via is not None:
                via, self._via = self._via, None
                via.release()


def _fail(spec: Dict[str, Any], cause: str, hint: str, kind: str = "connect") -> PoolError:
    return PoolError(f"{spec['addr']}:{spec['port']}: {cause}; {hint}", kind=kind)


def _agent_keys(path: Optional[str]) -> Tuple[Optional[paramiko.agent.AgentSSH], List[paramiko.PKey]]:
    """Keys from the ssh-agent of the worker that asked (the daemon's own env may be stale)."""
    if not path:
        return None, []
    agent = paramiko.agent.AgentSSH()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(path)
        agent._connect(sock)
    except (OSError, paramiko.SSHException):
        return None, []
    return agent, list(agent.get_keys())


def _passphrase(value: Optional[str]) -> Optional[bytes]:
    """``PKey.from_path`` wants bytes (a str raises TypeError deep in cryptography)."""
    return value.encode("utf-8") if value else None


def _needs_passphrase(e: Exception) -> bool:
    """Paramiko raises PasswordRequiredException for PEM keys; for OpenSSH-format keys cryptography's
    TypeError ("Key is password-protected, but password was not provided") comes through."""
    return isinstance(e, paramiko.PasswordRequiredException) or (
        isinstance(e, TypeError) and "password" in str(e).lower())


def _load_key(path: str, passphrase: Optional[str], spec: Dict[str, Any],
              password: Optional[str] = None) -> paramiko.PKey:
    """Load a key as OpenSSH does: without a passphrase first; only an encrypted key gets one.

    The passphrase is ``private_key_passphrase``, else the login password (paramiko_ssh's
    habit): an unencrypted key with a password set simply loads, and the password stays a password.
    """
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError as e:
        raise _fail(spec, f"private key {path} does not exist", "fix private_key_file", "auth") from e
    except (paramiko.PasswordRequiredException, TypeError) as e:
        if not _needs_passphrase(e):
            raise _fail(spec, f"cannot load private key {path} ({e})", "check the file", "auth") from e
    except (paramiko.SSHException, ValueError) as e:
        raise _fail(spec, f"cannot load private key {path} ({e})", "check the file", "auth") from e
    tried = [(value, name) for value, name in ((passphrase, "private_key_passphrase"),
                                               (password, "ansible_password")) if value]
    for value, _name in tried:
        try:
            return paramiko.PKey.from_path(path, _passphrase(value))
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    if not tried:
        raise _fail(spec, f"private key {path} is encrypted and no passphrase was given",
                    "set private_key_passphrase (or use an ssh-agent)", "auth")
    names = " nor ".join(name for _, name in tried)
    raise _fail(spec, f"private key {path} is encrypted and neither {names} decrypts it" if len(tried) > 1
                else f"private key {path} is encrypted and {names} does not decrypt it",
                "set private_key_passphrase to the key's passphrase", "auth")


def _default_key(path: str, passphrase: Optional[str]) -> Optional[paramiko.PKey]:
    """A default key file (``~/.ssh/id_*``), or None when it is missing, unreadable or locked."""
    try:
        return paramiko.PKey.from_path(path)
    except (paramiko.PasswordRequiredException, TypeError) as e:
        if not (passphrase and _needs_passphrase(e)):
            return None
    except Exception:
        return None
    try:
        return paramiko.PKey.from_path(path, _passphrase(passphrase))
    except Exception:
        return None


def _drop_credentials(transport: paramiko.Transport) -> None:
    """Paramiko's auth handler keeps the password (and a closure holding it for keyboard-interactive)
    and the key for the transport's whole life; nothing needs them once we are logged in."""
    handler = transport.auth_handler
    if handler is not None:
        handler.password = None
        handler.private_key = None
        handler.interactive_handler = None


class Connector:
    """Opens authenticated transports for the pool."""

    def __init__(self, pool_lease: Optional[Any] = None, clock: Any = time.monotonic) -> None:
        self.limiter = HandshakeLimiter()
        self._jump = pool_lease  # callable(spec, timeout) -> (channel, lease on a bastion transport)
        self._clock = clock
        self._auth_lock = threading.Lock()
        #: PoolKey (host, port, user and a salted fingerprint of the credentials) -> (expiry, message).
        self._auth_failures: Dict[PoolKey, Tuple[float, str]] = {}

    # -- the pool's entry point ------------------------------------------------

    def connect(self, key: PoolKey, spec: Dict[str, Any]) -> SshConn:
        self._check_auth_cache(key)
        try:
            return self._connect(key, spec)
        except PoolError as e:
            if e.kind == "auth":
                self._remember_auth_failure(key, str(e))
            raise

    def _check_auth_cache(self, key: PoolKey) -> None:
        """Fail at once, without contacting the server, when these credentials just failed."""
        now = self._clock()
        with self._auth_lock:
            cached = self._auth_failures.get(key)
            if cached is None:
                return
            expiry, message = cached
            if expiry <= now:
                del self._auth_failures[key]
                return
        raise PoolError(f"{message} (not retried: this login failed {AUTH_FAILURE_TTL - (expiry - now):.0f}s ago; "
                        f"the failure is remembered for {AUTH_FAILURE_TTL:g}s to spare the server's MaxAuthTries "
                        "and fail2ban)", kind="auth")

    def _remember_auth_failure(self, key: PoolKey, message: str) -> None:
        now = self._clock()
        with self._auth_lock:
            for old in [k for k, (expiry, _) in self._auth_failures.items() if expiry <= now]:
                del self._auth_failures[old]
            while len(self._auth_failures) >= AUTH_FAILURE_MAX:
                del self._auth_failures[next(iter(self._auth_failures))]
            self._auth_failures[key] = (now + AUTH_FAILURE_TTL, message)

    def forget_auth_failures(self, match: Any) -> int:
        """Drop remembered failures of matching keys (``meta: reset_connection`` retries at once)."""
        with self._auth_lock:
            gone = [k for k in self._auth_failures if match(k)]
            for k in gone:
                del self._auth_failures[k]
        return len(gone)

    def _connect(self, key: PoolKey, spec: Dict[str, Any]) -> SshConn:
        """Handshake with bounded retries of what a busy or restarting server does to us.

        ``timeout`` bounds the time this request spends on the server (its handshakes and its
        own backoff); queueing behind other forks' handshakes to the same address is bounded
        separately (QUEUE_ALLOWANCE), because it is not the server's fault.
        """
        timeout = float(spec.get("timeout") or 10)
        address = (spec["addr"], int(spec["port"]))
        limit = int(spec.get("max_handshakes_per_address") or 6)
        queue_deadline = time.monotonic() + max(timeout, QUEUE_ALLOWANCE)
        spent = 0.0
        dropped_times = 0
        refused = 0
        ticket: Optional[int] = None
        while True:
            ticket = self.limiter.acquire(address, limit, queue_deadline + spent, ticket)
            started = time.monotonic()
            dropped = False
            delay = 0.0
            try:
                return self._handshake(key, spec, timeout)
            except _Dropped as e:
                dropped = True
                dropped_times += 1
                spent += time.monotonic() - started
                delay = min(2.0, 0.1 * 2 ** (dropped_times - 1)) * (0.5 + random.random())
                if dropped_times >= MAX_DROPS or spent + delay >= timeout:
                    raise _fail(spec, f"the server dropped the connection before its banner {dropped_times} times "
                                f"({e})", "sshd's MaxStartups is too low for this many forks: raise it, "
                                "or lower max_handshakes_per_address") from None
                spent += delay
                log.info("%s: handshake dropped by the server (attempt %d), retrying in %.2fs",
                         key.label, dropped_times, delay)
            except _Refused as e:
                # Nothing reached sshd, so no MaxStartups slot, penalty or fail2ban count is spent.
                refused += 1
                spent += time.monotonic() - started
                delay = REFUSED_DELAY * 2 ** (refused - 1) * (0.5 + random.random())
                if refused > REFUSED_RETRIES or spent + delay >= timeout:
                    raise e.error from None
                spent += delay
                log.info("%s: connection refused (attempt %d; sshd may be restarting), retrying in %.2fs",
                         key.label, refused, delay)
            finally:
                # A drop pauses every handshake to this address for the backoff (see HandshakeLimiter).
                self.limiter.release(address, dropped, backoff=delay if dropped else 0.0)
            if not dropped:
                time.sleep(delay)

    # -- one attempt -------------------------------------------------------------

    def _open_socket(self, spec: Dict[str, Any], timeout: float) -> Tuple[Any, Optional[Any]]:
        proxy_command = spec.get("proxy_command")
        if proxy_command:
            try:
                return paramiko.ProxyCommand(proxy_command), None
            except Exception as e:
                raise _fail(spec, f"proxy command failed to start ({e})", "fix proxy_command") from e
        if spec.get("proxy_jump") and self._jump is not None:
            return self._jump(spec, timeout)
        try:
            sock = socket.create_connection((spec["addr"], int(spec["port"])), timeout=timeout)
        except socket.gaierror as e:
            raise _fail(spec, f"cannot resolve host name ({e.strerror})",
                        "check ansible_host and your DNS or /etc/hosts") from e
        except UnicodeError as e:
            raise _fail(spec, "cannot resolve host name (not a valid DNS name)", "check ansible_host") from e
        except ConnectionRefusedError as e:
            raise _Refused(_fail(spec, "connection refused",
                                 "check that sshd is running and listening on that port")) from e
        except TimeoutError as e:
            raise _fail(spec, f"TCP connect timed out after {timeout:g}s",
                        "check that the host is up and no firewall drops SSH, or raise timeout") from e
        except OSError as e:
            raise _fail(spec, f"cannot connect ({e.strerror or e})", "check the address and the network") from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock, None

    def _handshake(self, key: PoolKey, spec: Dict[str, Any], timeout: float) -> SshConn:
        sock, via = self._open_socket(spec, timeout)
        disabled: Dict[str, List[str]] = {}
        if not spec.get("use_rsa_sha2_algorithms", True):
            disabled = {
                "pubkeys": [a for a in paramiko.Transport._preferred_pubkeys if "rsa-sha2" in a],
                "keys": [a for a in paramiko.Transport._preferred_keys if "rsa-sha2" in a],
            }
        transport = paramiko.Transport(sock, disabled_algorithms=disabled or None)
        ok = False
        try:
            transport.banner_timeout = float(spec.get("banner_timeout") or 30)
            transport.auth_timeout = timeout
            transport.channel_timeout = CHANNEL_TIMEOUT
            name = _known_hosts.host_name(spec["addr"], int(spec["port"]))
            known = _known_hosts.load(spec.get("known_hosts_files") or [])
            preferred = _known_hosts.known_types(known, name)
            if preferred and spec.get("host_key_checking", True):
                options = transport.get_security_options()
                ordered = [t for t in options.key_types if t in preferred or
                           (t.startswith("rsa-sha2") and "ssh-rsa" in preferred)]
                options.key_types = ordered + [t for t in options.key_types if t not in ordered]
            self._start(transport, spec, timeout)
            self._verify_host_key(transport, spec, name, known)
            self._authenticate(transport, spec)
            transport.set_keepalive(0)
            ok = True
            return SshConn(transport, key.label, via)
        finally:
            if not ok:
                transport.close()
                if via is not None:
                    via.release()

    def _start(self, transport: paramiko.Transport, spec: Dict[str, Any], timeout: float) -> None:
        started = time.monotonic()
        try:
            transport.start_client(timeout=timeout)
        except paramiko.SSHException as e:
            context = e.__context__
            if "protocol banner" in str(e):
                if isinstance(context, (EOFError, ConnectionResetError, BrokenPipeError)):
                    raise _Dropped(str(e)) from None
                raise _fail(spec, f"no SSH banner within {transport.banner_timeout:g}s",
                            "the port answers but is not a responsive sshd; check ansible_port") from None
            raise _fail(spec, f"SSH negotiation failed ({e})", "check the server's algorithms and logs") from None
        except (EOFError, OSError) as e:
            raise _Dropped(repr(e)) from None
        if transport.host_key is None:
            raise _fail(spec, f"SSH negotiation timed out after {time.monotonic() - started:.1f}s",
                        "check the network, or raise timeout")

    def _verify_host_key(self, transport: paramiko.Transport, spec: Dict[str, Any], name: str,
                         known: List[_known_hosts.KnownHost]) -> None:
        """Check the server's key before any credential is sent."""
        server_key = transport.get_remote_server_key()
        keytype, blob = server_key.get_name(), server_key.get_base64()
        if not spec.get("host_key_checking", True):
            return
        verdict = _known_hosts.verify(known, name, keytype, blob)
        offered = f"{keytype} {_known_hosts.fingerprint(blob)}"
        if verdict.status == "known":
            return
        if verdict.status == "revoked":
            entry = verdict.entry
            raise _fail(spec, f"host key {offered} is marked @revoked in {entry.path}:{entry.lineno}",
                        "the server's key was revoked: do not connect", "hostkey")
        if verdict.status == "changed":
            entry = verdict.entry
            raise _fail(spec, f"REMOTE HOST IDENTIFICATION HAS CHANGED: the server offers {offered} but "
                        f"{entry.path}:{entry.lineno} has {entry.keytype} {_known_hosts.fingerprint(entry.key)}",
                        f"if the change is expected, remove that line (ssh-keygen -R '{name}') and reconnect",
                        "hostkey")
        if spec.get("host_key_auto_add"):
            files = spec.get("known_hosts_files") or []
            if spec.get("record_host_keys", True) and files and _known_hosts.record(files[0], name, keytype, blob):
                log.info("recorded host key %s for %s in %s", offered, name, files[0])
            return
        raise _fail(spec, f"host key is unknown ({offered})",
                    f"verify it and add it to known_hosts (ssh-keyscan -p {spec['port']} {spec['addr']}), "
                    "or set host_key_auto_add=true", "hostkey")

    def _authenticate(self, transport: paramiko.Transport, spec: Dict[str, Any]) -> None:
        """Offer the configured key first, then a bounded number of others, then the password.

        Every failed offer counts against sshd's MaxAuthTries and fail2ban's maxretry, so
        the number of attempts is capped and nothing is retried.
        """
        user = spec["user"]
        password = spec.get("password")
        passphrase = spec.get("private_key_passphrase")
        budget = int(spec.get("max_auth_attempts") or 3)
        keys: List[paramiko.PKey] = []
        if spec.get("private_key_file"):
            keys.append(_load_key(spec["private_key_file"], passphrase, spec, password))
        agent = None
        if spec.get("agent_socket"):
            agent, agent_keys = _agent_keys(spec["agent_socket"])
            keys.extend(agent_keys)
        if spec.get("look_for_keys", True) and not spec.get("private_key_file"):
            for path in spec.get("default_key_files") or []:
                pkey = _default_key(path, passphrase or password)
                if pkey is not None:
                    keys.append(pkey)
        tried = 0
        allowed: Optional[List[str]] = None
        try:
            for pkey in keys:
                if tried >= budget or (allowed is not None and "publickey" not in allowed):
                    break
                tried += 1
                try:
                    transport.auth_publickey(user, pkey)
                    if transport.is_authenticated():
                        _drop_credentials(transport)
                        return
                except paramiko.BadAuthenticationType as e:
                    allowed = list(e.allowed_types)
                except paramiko.AuthenticationException:
                    continue
                except paramiko.SSHException as e:
                    raise self._auth_error(spec, tried, str(e)) from None
            if password is not None and (allowed is None or {"password", "keyboard-interactive"} & set(allowed)):
                tried += 1
                try:
                    transport.auth_password(user, password, fallback=True)
                    if transport.is_authenticated():
                        _drop_credentials(transport)
                        return
                except paramiko.AuthenticationException:
                    pass
                except paramiko.SSHException as e:
                    raise self._auth_error(spec, tried, str(e)) from None
        finally:
            if agent is not None:
                agent._close()  # AgentSSH has no public close; the socket is ours to close
        raise self._auth_error(spec, tried, "")

    @staticmethod
    def _auth_error(spec: Dict[str, Any], tried: int, detail: str) -> PoolError:
        what = "no key or password to offer" if not tried else f"{tried} method(s) tried"
        if detail and "No existing session" not in detail:
            what += f": {detail}"
        return _fail(spec, f"authentication failed for user {spec['user']!r} ({what})",
                     "check ansible_user, the private key or ansible_password", "auth")
