# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is this command exactly a pipelined module run Ansible would have run? If so, what does the executor need?

Pure: no Ansible import. The caller passes what only it knows (the shell's executable and, under
``become``, a function that rebuilds the become command for an inner command). Anything not
recognised exactly returns None and goes by the plain path, untouched.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, List, Optional, Tuple

#: The interpreters the executor runs under: a Python 3 named as such (the version is checked at start).
_PYTHON = re.compile(r"python3(\.\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Variables read when the interpreter starts: they make a different executor, never a per-run change.
_STARTUP = re.compile(r"(PYTHON.*|LANG|LANGUAGE|LC_.*)")
#: The wrapper's one call of its main function, then its keyword arguments up to the zip's.
_CALL = b"\n    _ansiballz_main(\n"
_ARGS = re.compile(rb"(?:[a-z_]+=.*,\n)*?zip_data='")
_SLEEP = " && sleep 0"  # what ansible-core before 2.21 appends to commands run by the default executable
SUPPORTED_SHELLS = ("/bin/sh",)


@dataclass(frozen=True)
class PipelinedRun:
    """A recognised pipelined module run, split into what the executor needs."""

    interpreter: str
    #: ``environment:`` variables of the task that only the module sees (set in its child).
    env: Dict[str, str]
    #: Variables the interpreter reads at start: part of the executor's identity, set when it starts.
    startup_env: Tuple[Tuple[str, str], ...]
    #: The wrapper before and after its base64 zip, and the zip text (the cacheable part).
    head: bytes
    zip_text: bytes
    tail: bytes
    #: Which executor runs it: the same interpreter, startup variables and become context.
    key: Tuple[Hashable, ...]

    def start_command(self, bootstrap: str) -> str:
        """The inner command that starts this run's executor: its startup variables, then ``bootstrap``."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.startup_env] + [bootstrap])


def split_wrapper(in_data: bytes) -> Optional[Tuple[bytes, bytes, bytes]]:
    """The AnsiballZ wrapper as (head, zip text, tail), or None if it is not exactly one.

    Found with ``bytes.find``, not a regular expression over the whole payload: the zip is most
    of a payload of several hundred KB (1.8 ms a run with the expression, 0.2 ms this way). The
    zip's characters are not checked here: the executor runs exactly ``head + zip + tail``, and a
    zip that is not one fails its decoding on the host before anything runs (then the run falls
    back to the plain path).
    """
    if not in_data.startswith(b"#!") or b"\n_ANSIBALLZ_WRAPPER = True\n" not in in_data:
        return None
    call = in_data.find(_CALL)
    if call < 0 or in_data.find(_CALL, call + 1) >= 0:
        return None
    args = _ARGS.match(in_data, call + len(_CALL))
    if args is None:
        return None
    start = args.end()
    end = in_data.find(b"'", start)
    if end < 0 or not in_data.startswith(b"',\n)\n", end):
        return None
    return in_data[:start], in_data[start:end], in_data[end:]


def _inner_of_become(body: str, executable: str, success: str) -> Optional[str]:
    """The command inside a become command: after ``echo <success> ;`` in its last word (nested shells too)."""
    marker = f"echo {success} ; "
    word = body
    for _level in range(4):
        try:
            words = shlex.split(word)
        except ValueError:
            return None
        if not words:
            return None
        word = words[-1]
        if word.startswith(marker):
            return word[len(marker) :]
        if not word.startswith(f"{executable} -c "):
            return None
    return None


def _env_and_interpreter(inner: str) -> Optional[Tuple[List[Tuple[str, str]], str]]:
    try:
        words = shlex.split(inner)
    except ValueError:
        return None
    if not words:
        return None
    assignments = []
    for word in words[:-1]:
        name, eq, value = word.partition("=")
        if not eq or not _NAME.fullmatch(name):
            return None
        assignments.append((name, value))
    interpreter = words[-1]
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in assignments)
    rebuilt = (prefix + " " if prefix else "") + shlex.join([interpreter])
    if rebuilt != inner:
        return None
    return assignments, interpreter


def recognise(
    cmd: str,
    in_data: Optional[bytes],
    executable: str = "/bin/sh",
    become: Optional[Tuple[Hashable, str, Callable[[str], str]]] = None,
) -> Optional[PipelinedRun]:
    """A :class:`PipelinedRun` when ``cmd``/``in_data`` is exactly Ansible's pipelined module run, else None.

    ``become`` is (identity, success marker, rebuild): ``rebuild(inner)`` returns the become command
    the plugin would build around ``inner`` with the same marker; the run is recognised only if that
    rebuilds ``cmd`` exactly.
    """
    if not in_data or executable not in SUPPORTED_SHELLS:
        return None
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if len(words) != 3 or words[:2] != [executable, "-c"] or cmd != f"{executable} -c {shlex.quote(words[2])}":
        return None
    body = words[2]
    if body.endswith(_SLEEP):
        body = body[: -len(_SLEEP)]
    if become is None:
        inner = body
        become_id: Hashable = None
    else:
        become_id, success, rebuild = become
        found = _inner_of_become(body, executable, success) if success else None
        if found is None or rebuild(found) != body:
            return None
        inner = found
    parsed = _env_and_interpreter(inner)
    if parsed is None:
        return None
    assignments, interpreter = parsed
    if not interpreter.startswith("/") or not _PYTHON.fullmatch(interpreter.rsplit("/", 1)[-1]):
        return None
    parts = split_wrapper(in_data)
    if parts is None or not in_data.startswith(b"#!" + interpreter.encode() + b"\n"):
        return None
    env = dict(assignments)
    startup = tuple(sorted((k, v) for k, v in env.items() if _STARTUP.fullmatch(k)))
    run_env = {k: v for k, v in env.items() if not _STARTUP.fullmatch(k)}
    head, zip_text, tail = parts
    return PipelinedRun(
        interpreter=interpreter,
        env=run_env,
        startup_env=startup,
        head=head,
        zip_text=zip_text,
        tail=tail,
        key=(executable, become_id, interpreter, startup),
    )
