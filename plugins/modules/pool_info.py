#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pool_info
short_description: Read the pooled_ssh pool's statistics and transports
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin; no module is sent to any host) and talks to the
    C(healer.pooled_ssh.pooled_ssh) pool daemon of O(pool_dir).
  - Returns the daemon's statistics (the healer service's counters, overall and
    per inventory host) and its live transports. It changes nothing and always returns C(changed=false).
  - To close transports or stop the daemon, use M(healer.pooled_ssh.pool).
  - When no daemon runs, returns C(running=false) and empty statistics; it never starts one.
author: healer.pooled_ssh maintainers (@healer)
extends_documentation_fragment:
  - healer.pooled_ssh.controller
  - ansible.builtin.action_common_attributes
options:
  flush:
    description:
      - Deprecated, to be removed in version 1.0.0 of the collection; it warns. Use
        M(healer.pooled_ssh.pool) with O(healer.pooled_ssh.pool#module:state=flushed) and
        O(healer.pooled_ssh.pool#module:host) instead.
      - Closes the pooled transports of this inventory host; V(all) closes every transport.
    type: str
  stop:
    description:
      - Deprecated, to be removed in version 1.0.0 of the collection; it warns. Use
        M(healer.pooled_ssh.pool) with O(healer.pooled_ssh.pool#module:state=stopped) instead.
      - Stops the daemon; it closes every transport first.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: It changes nothing; in check mode the deprecated O(flush) and O(stop) report what they would change.
notes:
  - Use it with C(run_once) (it reads the controller's pool, not a host's).
seealso:
  - module: healer.pooled_ssh.pool
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
  healer.pooled_ssh.pool:
    state: flushed
    host: web1
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
  sample: {pid: 4242, protocol: 2, uptime: 12.5, clients: 0, requests: 40, threads: 9, paramiko: "5.1.0"}
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
changed:
  description: Always V(false) without the deprecated options.
  returned: always
  type: bool
  sample: false
closed:
  description: Transports closed by the deprecated O(flush) (in check mode, that would be closed).
  returned: when flush is set
  type: int
  sample: 2
msg:
  description: What the deprecated O(flush) or O(stop) did, in one line.
  returned: when flush or stop is set
  type: str
  sample: closed 1 transport of web1
"""
