# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """Options of the pool daemon, shared by the connection plugin and the pool tools."""

    DOCUMENTATION = r"""
options:
  pool_dir:
    description:
      - Directory of the pool daemon's socket, lock, pid file and log. Created with mode 0700; a directory
        that is not yours or that others can enter is refused.
      - One daemon serves each directory; point playbooks at the same directory to share their pool.
    type: path
    default: ~/.ansible/pooled_ssh
    env:
      - name: ANSIBLE_POOLED_SSH_POOL_DIR
    ini:
      - section: pooled_ssh_connection
        key: pool_dir
    vars:
      - name: ansible_pooled_ssh_pool_dir
  max_connections:
    description:
      - "At most this many transports per inventory host, port and user. Past it, requests queue (see
        O(pool_wait_timeout)) and then fail with C(Connection pool exhausted for <host>:<port> (max: <n>))."
    type: int
    default: 5
    env:
      - name: ANSIBLE_POOLED_SSH_MAX_CONNECTIONS
      - name: SSH_POOL_MAX_CONNECTIONS
    ini:
      - section: pooled_ssh_connection
        key: max_connections
    vars:
      - name: ansible_pooled_ssh_max_connections
  max_channels:
    description:
      - At most this many concurrent channels (commands, transfers) on one transport; sshd's C(MaxSessions)
        default is 10. When the server refuses a channel, the pool learns its real limit.
    type: int
    default: 10
    env:
      - name: ANSIBLE_POOLED_SSH_MAX_CHANNELS
    ini:
      - section: pooled_ssh_connection
        key: max_channels
    vars:
      - name: ansible_pooled_ssh_max_channels
  idle_timeout:
    description:
      - Seconds an unused transport stays open. Default 60. Set it above the time one task takes to sweep
        the fleet, or each task pays a handshake again.
      - The C(SSH_POOL_IDLE_TIMEOUT_MS) environment name (O(idle_timeout_ms)) applies when this is unset.
    type: float
    env:
      - name: ANSIBLE_POOLED_SSH_IDLE_TIMEOUT
    ini:
      - section: pooled_ssh_connection
        key: idle_timeout
    vars:
      - name: ansible_pooled_ssh_idle_timeout
  idle_timeout_ms:
    description: O(idle_timeout) in milliseconds, under its C(SSH_POOL_*) environment name.
    type: float
    env:
      - name: SSH_POOL_IDLE_TIMEOUT_MS
  pool_wait_timeout:
    description: Seconds a request waits in the queue for a free transport before the pool reports exhaustion.
    type: float
    default: 60
    env:
      - name: ANSIBLE_POOLED_SSH_POOL_WAIT_TIMEOUT
    ini:
      - section: pooled_ssh_connection
        key: pool_wait_timeout
    vars:
      - name: ansible_pooled_ssh_pool_wait_timeout
  health_checks:
    description: Check idle transports every O(health_check_interval) seconds and drop those that do not answer.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_POOLED_SSH_HEALTH_CHECKS
      - name: SSH_POOL_HEALTH_CHECKS
    ini:
      - section: pooled_ssh_connection
        key: health_checks
    vars:
      - name: ansible_pooled_ssh_health_checks
  health_check_interval:
    description:
      - Seconds between health checks of an idle transport (a keepalive request that must be answered in time).
        Default 30; the C(SSH_POOL_HEALTH_CHECK_INTERVAL_MS) environment name applies when this is unset.
    type: float
    env:
      - name: ANSIBLE_POOLED_SSH_HEALTH_CHECK_INTERVAL
    ini:
      - section: pooled_ssh_connection
        key: health_check_interval
    vars:
      - name: ansible_pooled_ssh_health_check_interval
  health_check_interval_ms:
    description: O(health_check_interval) in milliseconds, under its C(SSH_POOL_*) environment name.
    type: float
    env:
      - name: SSH_POOL_HEALTH_CHECK_INTERVAL_MS
  keepalive_interval:
    description:
      - Seconds between keepalives on a transport that is running commands. A transport that leaves
        O(keepalive_max_missed) of them unanswered is closed, and its commands fail with "outcome unknown".
        Default 10; the C(SSH_KEEPALIVE_INTERVAL) environment name (milliseconds) applies when this is unset.
    type: float
    env:
      - name: ANSIBLE_POOLED_SSH_KEEPALIVE_INTERVAL
    ini:
      - section: pooled_ssh_connection
        key: keepalive_interval
    vars:
      - name: ansible_pooled_ssh_keepalive_interval
  keepalive_interval_ms:
    description: O(keepalive_interval) in milliseconds, under its C(SSH_KEEPALIVE_INTERVAL) environment name.
    type: float
    env:
      - name: SSH_KEEPALIVE_INTERVAL
  keepalive_max_missed:
    description: How many keepalive intervals may pass without an answer before a transport is declared dead.
    type: int
    default: 3
    env:
      - name: ANSIBLE_POOLED_SSH_KEEPALIVE_MAX_MISSED
      - name: SSH_KEEPALIVE_MAX_MISSED
    ini:
      - section: pooled_ssh_connection
        key: keepalive_max_missed
    vars:
      - name: ansible_pooled_ssh_keepalive_max_missed
  daemon_idle_timeout:
    description: Seconds the pool daemon lives on after it last held a transport or served a worker.
    type: float
    default: 60
    env:
      - name: ANSIBLE_POOLED_SSH_DAEMON_IDLE_TIMEOUT
    ini:
      - section: pooled_ssh_connection
        key: daemon_idle_timeout
    vars:
      - name: ansible_pooled_ssh_daemon_idle_timeout
"""
