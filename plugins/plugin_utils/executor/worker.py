# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker's side: send a recognised pipelined module run to the daemon as an executor run.

No Ansible import: the connection plugin passes the command, its input and what it knows.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..wire import frames
from .recognise import recognise
from .source import bootstrap


@dataclass
class Outcome:
    """An executor run's result, or (``result`` None) why the command goes the plain way."""

    result: Optional[Tuple[int, bytes, bytes]]
    why: str = ""
    started: Optional[Dict[str, Any]] = None


def xrun(
    client: Any,
    cmd: str,
    in_data: Optional[bytes],
    remote_tmp: str,
    executable: str = "/bin/sh",
    command_timeout: float = 0.0,
    become: bool = False,
    idle_timeout: float = 60.0,
) -> Outcome:
    """Run ``cmd`` through the transport's executor when it is exactly a pipelined module run.

    ``become``: the task escalates. Its command then wraps the interpreter in the become command,
    which the executor (running as the login user) never matches: the plain path runs it.
    """
    run = recognise(cmd, in_data, executable=executable)
    if run is None:
        if become:
            return Outcome(None, "the task runs with become: the plain path escalates it")
        return Outcome(None, "not exactly a pipelined Python 3 module run")
    payload = run.head + run.zip_text + run.tail
    if len(payload) > frames.MAX_PAYLOAD:
        return Outcome(None, f"payload of {len(payload)} bytes is over the daemon's frame limit")
    start = f"{executable} -c {shlex.quote(run.start_command(bootstrap(run.interpreter)))}"
    message = {
        "key": json.dumps(run.key),
        "start": start,
        "tmp": remote_tmp,
        "env": json.dumps(run.env),
        "head_len": len(run.head),
        "zip_len": len(run.zip_text),
        "command_timeout": float(command_timeout or 0),
        "idle_timeout": float(idle_timeout or 0),
    }
    out: List[bytes] = []
    err: List[bytes] = []
    started = None
    for kind, data in client.xrun_stream(message, payload):
        if kind == "fallback":
            return Outcome(None, f"the executor could not take it ({data})")
        if kind == "started":
            started = data
        elif kind == "exit":
            return Outcome((int(data), b"".join(out), b"".join(err)), started=started)
        else:
            (out if kind == "out" else err).append(data)
    return Outcome(None, "the daemon ended the run without an exit status")
