# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn the connection plugin's options into the request the daemon understands.

Pure functions over a ``get_option`` callable, so they are unit-tested with plain dicts.
Paths are expanded here, in the worker, because the daemon may have been started by a
worker with another ``HOME`` or ``SSH_AUTH_SOCK``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

from . import _ssh_config

GetOption = Callable[[str], Any]

SYSTEM_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts",)
DEFAULT_KEYS = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")

#: Pool timings in seconds, each with its millisecond alias (the unit of the ``SSH_POOL_*`` environment names)
#: and its default.
SECONDS_WITH_MS_ALIAS = {
    "idle_timeout": 60.0,
    "health_check_interval": 30.0,
    "keepalive_interval": 10.0,
    "timeout": 10.0,
    "cleanup_interval": 1.0,
}
PRIORITIES = ("low", "normal", "high")
ON_EXHAUSTED = ("wait", "fail", "direct")


class OptionError(ValueError):
    """A malformed option; the message names it."""


#: Values of the ``remote_executor`` option that turn it off (YAML reads a bare ``off`` as false).
EXECUTOR_OFF = frozenset({"off", "false", "no", "0"})


def remote_executor_enabled(value: Any) -> bool:
    """Whether ``remote_executor`` lets pipelined modules go through the remote executor. Here, with
    the other options, so that a task with it off does not import the executor's worker side."""
    return value is not False and str(value).strip().lower() not in EXECUTOR_OFF


def _optional(get_option: GetOption, name: str) -> Any:
    """An option that older callers (and test doubles) may not declare: unknown means unset."""
    try:
        return get_option(name)
    except KeyError:
        return None


def seconds(get_option: GetOption, name: str) -> float:
    """The option in seconds; its ``<name>_ms`` alias (milliseconds, as the ``SSH_POOL_*`` environment names)
    when it is unset."""
    value = get_option(name)
    if value is None:
        ms = get_option(f"{name}_ms")
        if ms is None:
            return SECONDS_WITH_MS_ALIAS[name]
        # Validated (and named in errors) as the alias the user actually set.
        return seconds_plain(lambda _: ms, f"{name}_ms") / 1000.0
    return seconds_plain(get_option, name)


def _positive_int(get_option: GetOption, name: str) -> int:
    value = get_option(name)
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name}: expected a whole number, got {value!r}") from None
    if number < 1:
        raise OptionError(f"{name}: must be at least 1, got {number}")
    return number


def pool_settings(get_option: GetOption) -> Dict[str, Any]:
    return {
        "max_connections": _positive_int(get_option, "max_connections"),
        "max_channels": _positive_int(get_option, "max_channels"),
        "idle_timeout": seconds(get_option, "idle_timeout"),
        "wait_timeout": seconds_plain(get_option, "pool_wait_timeout"),
        "health_checks": bool(get_option("health_checks")),
        "health_check_interval": seconds(get_option, "health_check_interval"),
        "keepalive_interval": seconds(get_option, "keepalive_interval"),
        "keepalive_max_missed": _positive_int(get_option, "keepalive_max_missed"),
        "cleanup_interval": seconds(get_option, "cleanup_interval"),
        "priority": _choice(get_option, "priority", PRIORITIES, "normal"),
        "on_exhausted": _choice(get_option, "on_exhausted", ON_EXHAUSTED, "wait"),
    }


def _choice(get_option: GetOption, name: str, choices: Tuple[str, ...], default: str) -> str:
    value = _optional(get_option, name)
    value = default if value is None else str(value).lower()
    if value not in choices:
        raise OptionError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def seconds_plain(get_option: GetOption, name: str) -> float:
    """A non-negative number of seconds, with an error that names the option."""
    value = get_option(name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{name}: expected a number of seconds, got {value!r}") from None
    if number < 0:
        raise OptionError(f"{name}: must not be negative, got {number:g}")
    return number


def connection_spec(
    get_option: GetOption, inventory_host: str, environ: Optional[Mapping[str, str]] = None
) -> Dict[str, Any]:
    """What the daemon needs to open (or find) a transport for this host."""
    environ = os.environ if environ is None else environ
    addr = str(get_option("remote_addr") or inventory_host)
    config_file = _optional(get_option, "ssh_config_file") or None
    found: Dict[str, Any] = {}
    if config_file:
        try:
            found = _ssh_config.lookup(str(config_file), addr)
        except _ssh_config.JumpSpecError as e:
            raise OptionError(f"ssh_config_file: {e}") from None
        addr = found.get("hostname", addr)
    port = get_option("port") or 22
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise OptionError(f"port: expected a port number, got {port!r}") from None
    if not 0 < port < 65536:
        raise OptionError(f"port: {port} is not a valid port number")
    if port == 22 and "port" in found:
        port = found["port"]
    user = get_option("remote_user") or found.get("user") or _local_user(environ)
    check_host_name(
        "remote_addr (ansible_host)", addr, "the HostName of ssh_config_file" if "hostname" in found else ""
    )
    check_user_name(
        "remote_user (ansible_user)",
        str(user),
        "the User of ssh_config_file" if not get_option("remote_user") and "user" in found else "",
    )
    password = get_option("password")
    key_file = get_option("private_key_file") or found.get("identityfile")
    known_hosts = os.path.expanduser(str(get_option("known_hosts_file") or "~/.ssh/known_hosts"))
    proxy_command, hops = _proxy(get_option, found, config_file, addr, port, user, environ)
    key_path = os.path.abspath(os.path.expanduser(key_file)) if key_file else None
    spec: Dict[str, Any] = {
        "host": inventory_host,
        "addr": addr,
        "port": port,
        "user": user,
        "password": password,
        "private_key_file": key_path,
        "key_fingerprint": key_fingerprint(key_path),
        "private_key_passphrase": get_option("private_key_passphrase"),
        "look_for_keys": bool(get_option("look_for_keys")),
        "default_key_files": [os.path.expanduser(k) for k in DEFAULT_KEYS],
        # As paramiko_ssh did: a password means "log in with the password", not with the agent.
        "agent_socket": environ.get("SSH_AUTH_SOCK") if password is None else None,
        "host_key_checking": bool(get_option("host_key_checking")),
        "host_key_auto_add": bool(get_option("host_key_auto_add")),
        "record_host_keys": bool(get_option("record_host_keys")),
        "known_hosts_files": [known_hosts, *SYSTEM_KNOWN_HOSTS],
        "timeout": seconds(get_option, "timeout"),
        "banner_timeout": seconds_plain(get_option, "banner_timeout"),
        "use_rsa_sha2_algorithms": bool(get_option("use_rsa_sha2_algorithms")),
        "proxy_command": proxy_command,
        "max_handshakes_per_address": _positive_int(get_option, "max_handshakes_per_address"),
        "max_auth_attempts": _positive_int(get_option, "max_auth_attempts"),
    }
    if hops:
        spec["proxy_jump"] = hops
    return spec


def key_fingerprint(path: Optional[str]) -> Optional[str]:
    """sha256 of a key file's bytes, part of the pool key: a key rewritten at the same path is
    another identity. Read here, in the worker, as the user; None when there is no such file."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _proxy(
    get_option: GetOption,
    found: Dict[str, Any],
    config_file: Optional[str],
    addr: str,
    port: int,
    user: str,
    environ: Mapping[str, str],
) -> Tuple[Optional[str], List[Dict[str, Any]]]:
    """The proxy command (its tokens filled in) or the jump hops, from the inventory or else ssh_config."""
    proxy_command = get_option("proxy_command") or None
    jump_spec = _optional(get_option, "proxy_jump") or None
    if proxy_command and jump_spec:
        raise OptionError("proxy_command and proxy_jump are both set: use one of them")
    if not proxy_command and not jump_spec:
        # ssh_config fills the proxy only when the inventory sets neither.
        jump_spec = found.get("proxyjump")
        proxy_command = None if jump_spec else found.get("proxycommand")
    if proxy_command:
        proxy_command = expand_proxy_command(str(proxy_command), addr, port, str(user))
    try:
        hops = _ssh_config.resolve_hops(_ssh_config.parse_jump(jump_spec), config_file, user)
    except _ssh_config.JumpSpecError as e:
        raise OptionError(f"proxy_jump: {e}") from None
    for hop in hops:
        check_host_name("proxy_jump", str(hop["addr"]), f"jump host {hop['host']}")
        check_user_name("proxy_jump", str(hop["user"]), f"jump host {hop['host']}")
        hop.update(_hop_credentials(get_option, hop, environ))
        hop["key_fingerprint"] = key_fingerprint(hop.get("private_key_file"))
    return proxy_command, hops


def _hop_credentials(get_option: GetOption, hop: Dict[str, Any], environ: Mapping[str, str]) -> Dict[str, Any]:
    """A jump host's own credentials, as OpenSSH's ``-J`` gives each hop: never the target's password
    or passphrase. Its key: ssh_config's IdentityFile for the hop, else proxy_jump_private_key_file, else
    the target's key file (a signature reveals no secret); the agent unless proxy_jump_password is set."""
    password = _optional(get_option, "proxy_jump_password")
    key_file = hop.get("private_key_file") or _optional(get_option, "proxy_jump_private_key_file")
    creds: Dict[str, Any] = {
        "password": password,
        "agent_socket": environ.get("SSH_AUTH_SOCK") if password is None else None,
    }
    if key_file:
        creds["private_key_file"] = os.path.abspath(os.path.expanduser(str(key_file)))
    return creds


def _local_user(environ: Mapping[str, str]) -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return environ.get("USER", "root")


def daemon_settings(get_option: GetOption) -> Tuple[str, float]:
    return str(get_option("pool_dir") or "~/.ansible/pooled_ssh"), seconds_plain(get_option, "daemon_idle_timeout")


# -- inventory values that reach a command line or known_hosts ---------------------------

#: What OpenSSH's ``valid_hostname()`` refuses besides whitespace and control characters.
_HOST_METACHARACTERS = frozenset("'`\"$\\;&<>|(){}")
#: What OpenSSH's ``valid_ruser()`` refuses (it allows ``$`` and backslashes in user names).
_USER_METACHARACTERS = frozenset("'`\";&<>|(){}")
_PROXY_TOKEN = re.compile(r"%([%hpr])")


def _describe(char: str) -> str:
    if char == " ":
        return "a space"
    if char.isspace() or not char.isprintable():
        return f"the control character {char!r}"
    return f"the character {char!r}"


def _check_name(option: str, value: str, source: str, refused: FrozenSet[str], what: str) -> None:
    """Refuse what OpenSSH refuses before it runs a ProxyCommand: a value read as an option or as shell."""
    where = f" (from {source})" if source else ""
    if not value:
        raise OptionError(f"{option}: the {what} is empty{where}")
    bad = next((c for c in value if c in refused or c.isspace() or not c.isprintable()), None)
    if value.startswith("-"):
        reason = "starts with '-' (it would be read as a command-line option)"
    elif bad is not None:
        reason = f"contains {_describe(bad)}"
    else:
        return
    raise OptionError(
        f"{option}: the {what} {value!r}{where} {reason}; OpenSSH refuses such {what}s: fix the inventory"
    )


def check_host_name(option: str, value: str, source: str = "") -> None:
    _check_name(option, value, source, _HOST_METACHARACTERS, "host name")


def check_user_name(option: str, value: str, source: str = "") -> None:
    _check_name(option, value, source, _USER_METACHARACTERS, "user name")


def expand_proxy_command(command: str, addr: str, port: int, user: str) -> str:
    """Substitute ``%h %p %r`` (and ``%%``) in each argument after splitting, never before.

    Pasted before the split, a space in a host name would add arguments to the proxy
    program. The daemon splits the result again with ``shlex``: quoting each argument
    makes that split give back exactly these arguments.
    """
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise OptionError(f"proxy_command: cannot split {command!r} into arguments ({e})") from None
    values = {"%": "%", "h": addr, "p": str(port), "r": user}
    expanded: List[str] = [_PROXY_TOKEN.sub(lambda m: values[m.group(1)], arg) for arg in argv]
    return shlex.join(expanded)


def terminal_size(name: str, environ: Optional[Mapping[str, str]] = None) -> int:
    """A terminal size from the environment (``COLUMNS``, ``LINES``), as paramiko_ssh passed it to
    ``get_pty``; 0 when unset or bad."""
    try:
        return max(0, int((os.environ if environ is None else environ).get(name, "0")))
    except ValueError:
        return 0
