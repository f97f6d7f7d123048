#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: pool
short_description: Flush pooled_ssh transports or stop the pool daemon
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin; no module is sent to any host) and steers the
    C(healer.pooled_ssh.pooled_ssh) pool daemon of O(pool_dir).
  - With O(state=flushed) closes the pooled transports of O(host) (all of them when O(host) is not set);
    the next task to that host opens a new one. Use it after changing a host's sshd configuration, its
    keys or its users.
  - With O(state=stopped) stops the daemon; it closes every transport first. The next task that uses
    the connection starts a new daemon.
  - It never starts a daemon. When none runs there is nothing to flush or stop, and it reports no change.
  - To read the pool without changing it, use M(healer.pooled_ssh.pool_info).
author: healer.pooled_ssh maintainers (@healer)
extends_documentation_fragment:
  - healer.pooled_ssh.controller
  - ansible.builtin.action_common_attributes
options:
  state:
    description:
      - V(flushed) closes pooled transports; V(stopped) stops the daemon.
    type: str
    choices: [flushed, stopped]
    required: true
  host:
    description:
      - With O(state=flushed), the inventory host whose transports are closed (the name the pool keys on,
        the inventory name, or the delegated host). Not set closes every transport.
      - A jump host's transport is keyed on the jump host's name as given in C(proxy_jump).
    type: str
attributes:
  check_mode:
    support: full
    details: Reports what it would close or stop (O(state=flushed) lists the transports) and changes nothing.
notes:
  - Use it with C(run_once) (it steers the controller's pool, not a host's).
  - A transport that a running task is using is closed when that task releases it.
seealso:
  - module: healer.pooled_ssh.pool_info
"""

EXAMPLES = r"""
- name: Drop web1's transports after changing its sshd configuration
  healer.pooled_ssh.pool:
    state: flushed
    host: web1
  run_once: true

- name: Close every pooled transport
  healer.pooled_ssh.pool:
    state: flushed
  run_once: true

- name: Stop the pool daemon at the end of a play
  healer.pooled_ssh.pool:
    state: stopped
  run_once: true
"""

RETURN = r"""
changed:
  description: Whether a transport was (in check mode, would be) closed, or a daemon was (would be) stopped.
  returned: always
  type: bool
  sample: true
running:
  description:
    - Whether a daemon answers after the task. In check mode, whether one answers now.
    - After O(state=stopped) it is V(false) once the daemon has been told to stop; it exits after closing
      its transports.
  returned: always
  type: bool
  sample: false
closed:
  description: How many transports were closed (in check mode, would be closed).
  returned: when O(state=flushed)
  type: int
  sample: 2
transports:
  description:
    - The transports closed (in check mode, that would be closed), as M(healer.pooled_ssh.pool_info)
      lists them, read just before closing.
  returned: when O(state=flushed)
  type: list
  elements: dict
  sample:
    - {id: 1, key: "deploy@web1:22", host: web1, port: 22, user: deploy, age: 30.1, idle: 2.0,
       channels_in_use: 0, max_channels: 10, channels_opened: 7, state: idle}
daemon:
  description: The daemon that was (in check mode, would be) stopped, as M(healer.pooled_ssh.pool_info) returns it.
  returned: when O(state=stopped) and a daemon was running
  type: dict
  sample: {pid: 4242, protocol: 2, uptime: 12.5, clients: 0, requests: 40, threads: 9, paramiko: "5.1.0"}
msg:
  description: What was done, in one line.
  returned: always
  type: str
  sample: closed 1 transport of web1
"""
