# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """What the modules that talk to the controller's pool daemon share."""

    DOCUMENTATION = r"""
options:
  pool_dir:
    description:
      - The pool directory, as the connection's C(pool_dir) option.
      - Defaults to E(ANSIBLE_POOLED_SSH_POOL_DIR), then C(~/.ansible/pooled_ssh).
    type: path
attributes:
  diff_mode:
    support: none
  platform:
    platforms: posix
"""
