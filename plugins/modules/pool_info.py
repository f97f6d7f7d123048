#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pool_info
short_description: Read the pooled_ssh pool's statistics and transports, flush a host or stop the daemon
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin; no module is sent to any host) and talks to the
    C(healer.pooled_ssh.pooled_ssh) pool daemon of O(pool_dir).
  - Returns the daemon's statistics (the healer service's counters, overall and per inventory host) and its live
    transports. With O(flush) closes one host's transports (or all); with O(stop) stops the daemon.
  - When no daemon runs, returns C(running=false) and empty statistics; it never starts one.
author: healer.pooled_ssh maintainers
options:
  pool_dir:
    description:
      - The pool directory, as the connection's C(pool_dir) option.
      - Defaults to E(ANSIBLE_POOLED_SSH_POOL_DIR), then C(~/.ansible/pooled_ssh).
    type: path
  flush:
    description: Close the pooled transports of this inventory host; V(all) closes every transport.
    type: str
  stop:
    description: Stop the daemon; it closes every transport first.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: In check mode O(flush) and O(stop) report what they would change and do nothing.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Use it with C(run_once) (it reads the controller's pool, not a host's).
"""

EXAMPLES = r"""
- name: Read the pool
  healer.pooled_ssh.pool_info:
  run_once: true
  register: pool

- name: Show hits and misses
  ansible.builtin.debug:
    msg: "{{ pool.stats.total.poolHits }} hits, {{ pool.stats.total.poolMisses }} handshakes"
  run_once: true

- name: Drop web1's transports (for example after changing its sshd configuration)
  healer.pooled_ssh.pool_info:
    flush: web1
  run_once: true
"""

RETURN = r"""
running:
  description: Whether a daemon answered.
  returned: always
  type: bool
  sample: true
daemon:
  description: The daemon's pid, protocol version, uptime, clients, requests, threads and Paramiko version.
  returned: when running
  type: dict
  sample: {pid: 4242, protocol: 1, uptime: 12.5, clients: 0, requests: 40, threads: 9, paramiko: "5.1.0"}
stats:
  description:
    - The healer service's counters C(poolHits), C(poolMisses), C(activeConnections), C(idleConnections),
      C(totalConnections), C(healthCheckFailures), C(healthChecksPassed) and the pool's own (C(closedIdle),
      C(closedDead), C(evicted), C(exhausted), C(waits), C(waitSeconds), C(peakConnections), ...).
  returned: always
  type: dict
  contains:
    total:
      description: Counters over every host.
      type: dict
      returned: always
    hosts:
      description: Counters per inventory host.
      type: dict
      returned: always
transports:
  description: The live transports.
  returned: always
  type: list
  elements: dict
  sample:
    - {id: 1, key: "deploy@web1:22", host: web1, port: 22, user: deploy, age: 30.1, idle: 2.0,
       channels_in_use: 0, max_channels: 10, channels_opened: 7, state: idle}
closed:
  description: Transports closed by O(flush).
  returned: when flush is set
  type: int
  sample: 2
"""
