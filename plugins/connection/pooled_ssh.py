# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: pooled_ssh
short_description: Run tasks over Paramiko SSH transports kept in a per-controller pool
description:
  - Runs tasks over SSH with Paramiko, like the C(paramiko_ssh) connection that ansible-core 2.21 removed,
    but keeps the authenticated transports in a small pool daemon on the controller, so a playbook (and the
    next playbook, while the pool is warm) pays one SSH handshake per host instead of one per task.
  - Ansible forks a worker for every task; the workers reach the daemon over a UNIX socket in O(pool_dir),
    a directory only its owner can enter. The first worker that needs the daemon starts it; it exits by itself
    after holding nothing for O(daemon_idle_timeout) seconds.
  - Accepts the options, variables, environment variables and C(ansible.cfg) keys of C(paramiko_ssh), so switching
    is one line, C(ansible_connection=healer.pooled_ssh.pooled_ssh).
  - The short name C(ansible_connection=pooled_ssh) works when this plugin's directory is on
    C(connection_plugins) (a play's C(collections) keyword does not apply to connection plugins), for example
    C(ANSIBLE_CONNECTION_PLUGINS=~/.ansible/collections/ansible_collections/healer/pooled_ssh/plugins/connection).
author: healer.pooled_ssh maintainers (@healer)
version_added: 0.1.0
requirements:
  - paramiko >= 3.4.0 on the controller
extends_documentation_fragment:
  - healer.pooled_ssh.pool
options:
  inventory_name:
    description:
      - The inventory host name the pool keys transports on, with O(port) and O(remote_user).
      - Set by Ansible from C(inventory_hostname); there is no reason to set it. With C(delegate_to), the delegated host is used.
    type: string
    vars:
      - name: inventory_hostname
  remote_addr:
    description: Address of the remote target.
    default: inventory_hostname
    type: string
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_ssh_host
      - name: ansible_paramiko_host
      - name: ansible_pooled_ssh_host
  port:
    description: Remote port to connect to.
    type: int
    default: 22
    ini:
      - section: defaults
        key: remote_port
      - section: paramiko_connection
        key: remote_port
      - section: pooled_ssh_connection
        key: remote_port
    env:
      - name: ANSIBLE_REMOTE_PORT
      - name: ANSIBLE_REMOTE_PARAMIKO_PORT
      - name: ANSIBLE_POOLED_SSH_PORT
    vars:
      - name: ansible_port
      - name: ansible_ssh_port
      - name: ansible_paramiko_port
      - name: ansible_pooled_ssh_port
    keyword:
      - name: port
  remote_user:
    description:
      - User to log in as. Can be set from the CLI with C(--user) or C(-u).
      - Defaults to the user running Ansible.
    type: string
    vars:
      - name: ansible_user
      - name: ansible_ssh_user
      - name: ansible_paramiko_user
      - name: ansible_pooled_ssh_user
    env:
      - name: ANSIBLE_REMOTE_USER
      - name: ANSIBLE_PARAMIKO_REMOTE_USER
      - name: ANSIBLE_POOLED_SSH_REMOTE_USER
    ini:
      - section: defaults
        key: remote_user
      - section: paramiko_connection
        key: remote_user
      - section: pooled_ssh_connection
        key: remote_user
    keyword:
      - name: remote_user
  password:
    description:
      - Password to log in with; also the passphrase of an encrypted private key when O(private_key_passphrase) is unset.
      - Can be set from the CLI with C(--ask-pass).
      - When set, ssh-agent keys are not offered (as with C(paramiko_ssh)).
    type: string
    vars:
      - name: ansible_password
      - name: ansible_ssh_pass
      - name: ansible_ssh_password
      - name: ansible_paramiko_pass
      - name: ansible_paramiko_password
      - name: ansible_pooled_ssh_password
  private_key_file:
    description: Path to the private key to log in with. Offered before any other key.
    type: string
    ini:
      - section: defaults
        key: private_key_file
      - section: paramiko_connection
        key: private_key_file
      - section: pooled_ssh_connection
        key: private_key_file
    env:
      - name: ANSIBLE_PRIVATE_KEY_FILE
      - name: ANSIBLE_PARAMIKO_PRIVATE_KEY_FILE
      - name: ANSIBLE_POOLED_SSH_PRIVATE_KEY_FILE
    vars:
      - name: ansible_private_key_file
      - name: ansible_ssh_private_key_file
      - name: ansible_paramiko_private_key_file
      - name: ansible_pooled_ssh_private_key_file
    cli:
      - name: private_key_file
        option: '--private-key'
  private_key_passphrase:
    description: Passphrase of an encrypted O(private_key_file). Defaults to O(password).
    type: string
    env:
      - name: ANSIBLE_POOLED_SSH_PRIVATE_KEY_PASSPHRASE
    vars:
      - name: ansible_pooled_ssh_private_key_passphrase
  look_for_keys:
    description: Offer the default keys in C(~/.ssh/) (C(id_ed25519), C(id_ecdsa), C(id_rsa)) when no O(private_key_file) is set.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PARAMIKO_LOOK_FOR_KEYS
      - name: ANSIBLE_POOLED_SSH_LOOK_FOR_KEYS
    ini:
      - section: paramiko_connection
        key: look_for_keys
      - section: pooled_ssh_connection
        key: look_for_keys
    vars:
      - name: ansible_pooled_ssh_look_for_keys
  host_key_checking:
    description:
      - Verify the server's host key against O(known_hosts_file) and C(/etc/ssh/ssh_known_hosts) before any
        credential is sent. An unknown key is refused (unless O(host_key_auto_add)); a changed key is always refused.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_HOST_KEY_CHECKING
      - name: ANSIBLE_SSH_HOST_KEY_CHECKING
      - name: ANSIBLE_PARAMIKO_HOST_KEY_CHECKING
      - name: ANSIBLE_POOLED_SSH_HOST_KEY_CHECKING
    ini:
      - section: defaults
        key: host_key_checking
      - section: paramiko_connection
        key: host_key_checking
      - section: pooled_ssh_connection
        key: host_key_checking
    vars:
      - name: ansible_host_key_checking
      - name: ansible_ssh_host_key_checking
      - name: ansible_paramiko_host_key_checking
      - name: ansible_pooled_ssh_host_key_checking
  host_key_auto_add:
    description: Accept the key of a host that is not in known_hosts yet (and record it, see O(record_host_keys)).
    type: boolean
    default: false
    env:
      - name: ANSIBLE_PARAMIKO_HOST_KEY_AUTO_ADD
      - name: ANSIBLE_POOLED_SSH_HOST_KEY_AUTO_ADD
    ini:
      - section: paramiko_connection
        key: host_key_auto_add
      - section: pooled_ssh_connection
        key: host_key_auto_add
    vars:
      - name: ansible_pooled_ssh_host_key_auto_add
  record_host_keys:
    description: Append host keys accepted through O(host_key_auto_add) to O(known_hosts_file), once, under a lock.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PARAMIKO_RECORD_HOST_KEYS
      - name: ANSIBLE_POOLED_SSH_RECORD_HOST_KEYS
    ini:
      - section: paramiko_connection
        key: record_host_keys
      - section: pooled_ssh_connection
        key: record_host_keys
    vars:
      - name: ansible_pooled_ssh_record_host_keys
  known_hosts_file:
    description: The user's known_hosts file.
    type: path
    default: ~/.ssh/known_hosts
    env:
      - name: ANSIBLE_POOLED_SSH_KNOWN_HOSTS_FILE
    ini:
      - section: pooled_ssh_connection
        key: known_hosts_file
    vars:
      - name: ansible_pooled_ssh_known_hosts_file
  proxy_command:
    description:
      - A command whose standard input and output carry the SSH connection, as OpenSSH's C(ProxyCommand);
        C(%h), C(%p) and C(%r) become the address, port and user.
    type: string
    default: ''
    env:
      - name: ANSIBLE_PARAMIKO_PROXY_COMMAND
      - name: ANSIBLE_POOLED_SSH_PROXY_COMMAND
    ini:
      - section: paramiko_connection
        key: proxy_command
      - section: pooled_ssh_connection
        key: proxy_command
    vars:
      - name: ansible_paramiko_proxy_command
      - name: ansible_pooled_ssh_proxy_command
  proxy_jump:
    description:
      - Reach the target through one or more jump hosts, as OpenSSH's C(ProxyJump) (C(-J)) does. The value is
        C([user@]host[:port]), comma-separated for a chain, the first hop first. C(none) means no jump host.
      - The jump host's transport is pooled like any other, keyed on its name, port, user and credentials. Its user
        defaults to the target's O(remote_user), its port to 22; with O(ssh_config_file), each hop's C(HostName),
        C(Port), C(User) and C(IdentityFile) are read from it.
      - Each jump host logs in with its own credentials, as with OpenSSH's C(-J), that is its C(IdentityFile), else
        O(proxy_jump_private_key_file), else the target's O(private_key_file); the ssh-agent unless
        O(proxy_jump_password) is set; and O(proxy_jump_password). Never the target's O(password) or
        O(private_key_passphrase).
      - Every target transport holds one channel slot of a jump host transport for as long as it lives, so one
        bastion transport carries up to O(max_channels) targets and the bastion gets at most O(max_connections)
        transports; C(AllowTcpForwarding) must be on at the jump host.
      - Mutually exclusive with O(proxy_command).
    type: string
    version_added: 0.2.0
    env:
      - name: ANSIBLE_POOLED_SSH_PROXY_JUMP
    ini:
      - section: pooled_ssh_connection
        key: proxy_jump
    vars:
      - name: ansible_pooled_ssh_proxy_jump
  proxy_jump_password:
    description:
      - The password the jump hosts of O(proxy_jump) log in with (every hop), when they accept passwords.
      - The target's O(password) is never sent to a jump host.
    type: string
    version_added: 0.2.0
    vars:
      - name: ansible_pooled_ssh_proxy_jump_password
  proxy_jump_private_key_file:
    description:
      - The private key the jump hosts of O(proxy_jump) log in with, for a hop that O(ssh_config_file) gives no
        C(IdentityFile). Unset, a hop offers the target's O(private_key_file) (it must not need a passphrase, since the
        target's O(private_key_passphrase) is never used for a jump host), then the ssh-agent's keys.
    type: path
    version_added: 0.2.0
    env:
      - name: ANSIBLE_POOLED_SSH_PROXY_JUMP_PRIVATE_KEY_FILE
    ini:
      - section: pooled_ssh_connection
        key: proxy_jump_private_key_file
    vars:
      - name: ansible_pooled_ssh_proxy_jump_private_key_file
  ssh_config_file:
    description:
      - Read this OpenSSH client config file (for example C(~/.ssh/config)) for the host's C(HostName), C(User),
        C(Port), C(IdentityFile), C(ProxyJump) and C(ProxyCommand). Off unless set, so that behaviour does not depend
        on a file the inventory does not mention.
      - The host is looked up under its O(remote_addr) (C(ansible_host), else the inventory name). An Ansible option
        that is set wins over the file; the file fills only what is unset (the port only when it is 22).
        C(ProxyJump)/C(ProxyCommand) from the file apply only when neither O(proxy_jump) nor O(proxy_command) is set.
    type: path
    version_added: 0.2.0
    env:
      - name: ANSIBLE_POOLED_SSH_SSH_CONFIG_FILE
    ini:
      - section: pooled_ssh_connection
        key: ssh_config_file
    vars:
      - name: ansible_pooled_ssh_ssh_config_file
  use_persistent_connections:
    description:
      - Accepted for compatibility with C(paramiko_ssh), where it only stopped the host key prompt. This plugin
        never prompts (unknown host keys are refused, see O(host_key_checking)), so it has no effect.
    type: boolean
    default: false
    env:
      - name: ANSIBLE_USE_PERSISTENT_CONNECTIONS
    ini:
      - section: defaults
        key: use_persistent_connections
  pty:
    description:
      - Request a pseudo-terminal for commands that may escalate privileges (C(sudo) may require one),
        except when module data goes over standard input (pipelining), as the C(ssh) connection does.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PARAMIKO_PTY
      - name: ANSIBLE_POOLED_SSH_PTY
    ini:
      - section: paramiko_connection
        key: pty
      - section: pooled_ssh_connection
        key: pty
    vars:
      - name: ansible_pooled_ssh_pty
  pipelining:
    description:
      - Send modules over standard input instead of copying them to a temporary file first. Saves a file
        transfer and several commands per task; on by default.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PIPELINING
      - name: ANSIBLE_POOLED_SSH_PIPELINING
    ini:
      - section: defaults
        key: pipelining
      - section: pooled_ssh_connection
        key: pipelining
    vars:
      - name: ansible_pipelining
      - name: ansible_pooled_ssh_pipelining
  remote_executor:
    description:
      - V(auto) runs each pipelined Python 3 module through a remote executor that the pooled transport keeps
        on the host (one Python, started once per transport; each module in a child process forked for that
        task alone, with the payload sent once). V(off) starts a fresh interpreter for every module, as
        the C(ssh) connection does. Anything else than a plain pipelined module run (C(raw), C(script),
        async, modules copied to a temporary file, commands run with C(become)) always goes the
        plain way. See C(docs/executor.md).
    type: str
    default: auto
    env:
      - name: ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR
    ini:
      - section: pooled_ssh_connection
        key: remote_executor
    vars:
      - name: ansible_pooled_ssh_remote_executor
  warm_transports:
    description:
      - When a task needs no connection to its host (C(set_fact), C(assert), a role's argument validation)
        and that host has no pooled transport yet, ask the pool daemon to open one in the background, with
        the task's own options for that host, so that the host's next module finds it open instead of
        paying the login then. Bounded (8 logins at once, 256 waiting; never past the pool's limits; a host
        with a transport, a login under way or a queued request is left alone). It adds no login attempt,
        a failed warm login is remembered as any failed login is, and that host is not warmed again for
        60 seconds. Not done for hosts reached through O(proxy_jump), nor with O(ssh_config_file) (reading
        it would cost each such task about 0.1 s). A host is logged in to even if its later tasks do not
        run (a failed C(assert), C(meta) C(end_host)). V(false) opens transports only for requests.
    type: bool
    default: true
    env:
      - name: ANSIBLE_POOLED_SSH_WARM_TRANSPORTS
    ini:
      - section: pooled_ssh_connection
        key: warm_transports
    vars:
      - name: ansible_pooled_ssh_warm_transports
  remote_executor_idle_timeout:
    description:
      - Seconds a host's remote executor may go without running a module before the pool daemon stops
        it, giving the host back its memory (an interpreter and its pre-imported templates) and the server
        its session. The next module on that host starts a new one. V(0) keeps it as long as the pooled
        transport.
    type: float
    default: 60
    env:
      - name: ANSIBLE_POOLED_SSH_REMOTE_EXECUTOR_IDLE_TIMEOUT
    ini:
      - section: pooled_ssh_connection
        key: remote_executor_idle_timeout
    vars:
      - name: ansible_pooled_ssh_remote_executor_idle_timeout
  banner_timeout:
    description: Seconds to wait for the server's SSH banner.
    type: float
    default: 30
    env:
      - name: ANSIBLE_PARAMIKO_BANNER_TIMEOUT
      - name: ANSIBLE_POOLED_SSH_BANNER_TIMEOUT
    ini:
      - section: paramiko_connection
        key: banner_timeout
      - section: pooled_ssh_connection
        key: banner_timeout
    vars:
      - name: ansible_pooled_ssh_banner_timeout
  timeout:
    description:
      - Seconds allowed for opening a new transport (TCP connect, negotiation and authentication each), and for
        privilege escalation to show its prompt or success marker once the command started (then the host is
        UNREACHABLE with C(timed out waiting for privilege escalation prompt), as with the C(ssh) connection).
      - Default 10; the C(SSH_POOL_CONNECTION_TIMEOUT_MS) environment name (O(timeout_ms)) applies when this is unset.
    type: int
    ini:
      - section: defaults
        key: timeout
      - section: ssh_connection
        key: timeout
      - section: paramiko_connection
        key: timeout
      - section: pooled_ssh_connection
        key: timeout
    env:
      - name: ANSIBLE_TIMEOUT
      - name: ANSIBLE_SSH_TIMEOUT
      - name: ANSIBLE_PARAMIKO_TIMEOUT
      - name: ANSIBLE_POOLED_SSH_TIMEOUT
    vars:
      - name: ansible_ssh_timeout
      - name: ansible_paramiko_timeout
      - name: ansible_pooled_ssh_timeout
    cli:
      - name: timeout
  timeout_ms:
    description: O(timeout) in milliseconds, under its C(SSH_POOL_*) environment name. Used only when O(timeout) is unset.
    type: float
    env:
      - name: SSH_POOL_CONNECTION_TIMEOUT_MS
  use_rsa_sha2_algorithms:
    description: Offer the RSA SHA-2 algorithms for host keys and public keys. Turn off only for very old servers.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PARAMIKO_USE_RSA_SHA2_ALGORITHMS
      - name: ANSIBLE_POOLED_SSH_USE_RSA_SHA2_ALGORITHMS
    ini:
      - section: paramiko_connection
        key: use_rsa_sha2_algorithms
      - section: pooled_ssh_connection
        key: use_rsa_sha2_algorithms
    vars:
      - name: ansible_paramiko_use_rsa_sha2_algorithms
      - name: ansible_pooled_ssh_use_rsa_sha2_algorithms
  max_auth_attempts:
    description:
      - How many keys and passwords may be offered in all when opening a transport. Each failed offer counts
        against sshd's C(MaxAuthTries) and fail2ban's C(maxretry), and nothing is retried.
    type: int
    default: 3
    env:
      - name: ANSIBLE_POOLED_SSH_MAX_AUTH_ATTEMPTS
    ini:
      - section: pooled_ssh_connection
        key: max_auth_attempts
    vars:
      - name: ansible_pooled_ssh_max_auth_attempts
  max_handshakes_per_address:
    description:
      - At most this many handshakes run at once to one server address and port, however many inventory hosts
        and forks point there, so a fleet of forks never trips sshd's C(MaxStartups). Handshakes the server drops
        before its banner are retried with jittered backoff within O(timeout), and the limit drops to what the
        server accepted.
    type: int
    default: 6
    env:
      - name: ANSIBLE_POOLED_SSH_MAX_HANDSHAKES_PER_ADDRESS
    ini:
      - section: pooled_ssh_connection
        key: max_handshakes_per_address
    vars:
      - name: ansible_pooled_ssh_max_handshakes_per_address
  command_timeout:
    description:
      - Seconds a command may run before the task fails with "did not finish". C(0) means no limit
        (a dead connection is still detected by keepalives).
    type: float
    default: 0
    env:
      - name: ANSIBLE_POOLED_SSH_COMMAND_TIMEOUT
    ini:
      - section: pooled_ssh_connection
        key: command_timeout
    vars:
      - name: ansible_pooled_ssh_command_timeout
notes:
  - The pool keys transports on inventory host, port and user, plus a fingerprint of the credentials and the
    address; a transport authenticated with one password or key is never used for a request with another.
  - C(meta) C(reset_connection) closes the host's pooled transports.
  - See the collection's docs for the statistics command, tuning and troubleshooting.
"""

EXAMPLES = r"""
# inventory.ini: switch from paramiko_ssh (or ssh) with one variable
# [web]
# web1 ansible_host=192.0.2.10
# [all:vars]
# ansible_connection=healer.pooled_ssh.pooled_ssh

# ansible.cfg: make the short name work and tune the pool
# [defaults]
# connection_plugins = ~/.ansible/collections/ansible_collections/healer/pooled_ssh/plugins/connection
# [pooled_ssh_connection]
# max_connections = 5
# idle_timeout = 300

- name: Use the pool for one play
  hosts: web
  vars:
    ansible_connection: healer.pooled_ssh.pooled_ssh
    ansible_pooled_ssh_idle_timeout: 120
  tasks:
    - name: Runs over a pooled transport
      ansible.builtin.command: uptime
      changed_when: false
"""

import hashlib
import json
import multiprocessing
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ansible.errors import AnsibleAuthenticationFailure, AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

IMPORT_ERROR: Exception | None = None
if TYPE_CHECKING:  # the modules as mypy finds them; at run time under their one import name (bootstrap)
    from ansible.plugins.become import BecomeBase
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils import _client_connect
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._client import PoolClient
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils._options import (
        OptionError,
        connection_spec,
        daemon_settings,
        pool_settings,
        remote_executor_enabled,
        terminal_size,
    )
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load as _load
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.errors import (
        ErrorKind,
        PoolFailure,
        PoolUnavailable,
    )
    from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor.worker import xrun as executor_xrun
else:
    try:
        # Through Python's own importer, which keeps bytecode caches: every task's worker imports
        # this code afresh, and Ansible's collection loader would compile it from source each time.
        from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.bootstrap import load as _load

        # Light: what every worker needs, including those of tasks that never connect (set_fact,
        # debug...). The client and its wire messages (~20 dataclasses) come with the first
        # request (_pool_client).
        _client_connect = _load("_client_connect")
        _options = _load("_options")
        _errors = _load("errors")

        # The remote executor's worker side is imported by the first pipelined module run only:
        # the other tasks (set_fact, raw, copy), and every task with it off, do not pay for its import.
        def executor_xrun(*args, **kwargs):
            return _load("executor.worker").xrun(*args, **kwargs)
    except ImportError as e:  # pragma: no cover - reported on use, not at load
        IMPORT_ERROR = e
    else:
        PoolFailure, PoolUnavailable = _errors.PoolFailure, _errors.PoolUnavailable
        ErrorKind = _errors.ErrorKind
        OptionError, connection_spec = _options.OptionError, _options.connection_spec
        daemon_settings, pool_settings = _options.daemon_settings, _options.pool_settings
        remote_executor_enabled, terminal_size = _options.remote_executor_enabled, _options.terminal_size

display = Display()

_FQCN = "healer.pooled_ssh.pooled_ssh"


def _preload_option_definitions() -> None:
    """Register this plugin's option definitions, parsed in advance, once per worker.

    ansible-playbook caches the option definitions of the builtin connection plugins before it
    forks, but not those of collection plugins: every task's worker parses this file's
    DOCUMENTATION and its doc fragment again as YAML (~10 ms of CPU per task). The same definitions
    as JSON (``plugin_utils/_connection_options.py``, written by ``scripts/gen_option_defs.py``)
    take 0.3 ms; the loader then finds them in place and skips its own parse. Only when we are the
    collection's module and that file was parsed from these very texts: anything else leaves the
    job to the loader.
    """
    try:
        from ansible import constants as C

        # ansible-core keys the definitions on the module's name or on the FQCN, depending on the version.
        names = (__name__, _FQCN)
        if __name__ != "ansible_collections.healer.pooled_ssh.plugins.connection.pooled_ssh" or any(
            C.config.has_configuration_definition("connection", n) for n in names
        ):
            return
        from ansible_collections.healer.pooled_ssh.plugins.doc_fragments.pool import ModuleDocFragment

        parsed = _load("_connection_options")
        texts = DOCUMENTATION.encode() + b"\0" + ModuleDocFragment.DOCUMENTATION.encode()
        if hashlib.sha256(texts).hexdigest() != parsed.DIGEST:
            return  # stale: the loader parses the texts
        data = json.loads(parsed.PARSED)
        options, fragment = data["options"], data["fragment"]
        try:
            from ansible.utils.plugin_docs import add_collection_to_versions_and_dates
        except ImportError:  # pragma: no cover
            pass
        else:  # as Ansible does with both (version_added_collection and the like)
            add_collection_to_versions_and_dates({"options": options}, "healer.pooled_ssh", is_module=False)
            add_collection_to_versions_and_dates(fragment, "healer.pooled_ssh", is_module=False)
        for name, definition in fragment["options"].items():  # as add_fragments merges: ours win
            options[name] = {**definition, **options.get(name, {})}
        for name in names:
            C.config.initialize_plugin_configuration_definitions("connection", name, options)
    except Exception:  # pragma: no cover - the loader parses the documentation itself
        return


_preload_option_definitions()


def _ansible_errors() -> dict[ErrorKind, type[Exception]]:
    """The one table from a pool error's kind to what Ansible reports: a failed login, an UNREACHABLE
    host (the kind says whether it is one), or a failed task."""
    if IMPORT_ERROR is not None:
        return {}
    return {
        kind: AnsibleAuthenticationFailure
        if kind is ErrorKind.AUTH
        else AnsibleConnectionFailure
        if kind.unreachable
        else AnsibleError
        for kind in ErrorKind
    }


ANSIBLE_ERRORS = _ansible_errors()


def _in_worker() -> bool:
    """Whether this process is one of Ansible's task workers, not ansible-playbook itself (where
    ``meta: reset_connection`` runs, which must never start a daemon)."""
    worker = sys.modules.get("ansible.executor.process.worker")
    return worker is not None and isinstance(multiprocessing.current_process(), worker.WorkerProcess)


def _pool_client() -> Any:
    """The worker's client module, imported by the first request, not by every task's worker."""
    try:
        return _load("_client")
    except ImportError as e:  # pragma: no cover - a broken install
        raise AnsibleError(f"pooled_ssh cannot load its controller code: {e}") from e


def _pool_event(started: dict[str, Any]) -> str:
    """The -vvv line for the transport a request got, the same for commands, transfers and executor runs."""
    waited = started.get("waited")
    how = "reused" if started.get("hit") else "created"
    return f"POOL {how} transport {started.get('transport')}" + (f" (waited {waited}s)" if waited is not None else "")


class Connection(ConnectionBase):
    """SSH over Paramiko transports held by the controller's pool daemon."""

    transport = "healer.pooled_ssh.pooled_ssh"
    has_pipelining = True
    _connected: bool  # ConnectionBase's

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: PoolClient | None = None
        #: Opens the socket (and starts the daemon if needed) while the worker builds the module.
        self._opening: _client_connect.EarlySocket | None = None
        self._spec: dict[str, Any] | None = None
        self._pool: dict[str, Any] | None = None
        self._become_password_sent = False

    # -- helpers -----------------------------------------------------------------

    @property
    def _host(self) -> str:
        """The inventory host the pool keys on: the delegated host when the task uses ``delegate_to``."""
        delegate = getattr(self._play_context, "delegate_to", None)
        return str(delegate or self.get_option("inventory_name") or self.get_option("remote_addr"))

    def _request(self) -> dict[str, Any]:
        if IMPORT_ERROR is not None:
            raise AnsibleError(f"pooled_ssh cannot load its controller code: {IMPORT_ERROR}") from IMPORT_ERROR
        try:
            if self._spec is None:
                self._spec = connection_spec(self.get_option, self._host)
                self._pool = pool_settings(self.get_option)
        except OptionError as e:
            raise AnsibleError(f"pooled_ssh option for {self._host}: {e}") from None
        return {"conn": self._spec, "pool": self._pool}

    def _bind(self) -> dict[str, Any]:
        """Give the client this host's spec and settings (sent to the daemon once per socket)."""
        request = self._request()
        if self._client is None:
            raise self._unconnected()
        try:
            self._client.bind(request["conn"], request["pool"])
        except PoolFailure as e:
            raise self._failure(e) from None
        return request

    def _unconnected(self) -> AnsibleError:
        """A request before ``_connect`` made the client: a bug here, said as such rather than an AttributeError."""
        return AnsibleError(
            f"pooled_ssh: a request to {self._host} before its connection was made (a bug in pooled_ssh)"
        )

    def _daemon_settings(self) -> tuple[str, float]:
        """The pool directory (resolved) and the daemon's idle exit, from the options."""
        try:
            pool_dir, idle_exit = daemon_settings(self.get_option)
        except OptionError as e:
            raise AnsibleError(f"pooled_ssh option for {self._host}: {e}") from None
        return _client_connect.pool_dir_path(pool_dir), idle_exit

    def _new_client(self, spawn: bool = True) -> PoolClient:
        pool_dir, idle_exit = self._daemon_settings()
        client: PoolClient = _pool_client().PoolClient(pool_dir, idle_exit=idle_exit, spawn=spawn)
        return client

    def _where(self) -> str:
        spec = self._spec or {}
        return f"{spec.get('addr', self._host)}:{spec.get('port', '?')}"

    def _failure(self, e: Exception) -> Exception:
        """Map a pool error to what Ansible reports: UNREACHABLE for the host, or a failed task."""
        if isinstance(e, PoolUnavailable):
            return ANSIBLE_ERRORS[e.kind](f"pooled_ssh: {e}")
        kind = e.kind if isinstance(e, PoolFailure) else ErrorKind.INTERNAL
        return ANSIBLE_ERRORS[kind](str(e))

    def _open_early(self) -> None:
        """In a task's worker, open the pool socket on a thread as soon as the options are known.

        The worker builds the module before its first request; a cold pool's daemon start (~0.3 s,
        a Python importing Paramiko) then overlaps that work instead of following it.
        """
        if self._client is not None or self._opening is not None or IMPORT_ERROR is not None or not _in_worker():
            return
        try:
            pool_dir, idle_exit = self._daemon_settings()
        except AnsibleError:
            return  # raised again, to the user, on first use
        self._opening = _client_connect.EarlySocket(pool_dir, idle_exit)
        self._opening.start()

    def _opened(self, client: PoolClient | None = None) -> None:
        """Wait for the early open, if one is under way. Its socket goes to ``client`` when it is
        connected to that client's pool directory; otherwise it is closed."""
        opening, self._opening = self._opening, None
        if opening is None:
            return
        opening.join()
        if opening.sock is None:
            return
        if client is not None and client.pool_dir == opening.pool_dir:
            client.adopt(opening.sock)
        else:
            opening.sock.close()

    def _warm_unused(self) -> None:
        """A worker whose task never connected has the daemon open its host's transport for the
        host's next task (``warm_transports``; ``daemon/warm.py``). Only a speed-up: nothing is reported.
        Not with ``ssh_config_file``: reading it would cost a task that needs no connection ~0.1 s."""
        opening = self._opening
        if self._client is not None or opening is None:
            return
        try:
            if not self.get_option("warm_transports") or self.get_option("ssh_config_file"):
                return
            request = self._request()
        except (AnsibleError, KeyError):
            return  # an option error is the next request's to report
        opening.join()
        if opening.sock is not None and _client_connect.warm(opening.sock, request["conn"], request["pool"]):
            display.vvvv("POOL asked the daemon to open the transport for the host's next task", host=self._host)

    # -- ConnectionBase ----------------------------------------------------------

    def set_options(
        self,
        task_keys: dict[str, Any] | None = None,
        var_options: dict[str, Any] | None = None,
        direct: dict[str, Any] | None = None,
    ) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._open_early()

    def _connect(self) -> Connection:
        if not self._connected:
            request = self._request()
            spec = request["conn"]
            display.vvv(
                f"ESTABLISH POOLED SSH CONNECTION FOR USER: {spec['user']} on PORT {spec['port']} TO {spec['addr']}",
                host=self._host,
            )
            try:
                if self._client is None:
                    self._client = self._new_client()
            finally:
                self._opened(self._client)  # or closes the early socket, whatever happened
            self._connected = True
        return self

    def is_pipelining_enabled(self, wrap_async: bool = False) -> bool:
        return bool(
            self.has_pipelining
            and self.get_option("pipelining")
            and (not self.become or self.become.pipelining)
            and not wrap_async
        )

    def exec_command(self, cmd: str, in_data: bytes | None = None, sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        if self._client is None:
            raise self._unconnected()
        display.vvv(f"EXEC {cmd}", host=self._host)
        if in_data and remote_executor_enabled(self.get_option("remote_executor")):
            done = self._via_executor(cmd, in_data, become=bool(self.become and sudoable))
            if done is not None:
                return done
        become = self.become if sudoable else None
        awaiting_prompt = bool(become and become.expect_prompt())
        awaiting_success = bool(become and become.success)
        request = self._bind()
        message = self._exec_message(cmd, in_data, sudoable)
        ready = not (awaiting_prompt or awaiting_success)
        # Escalation must show its prompt or success marker within the connection timeout.
        escalation_timeout = float(request["conn"]["timeout"])
        deadline: float | None = None
        self._become_password_sent = False
        stdin = in_data or b""
        out: list[bytes] = []
        err: list[bytes] = []
        pending = b""
        rc = -1
        try:
            stream = self._client.exec_stream(message, stdin if ready else b"", eof=ready)
            for kind, data in stream:
                if kind == "started":
                    display.vvv(_pool_event(data), host=self._host)
                    if not ready:
                        deadline = time.monotonic() + escalation_timeout
                elif kind == "exit":
                    rc = data
                elif ready:
                    (out if kind == "out" else err).append(data)
                else:
                    pending += data
                    pending, awaiting_prompt, ready = self._examine_become(pending, awaiting_prompt, become)
                    if ready:
                        if pending:
                            out.append(pending)
                            pending = b""
                        self._client.send_stdin(stdin, eof=True)
                # Only the escalation phase has a deadline; the command itself runs as long as it needs.
                self._client.recv_timeout = (
                    None if ready or deadline is None else max(0.001, deadline - time.monotonic())
                )
        except PoolFailure as e:
            if e.kind is ErrorKind.RECV_TIMEOUT and not ready and become is not None:
                # UNREACHABLE, as the ssh plugin reports a become timeout (what ansible-core's own tests expect).
                raise AnsibleConnectionFailure(
                    f"{become.name}: timed out waiting for privilege escalation prompt after "
                    f"{escalation_timeout:g}s (timeout); received: {to_text(pending[-200:], errors='replace')!r}"
                ) from None
            raise self._failure(e) from None
        except PoolUnavailable as e:
            raise self._failure(e) from None
        except AnsibleError:
            # Leave the command's channel to the daemon to close: it sees us go.
            self._client.close()
            raise
        finally:
            if self._client is not None:
                self._client.recv_timeout = None
        if not ready and pending:
            if become is not None and become.check_missing_password(pending):
                raise AnsibleError(f"Missing {become.name} password")
            out.append(pending)
        return rc, b"".join(out), b"".join(err)

    def _via_executor(self, cmd: str, in_data: bytes, become: bool) -> tuple[int, bytes, bytes] | None:
        """The task through the transport's remote executor, or None: then it goes the plain way."""
        self._bind()
        if self._client is None:
            raise self._unconnected()
        try:
            outcome = executor_xrun(
                self._client,
                cmd,
                in_data,
                str(self._shell.get_option("remote_tmp")),
                command_timeout=self.get_option("command_timeout"),
                idle_timeout=self.get_option("remote_executor_idle_timeout"),
                become=become,
            )
        except PoolFailure as e:
            raise self._failure(e) from None
        except PoolUnavailable as e:
            raise self._failure(e) from None
        if outcome.result is None:
            display.vvv(f"EXECUTOR not used: {outcome.why}", host=self._host)
            return None
        info = outcome.started or {}
        display.vvv(_pool_event(info), host=self._host)
        display.vvv(f"EXECUTOR ran the module on transport {info.get('transport')}", host=self._host)
        return outcome.result

    def _exec_message(self, cmd: str, in_data: bytes | None, sudoable: bool) -> dict[str, Any]:
        return dict(
            cmd=cmd,
            command_timeout=self.get_option("command_timeout"),
            pty=bool(self.get_option("pty") and sudoable and not in_data),
            term=os.getenv("TERM", "vt100"),
            width=terminal_size("COLUMNS"),
            height=terminal_size("LINES"),
        )

    def _examine_become(self, pending: bytes, awaiting_prompt: bool, become: BecomeBase) -> tuple[bytes, bool, bool]:
        """The ssh plugin's escalation state machine: prompt, then success marker, then module data."""
        if awaiting_prompt and become.check_password_prompt(pending):
            password = become.get_option("become_pass")
            if not password:
                raise AnsibleError(f"Missing {become.name} password")
            display.debug("pooled_ssh: sending become password")
            if self._client is None:
                raise self._unconnected()
            self._client.send_stdin(to_bytes(password, errors="surrogate_or_strict") + b"\n")
            self._become_password_sent = True
            return b"", False, False
        if not awaiting_prompt and become.prompt and become.check_password_prompt(pending):
            # A prompt after we answered one: the password was wrong. Before any answer: there was none to give.
            raise AnsibleError(f"{'Incorrect' if self._become_password_sent else 'Missing'} {become.name} password")
        if become.check_incorrect_password(pending):
            raise AnsibleError(f"Incorrect {become.name} password")
        if become.check_missing_password(pending):
            raise AnsibleError(f"Missing {become.name} password")
        if become.success:
            lines = pending.splitlines(True)
            for index, line in enumerate(lines):
                if line.endswith(b"\n") and become.check_success(line):
                    return b"".join(lines[index + 1 :]), awaiting_prompt, True
        elif not awaiting_prompt:
            return pending, False, True
        return pending, awaiting_prompt, False

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        self._connect()
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._host)
        local = os.path.abspath(to_text(in_path, errors="surrogate_or_strict"))
        if not os.path.exists(local):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        self._transfer("put", local, to_text(out_path, errors="surrogate_or_strict"))

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        self._connect()
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._host)
        local = os.path.abspath(to_text(out_path, errors="surrogate_or_strict"))
        self._transfer(
            "fetch", local, to_text(in_path, errors="surrogate_or_strict"), umask=_pool_client().current_umask()
        )

    def _transfer(self, op: str, local: str, remote: str, **fields: Any) -> None:
        if self._client is None:
            raise self._unconnected()
        try:
            self._bind()
            reply = self._client.call({"op": op, "local": local, "remote": remote, **fields})
        except (PoolFailure, PoolUnavailable) as e:
            raise self._failure(e) from None
        display.vvv(_pool_event(reply), host=self._host)

    def reset(self) -> None:
        """Close this host's pooled transports (``meta: reset_connection``, reboot, wait_for_connection).

        Runs on a fresh, never-connected instance too, so it works from the options alone
        and never starts a daemon just to find it empty.
        """
        try:
            client = self._client if self._client is not None else self._new_client(spawn=False)
        finally:
            self._opened(self._client)  # a temporary client never takes it: it is closed
        try:
            spec = self._request()["conn"]
            reply = client.call({"op": "evict", "host": spec["host"], "port": spec["port"], "user": spec["user"]})
            display.vvv(f"RESET closed {reply.get('closed', 0)} pooled transport(s)", host=self._host)
        except PoolUnavailable:
            display.vvv("RESET no pool daemon running", host=self._host)
        except PoolFailure as e:
            raise self._failure(e) from None
        finally:
            if client is not self._client:
                client.close()

    def close(self) -> None:
        """Release the worker's link to the pool; the transports stay pooled."""
        try:
            self._warm_unused()
        except Exception as e:  # only a speed-up: closing goes on
            display.vvvv(f"POOL did not ask for the host's transport ahead: {e}", host=self._host)
        finally:
            self._opened()
        if self._client is not None:
            self._client.close()
            self._client = None
        self._connected = False
