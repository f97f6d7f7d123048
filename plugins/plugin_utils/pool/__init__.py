# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pool: transports keyed by host, port, user and identity (see :mod:`.core`).

Private to this collection. Import from the submodules: this file imports nothing, so that a
task's worker, which needs only :mod:`.settings`, does not load the daemon's pool with it.
"""
