"""The remote executor, run for real as a local process on pipes, against real AnsiballZ payloads.

Every result is compared with the same payload run the plain way: ``/bin/sh -c <python3>`` with the
wrapper on stdin, in the same environment and directory.
"""

from __future__ import annotations

import base64
import glob
import io
import os
import re
import shutil
import stat
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import manager, recognise, remote
from local_executor import HERE, PYTHON, Local, Pipes, Result, build, module_json

MODULES = HERE / "modules"
REPO = HERE.parents[4]


def python38() -> Optional[str]:
    """A Python 3.8 as ./run finds one: HEALER_PYTHON38, one pyenv installed, or on PATH (not a pyenv shim)."""
    if os.environ.get("HEALER_PYTHON38"):
        return os.environ["HEALER_PYTHON38"]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    matches = sorted(glob.glob(os.path.join(root, "versions", "3.8.*", "bin", "python3.8")))
    found = matches[-1] if matches else shutil.which("python3.8")
    return None if found is None or "/shims/" in found else found


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory, collections_root: Path) -> Dict[str, bytes]:
    specs = {
        "ping": {"module": "ansible.builtin.ping", "args": {"data": "pong"}},
        "command": {"module": "ansible.builtin.command", "args": {"_raw_params": "true"}},
        "diagnose": {
            "module": "healer.pooled_ssh.healer_diagnose",
            "args": {"checks": ["memory", "file_descriptors"], "metrics": False},
        },
        "leak": {"module": str(MODULES / "exec_leak.py")},
        "pristine": {"module": str(MODULES / "exec_pristine.py")},
        "kill": {"module": str(MODULES / "exec_crash.py"), "args": {"how": "kill"}},
        "stderr": {"module": str(MODULES / "exec_crash.py"), "args": {"how": "stderr"}},
        "raise": {"module": str(MODULES / "exec_crash.py"), "args": {"how": "raise"}},
        "hang": {"module": str(MODULES / "exec_crash.py"), "args": {"how": "hang"}},
        "compiles": {"module": str(MODULES / "exec_compiles.py")},
    }
    for spec in specs.values():
        spec["interpreter"] = PYTHON
    return build(tmp_path_factory.mktemp("build"), collections_root, specs)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    executor = Local(tmp_path)
    yield executor
    executor.stop()


def test_ping_is_byte_identical(local: Local, payloads: Dict[str, bytes]) -> None:
    assert local.run(payloads["ping"]) == local.plain(payloads["ping"])
    assert module_json(local.run(payloads["ping"])[1]) == {"ping": "pong"}


def test_command_matches_a_fresh_interpreter(local: Local, payloads: Dict[str, bytes]) -> None:
    timing = ("start", "end", "delta")
    for _round in range(2):  # the second run goes from the cached payload and the warm template
        rc, out, err = local.run(payloads["command"])
        prc, pout, perr = local.plain(payloads["command"])
        assert (rc, err) == (prc, perr) == (0, b"")
        mine, theirs = module_json(out), module_json(pout)
        for result in (mine, theirs):
            for key in timing:
                del result[key]
        assert mine == theirs
    assert local.executor.stats.cache_hits == 1


def test_healer_diagnose_matches_a_fresh_interpreter(local: Local, payloads: Dict[str, bytes]) -> None:
    rc, out, err = local.run(payloads["diagnose"])
    prc, pout, perr = local.plain(payloads["diagnose"])
    assert (rc, err) == (prc, perr)
    mine, theirs = module_json(out), module_json(pout)
    assert sorted(mine) == sorted(theirs)
    assert sorted(mine["checks"]) == sorted(theirs["checks"])


def test_task_environment_and_process_state_are_those_of_a_plain_run(local: Local, payloads: Dict[str, bytes]) -> None:
    env = {"EXECUTOR_MARKER": "from the task", "PATH": "/usr/bin:/bin"}
    rc, out, err = local.run(payloads["pristine"], env)
    prc, pout, perr = local.plain(payloads["pristine"], env)
    assert (rc, err) == (prc, perr) == (0, b"")
    mine, theirs = module_json(out), module_json(pout)
    assert mine == theirs
    assert mine["marker"] == "from the task" and mine["stdin_eof"] is True


def test_consecutive_runs_see_no_state_of_each_other(local: Local, payloads: Dict[str, bytes]) -> None:
    # Same module_utils tree, so the second run is forked from the very template the first one came from.
    parts = [recognise.split_wrapper(payloads[name]) for name in ("leak", "pristine")]
    assert remote.module_utils_hash(parts[0][1]) == remote.module_utils_hash(parts[1][1])  # type: ignore[index]
    before = module_json(local.run(payloads["pristine"])[1])
    assert module_json(local.run(payloads["leak"])[1])["left"] == "behind"
    after = module_json(local.run(payloads["pristine"])[1])
    assert after == before
    assert (after["leaked_global"], after["leaked_env"], after["cwd"], after["umask"]) == (
        False,
        None,
        str(local.cwd),
        0o022,
    )


def test_a_crashing_module_gives_the_plain_runs_stderr_and_rc(local: Local, payloads: Dict[str, bytes]) -> None:
    rc, out, err = local.run(payloads["stderr"])
    assert (rc, out, err) == local.plain(payloads["stderr"])
    assert rc == 3 and b"oops" in err
    rc, out, err = local.run(payloads["raise"])
    prc, pout, perr = local.plain(payloads["raise"])
    assert (rc, err) == (prc, perr) == (1, b"")
    assert module_json(out)["exception"] == module_json(pout)["exception"]


def _in_own_payload(paths: List[str]) -> List[str]:
    """Each path within its task's payload zip (whose directory has a random name in every run)."""
    return [path.split("_payload.zip/", 1)[1] for path in paths]


def _payload_paths_masked(text: bytes) -> bytes:
    return re.sub(rb"/\S*?_payload\.zip/", b"<payload>/", text)


def test_a_task_child_compiles_none_of_its_payloads_sources_and_names_its_own_files(
    local: Local, payloads: Dict[str, bytes]
) -> None:
    plain = module_json(local.plain(payloads["compiles"])[1])
    # A fresh interpreter compiles each source it imports from the payload.
    assert "ansible_collections/healer/pooled_ssh/plugins/module_utils/_diagnose_thresholds.py" in plain["compiled"]
    for _round in range(2):
        rc, out, err = local.run(payloads["compiles"])
        assert (rc, err) == (0, b"")
        mine = module_json(out)
        # The template compiled the payload's sources before it forked: the child compiles none of them.
        assert mine["compiled"] == []
        # The code carries the file names of this task's own payload, as in a plain run.
        for key in ("own", "late"):
            assert len(set(mine[key])) == 1 and "<" not in mine[key][0], mine[key]
            assert _in_own_payload(mine[key]) == _in_own_payload(plain[key])
        assert mine["own"][0].split("_payload.zip/")[0] != plain["own"][0].split("_payload.zip/")[0]


#: A module whose source warns when compiled (a SyntaxWarning, shown by default): a fresh interpreter
#: writes that warning to the module's stderr. Written by the test: a source that warns has no place
#: in the repository.
WARNS = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={})
module.exit_json(literal=len(module.params) is 0)
"""


def test_a_source_that_warns_when_compiled_warns_on_the_modules_stderr_as_in_a_plain_run(
    local: Local, tmp_path: Path, collections_root: Path
) -> None:
    module = tmp_path / "exec_warns.py"
    module.write_text(WARNS)
    payload = build(tmp_path, collections_root, {"warns": {"module": str(module), "interpreter": PYTHON}})["warns"]
    prc, pout, perr = local.plain(payload)
    assert prc == 0 and b"SyntaxWarning" in perr
    for _round in range(2):
        rc, out, err = local.run(payload)
        assert (rc, module_json(out)) == (prc, module_json(pout))
        assert _payload_paths_masked(err) == _payload_paths_masked(perr)


def test_a_module_killed_by_a_signal_reports_128_plus_the_signal(local: Local, payloads: Dict[str, bytes]) -> None:
    rc, out, err = local.run(payloads["kill"])
    # What the shell reports for the module it waited for: 128 + 9, and its "Killed" line on stderr.
    assert (rc, out, err) == local.plain(payloads["kill"], sleep0=True)
    assert (rc, out, err) == (137, b"partial output\n", b"Killed\n")
    assert local.plain(payloads["kill"])[1:] == (out, err)
    assert local.run(payloads["ping"])[0] == 0  # the executor is unharmed


def _tampered(payload: bytes) -> bytes:
    """The same payload with a different ``ansible/module_utils/basic.py`` (as from another ansible-core)."""
    head, zip_text, tail = recognise.split_wrapper(payload)  # type: ignore[misc]
    src = zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_text)))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "ansible/module_utils/basic.py":
                data += b'\n_TAMPER = "another ansible-core"\n'
            dst.writestr(info, data)
    return head + base64.b64encode(buf.getvalue()) + tail


def test_a_changed_payload_never_runs_a_stale_zip_or_template(
    local: Local, payloads: Dict[str, bytes], tmp_path: Path, collections_root: Path
) -> None:
    original = payloads["pristine"]
    tampered = _tampered(original)
    assert module_json(local.run(original)[1])["tamper"] is None
    assert module_json(local.run(tampered)[1])["tamper"] == "another ansible-core"
    assert module_json(local.run(original)[1])["tamper"] is None
    # A changed module with unchanged module_utils: the template of the first must not run the old module.
    module = tmp_path / "exec_version.py"
    versions = {}
    for version in ("one", "two"):
        module.write_text((MODULES / "exec_leak.py").read_text().replace('left="behind"', f'left="{version}"'))
        versions.update(
            build(tmp_path / version, collections_root, {version: {"module": str(module), "interpreter": PYTHON}})
        )
    trees = {remote.module_utils_hash(recognise.split_wrapper(p)[1]) for p in versions.values()}  # type: ignore[index]
    assert len(trees) == 1
    assert [module_json(local.run(versions[v])[1])["left"] for v in ("one", "two", "one")] == ["one", "two", "one"]


def test_a_corrupt_or_missing_payload_is_asked_for_again(local: Local, payloads: Dict[str, bytes]) -> None:
    zip_text = recognise.split_wrapper(payloads["ping"])[1]  # type: ignore[index]
    # The manager believes the executor holds it; the executor does not: it asks, nothing runs twice.
    local.executor._held.add(manager.zip_hash(zip_text))
    assert local.run(payloads["ping"]) == local.plain(payloads["ping"])
    assert local.executor.stats.puts == 1


def test_the_temp_dir_is_private_and_removed_when_stdin_closes(tmp_path: Path, payloads: Dict[str, bytes]) -> None:
    executor = Local(tmp_path)
    try:
        assert executor.run(payloads["ping"])[0] == 0
        directory = Path(str(executor.hello["dir"]))
        assert directory.parent == tmp_path / "remote_tmp"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert list(directory.iterdir())  # the template's module_utils zip
    finally:
        rc = executor.stop()
    assert rc == 0
    assert list((tmp_path / "remote_tmp").iterdir()) == []


def test_an_executor_lost_mid_run_reports_outcome_unknown(local: Local, payloads: Dict[str, bytes]) -> None:
    head, zip_text, tail = recognise.split_wrapper(payloads["hang"])  # type: ignore[misc]
    events = local.executor.run(head, zip_text, tail, {})
    kind, data = next(events)
    assert kind is manager.EventKind.OUT and data.startswith(b"pid=")  # the module is running now
    module_pid = int(data.decode().split("=")[1])
    try:
        os.kill(int(local.hello["pid"]), 9)  # type: ignore[call-overload]
        with pytest.raises(manager.ExecutorError) as caught:
            next(events)
        assert caught.value.started is True
    finally:
        os.kill(module_pid, 9)
    local.proc.wait()
    with pytest.raises(manager.ExecutorError) as again:
        local.run(payloads["ping"])
    assert again.value.started is False  # refused up front: nothing was sent


def _state(pid: int) -> str:
    """A process's state letter (``Z`` once it died and waits to be reaped), ``gone`` once reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


TIMEOUT_OF_A_HANGING_RUN = 4.0


def test_a_run_past_its_timeout_is_killed_and_the_executor_stays(local: Local, payloads: Dict[str, bytes]) -> None:
    head, zip_text, tail = recognise.split_wrapper(payloads["hang"])  # type: ignore[misc]
    # Long enough for the module to print its pid first on a loaded machine (the bound is the
    # run's input, not a measurement).
    events = local.executor.run(head, zip_text, tail, {}, timeout=TIMEOUT_OF_A_HANGING_RUN)
    kind, data = next(events)
    assert kind is manager.EventKind.OUT and data.startswith(b"pid=")  # the module is running now
    module_pid = int(data.decode().split("=")[1])
    with pytest.raises(manager.ExecutorTimeout) as caught:
        list(events)
    assert caught.value.started is True and caught.value.seconds == TIMEOUT_OF_A_HANGING_RUN and caught.value.killed
    # The cancel reached the template before the next run's request: the module was killed first.
    assert local.run(payloads["ping"])[0] == 0
    assert _state(module_pid) in ("Z", "X", "gone")
    assert local.executor.alive


def test_python38_target(tmp_path: Path, collections_root: Path) -> None:
    py38 = python38()
    if py38 is None:
        pytest.skip("no Python 3.8 (./run installs one with pyenv)")
    compat = REPO / ".venv-compat" / "bin" / "python"
    if not compat.exists():
        pytest.skip("no .venv-compat (./run creates it): ansible-core 2.21 payloads need Python 3.9+")
    built = build(
        tmp_path,
        collections_root,
        {
            "ping": {"module": "ansible.builtin.ping", "args": {}, "interpreter": py38},
            "pristine": {"module": str(MODULES / "exec_pristine.py"), "interpreter": py38},
        },
        python=str(compat),
    )
    executor = Local(tmp_path, python=py38)
    try:
        assert executor.hello["python"][:2] == [3, 8]  # type: ignore[index]
        for name in ("ping", "pristine", "ping"):
            rc, out, err = executor.run(built[name])
            prc, pout, perr = executor.plain(built[name])
            assert (rc, err, module_json(out)) == (prc, perr, module_json(pout)) == (0, b"", module_json(pout))
    finally:
        executor.stop()


def test_an_old_protocol_or_python_is_refused_at_start(tmp_path: Path) -> None:
    proc = subprocess.Popen([PYTHON, "-c", "import os; os.read(0, 16)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    executor = manager.Executor(Pipes(proc), tmp=str(tmp_path))
    with pytest.raises(manager.ExecutorError) as caught:
        executor.start()
    assert caught.value.started is False
    assert proc.wait() == 0


def test_frames_over_the_limit_stop_the_executor(local: Local) -> None:
    local.executor.channel.write(remote.HEADER.pack(remote.MAX_FRAME + 1, remote.K_RUN, 9))
    assert local.proc.wait() != 0
    assert list(local.remote_tmp.iterdir()) == []


def _threads() -> List[str]:
    return sorted(t.name for t in threading.enumerate())


def test_the_executor_holds_no_thread_of_its_own(tmp_path: Path, payloads: Dict[str, bytes]) -> None:
    """A thousand pooled transports with an executor each must cost the daemon no thread beyond
    Paramiko's: the runs take turns at reading the channel, nothing reads between runs."""
    before = _threads()
    executor = Local(tmp_path)
    try:
        assert _threads() == before
        assert executor.run(payloads["ping"])[0] == 0
        assert _threads() == before
    finally:
        assert executor.stop() == 0


def test_runs_at_once_on_one_executor_each_get_their_own_output(local: Local, payloads: Dict[str, bytes]) -> None:
    expected = {name: local.plain(payloads[name]) for name in ("ping", "command")}
    results: Dict[int, Result] = {}
    names = ["ping", "command"] * 3

    def one(i: int) -> None:
        results[i] = local.run(payloads[names[i]])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)

    def stable(result: Result) -> Tuple[int, dict]:  # the command module's times differ run by run
        data = module_json(result[1])
        return result[0], {k: v for k, v in data.items() if k not in ("start", "end", "delta")}

    for i, name in enumerate(names):
        assert stable(results[i]) == stable(expected[name])


def test_an_executor_gone_between_runs_is_seen_before_the_next_one(local: Local, payloads: Dict[str, bytes]) -> None:
    assert local.run(payloads["ping"])[0] == 0
    assert local.executor.alive
    os.kill(int(local.hello["pid"]), 9)  # type: ignore[call-overload]
    local.proc.wait()
    assert not local.executor.alive  # nothing read the channel meanwhile: the channel says it ended
    with pytest.raises(manager.ExecutorError) as caught:
        local.run(payloads["ping"])
    assert caught.value.started is False  # a new executor may take it: nothing ran


class _Later:
    """``time`` as the manager sees it, ``ahead`` seconds later than it is."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


def test_an_idle_executor_closes_after_its_idle_timeout_only(
    local: Local, payloads: Dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert local.executor.take(idle_timeout=30.0)
    assert local.run(payloads["ping"])[0] == 0
    assert not local.executor.close_if_idle(expired_only=True)  # just used
    monkeypatch.setattr(manager, "time", _Later(31.0))
    assert local.executor.close_if_idle(expired_only=True)
    assert not local.executor.alive
    assert local.proc.wait() == 0  # its stdin closed: it exited and removed its directory


def test_an_executor_kept_for_good_is_never_closed_as_idle(
    local: Local, payloads: Dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert local.executor.take(idle_timeout=0.0)
    assert local.run(payloads["ping"])[0] == 0
    monkeypatch.setattr(manager, "time", _Later(10 * 365 * 86400.0))
    assert not local.executor.close_if_idle(expired_only=True)
    assert local.executor.alive
