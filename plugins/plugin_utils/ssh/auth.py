# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Authenticating a transport: the configured key, the agent, default keys, then the password.

Every failed offer counts against sshd's MaxAuthTries and fail2ban's maxretry, so the number
of attempts is capped and nothing is retried.
"""

from __future__ import annotations

import socket
from typing import List, Optional, Tuple

from ..errors import ErrorKind, PoolError
from ..wire.spec import ConnectionSpec
from .paramiko_guard import paramiko
from .paramiko_text import ParamikoText, classify


def fail(spec: ConnectionSpec, cause: str, hint: str, kind: ErrorKind = ErrorKind.CONNECT) -> PoolError:
    """The one-line error the user sees: the server, what happened, what to do."""
    return PoolError(f"{spec.where}: {cause}; {hint}", kind=kind)


def _agent_keys(path: Optional[str]) -> Tuple[Optional[paramiko.agent.AgentSSH], List[paramiko.PKey]]:
    """Keys from the ssh-agent of the worker that asked (the daemon's own env may be stale)."""
    if not path:
        return None, []
    agent = paramiko.agent.AgentSSH()
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(path)
        agent._connect(sock)  # type: ignore[attr-defined]  # AgentSSH takes a socket only this way
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
        isinstance(e, TypeError) and classify(e) is ParamikoText.KEY_NEEDS_PASSPHRASE
    )


def load_key(
    path: str, passphrase: Optional[str], spec: ConnectionSpec, password: Optional[str] = None
) -> paramiko.PKey:
    """Load a key as OpenSSH does: without a passphrase first; only an encrypted key gets one.

    The passphrase is ``private_key_passphrase``, else the login password (paramiko_ssh's habit):
    an unencrypted key with a password set simply loads, and the password stays a password.
    """
    auth = ErrorKind.AUTH
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError as e:
        raise fail(spec, f"private key {path} does not exist", "fix private_key_file", auth) from e
    except (paramiko.PasswordRequiredException, TypeError) as e:
        if not _needs_passphrase(e):
            raise fail(spec, f"cannot load private key {path} ({e})", "check the file", auth) from e
    except (paramiko.SSHException, ValueError) as e:
        raise fail(spec, f"cannot load private key {path} ({e})", "check the file", auth) from e
    tried = [
        (value, name)
        for value, name in ((passphrase, "private_key_passphrase"), (password, "ansible_password"))
        if value
    ]
    for value, _name in tried:
        try:
            return paramiko.PKey.from_path(path, _passphrase(value))  # type: ignore[arg-type]
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    if not tried:
        raise fail(
            spec,
            f"private key {path} is encrypted; set its passphrase with private_key_passphrase "
            "(no passphrase was given)",
            "or load the key into an ssh-agent",
            auth,
        )
    names = " nor ".join(name for _key, name in tried)
    what = f"neither {names} decrypts it" if len(tried) > 1 else f"{names} does not decrypt it"
    raise fail(
        spec, f"private key {path} is encrypted and {what}", "set private_key_passphrase to the key's passphrase", auth
    )


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
        return paramiko.PKey.from_path(path, _passphrase(passphrase))  # type: ignore[arg-type]
    except Exception:
        return None


def _keys(spec: ConnectionSpec) -> Tuple[Optional[paramiko.agent.AgentSSH], List[paramiko.PKey]]:
    keys: List[paramiko.PKey] = []
    if spec.private_key_file:
        keys.append(load_key(spec.private_key_file, spec.private_key_passphrase, spec, spec.password))
    agent = None
    if spec.agent_socket:
        agent, agent_keys = _agent_keys(spec.agent_socket)
        keys.extend(agent_keys)
    if spec.look_for_keys and not spec.private_key_file:
        for path in spec.default_key_files:
            pkey = _default_key(path, spec.private_key_passphrase or spec.password)
            if pkey is not None:
                keys.append(pkey)
    return agent, keys


def drop_credentials(transport: paramiko.Transport) -> None:
    """Paramiko's auth handler keeps the password (and a closure holding it for keyboard-interactive)
    and the key for the transport's whole life; nothing needs them once we are logged in."""
    handler = transport.auth_handler
    if handler is not None:
        handler.password = None
        handler.private_key = None
        handler.interactive_handler = None


def authenticate(transport: paramiko.Transport, spec: ConnectionSpec) -> None:
    """Offer the configured key first, then a bounded number of others, then the password."""
    user, password = spec.user, spec.password
    budget = spec.max_auth_attempts or 3
    agent, keys = _keys(spec)
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
                    drop_credentials(transport)
                    return
            except paramiko.BadAuthenticationType as e:
                allowed = list(e.allowed_types)
            except paramiko.AuthenticationException:
                continue
            except paramiko.SSHException as e:
                raise auth_error(spec, tried, e) from None
        if password is not None and (allowed is None or {"password", "keyboard-interactive"} & set(allowed)):
            tried += 1
            try:
                transport.auth_password(user, password, fallback=True)
                if transport.is_authenticated():
                    drop_credentials(transport)
                    return
            except paramiko.AuthenticationException:
                pass
            except paramiko.SSHException as e:
                raise auth_error(spec, tried, e) from None
    finally:
        if agent is not None:
            agent._close()  # type: ignore[attr-defined]  # AgentSSH has no public close; the socket is ours to close
    raise auth_error(spec, tried, None)


def auth_error(spec: ConnectionSpec, tried: int, error: Optional[BaseException]) -> PoolError:
    what = "no key or password to offer" if not tried else f"{tried} method(s) tried"
    if error is not None and str(error) and classify(error) is not ParamikoText.NO_SESSION:
        what += f": {error}"
    return fail(
        spec,
        f"authentication failed for user {spec.user!r} ({what})",
        "check ansible_user, the private key or ansible_password",
        ErrorKind.AUTH,
    )
