# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What runs on the host, and the shell words that start it.

Private to this collection. Its own module, importing only the standard library, because both
sides need it: the daemon sends the source, and a task's worker builds the start command from its
length. The worker must not import the daemon's manager (threads, queues, dataclasses) for that.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path


@functools.cache
def executor_source() -> bytes:
    """One source: ``remote_child.py``, then ``remote.py`` without its own imports of it."""
    here = Path(__file__).parent
    parent = [
        line
        for line in (here / "remote.py").read_bytes().splitlines(True)
        if not line.startswith((b"from __future__ ", b"from .remote_child "))
    ]
    return (here / "remote_child.py").read_bytes() + b"".join(parent)


def bootstrap(interpreter: str) -> str:
    """The shell words that start the executor: read its source (exact length) from stdin, run it.

    The same words work under every become method: they go where the module's interpreter would.
    """
    size = len(executor_source())
    loader = (
        "import os,sys;b=b'';"
        f'exec("while len(b)<{size}:\\n c=os.read(0,{size}-len(b))\\n if not c:sys.exit(3)\\n b+=c");'
        "del os,sys;exec(compile(b,'<pooled_ssh executor>','exec'))"
    )
    return f"{shlex.quote(interpreter)} -c {shlex.quote(loader)}"
