"""Code compiled on the controller for the host's bytecode (``executor/bytecode.py``), run for real.

The executor runs as a local process on pipes with the test target's Python; the code the controller
sends is made by a real interpreter of that Python. The host must take it only for the very source
it was compiled from, only for its own magic, and must give exactly a plain run's result with it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import zipfile
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest
from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor import (
    bytecode,
    manager,
    recognise,
    remote_child,
)
from local_executor import HERE, PYTHON, Local, build, module_json

MODULES = HERE / "modules"

#: Run by the target's Python: code compiled from changed sources, keyed by the SHA-256 of the
#: payload's own sources (plus ``salt``), after ``magic`` (the interpreter's own when empty).
MAKE = r"""
import base64, hashlib, importlib.util, io, json, marshal, sys, zipfile
spec = json.loads(sys.argv[1])
zf = zipfile.ZipFile(io.BytesIO(base64.b64decode(sys.stdin.buffer.read())))
codes = {}
for name, (old, new) in spec["replace"].items():
    source = zf.read(name)
    changed = source.replace(old.encode(), new.encode()) if old else source + new.encode()
    assert changed != source, name
    codes[hashlib.sha256(source + spec["salt"].encode()).digest()] = compile(
        changed, "<pooled_ssh payload source>", "exec", dont_inherit=True
    )
magic = bytes.fromhex(spec["magic"]) if spec["magic"] else importlib.util.MAGIC_NUMBER
sys.stdout.buffer.write(magic + marshal.dumps(codes))
"""


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory, collections_root: Path) -> Dict[str, bytes]:
    specs = {
        "marked": {"module": str(MODULES / "exec_marked.py")},
        "compiles": {"module": str(MODULES / "exec_compiles.py")},
        "ping": {"module": "ansible.builtin.ping", "args": {"data": "pong"}},
    }
    for spec in specs.values():
        spec["interpreter"] = PYTHON
    return build(tmp_path_factory.mktemp("build"), collections_root, specs)


def _zip_text(payload: bytes) -> bytes:
    parts = recognise.split_wrapper(payload)
    assert parts is not None
    return parts[1]


def given_code(payload: bytes, salt: str = "", magic: str = "") -> manager.Compile:
    """A controller that sends code setting ``MARK = "given"`` in ``basic`` and in the module."""
    zip_text = _zip_text(payload)
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(zip_text))) as zf:
        module = next(n for n in zf.namelist() if n.endswith("/exec_marked.py"))
    spec = {
        "replace": {
            "ansible/module_utils/basic.py": ["", '\nMARK = "given"\n'],
            module: ["MARK = None", 'MARK = "given"'],
        },
        "salt": salt,
        "magic": magic,
    }
    blob = subprocess.run([PYTHON, "-c", MAKE, json.dumps(spec)], input=zip_text, capture_output=True, check=True)
    return lambda _zip_text, _digest, _hello: blob.stdout


@pytest.fixture
def make_local(tmp_path: Path) -> Iterator:
    started = []

    def make(compiler: Optional[manager.Compile]) -> Local:
        executor = Local(tmp_path / f"executor-{len(started)}", compiler=compiler)
        started.append(executor)
        return executor

    for directory in ("executor-0", "executor-1"):
        (tmp_path / directory).mkdir()
    yield make
    for executor in started:
        executor.stop()


def test_the_template_and_the_child_take_the_code_given_for_their_exact_sources(
    make_local, payloads: Dict[str, bytes]
) -> None:
    local = make_local(given_code(payloads["marked"]))
    for _round in range(2):  # the first run starts the template, the second is its second child
        rc, out, err = local.run(payloads["marked"])
        assert (rc, err) == (0, b"")
        # basic was imported by the template, the module ran in the child: both took the given code.
        assert module_json(out) == {"basic_mark": "given", "module_mark": "given"}
    assert local.executor.stats.compiled_here == 1


def test_a_later_payload_of_the_same_tree_gets_its_code_on_the_warm_template(
    make_local, payloads: Dict[str, bytes]
) -> None:
    """The code of a payload whose template already runs goes with its run, behind its zip."""
    marked = given_code(payloads["marked"])
    digest = manager.zip_hash(_zip_text(payloads["marked"]))
    local = make_local(lambda zip_text, got, hello: marked(zip_text, got, hello) if got == digest else None)
    trees = {remote_child.module_utils_hash(_zip_text(payloads[name])) for name in ("ping", "marked")}
    assert len(trees) == 1  # one template serves both
    assert module_json(local.run(payloads["ping"])[1]) == {"ping": "pong"}  # starts it: no code given
    rc, out, err = local.run(payloads["marked"])
    assert (rc, err) == (0, b"")
    # basic was imported by the template (compiled on the host); the module took the given code.
    assert module_json(out) == {"basic_mark": None, "module_mark": "given"}


@pytest.mark.parametrize("other", ["other bytes", "another magic"])
def test_code_given_for_other_bytes_or_another_bytecode_is_never_used(
    make_local, payloads: Dict[str, bytes], other: str
) -> None:
    if other == "other bytes":  # keyed by the hash of sources that differ by one byte
        compiler = given_code(payloads["marked"], salt=" ")
    else:  # the right sources, compiled for a Python whose bytecode is another
        compiler = given_code(payloads["marked"], magic="00000000")
    local = make_local(compiler)
    assert local.run(payloads["marked"]) == local.plain(payloads["marked"])
    assert module_json(local.run(payloads["marked"])[1])["module_mark"] is None


def test_the_controller_compiles_a_payload_once_for_every_host_of_its_bytecode(
    make_local, payloads: Dict[str, bytes]
) -> None:
    compiler = bytecode.Compiler()
    plain = None
    for _host in range(2):
        local = make_local(compiler.codes)
        plain = plain or module_json(local.plain(payloads["compiles"])[1])
        rc, out, err = local.run(payloads["compiles"])
        assert (rc, err) == (0, b"")
        mine = module_json(out)
        assert mine["compiled"] == []  # the child compiled none of the payload's sources
        # The code names this task's own payload files, as a plain run's does.
        for key in ("own", "late"):
            assert [name.split("_payload.zip/")[1] for name in mine[key]] == [
                name.split("_payload.zip/")[1] for name in plain[key]
            ]
        assert local.executor.stats.compiled_here == 1  # this host got the controller's code
    assert compiler.compiles == 1  # compiled once, for both hosts


def test_no_interpreter_of_the_hosts_bytecode_here_means_the_host_compiles(
    make_local, payloads: Dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    local = make_local(None)
    zip_text = _zip_text(payloads["compiles"])
    digest = manager.zip_hash(zip_text)
    compiler = bytecode.Compiler()
    runs = []
    real_run = bytecode.Compiler._run
    monkeypatch.setattr(bytecode.Compiler, "_run", staticmethod(lambda *a: runs.append(a) or real_run(*a)))
    other = dict(local.hello, magic="00000000")  # no interpreter here has that bytecode
    assert compiler.codes(zip_text, digest, other) is None
    tried = len(runs)
    assert tried >= 1  # the target's own Python was asked, and said its magic is another
    assert compiler.codes(zip_text, digest, other) is None
    assert len(runs) == tried  # not asked again: the answer is kept for that version
    assert compiler.codes(zip_text, digest, dict(local.hello, python=[3, 1, 0])) is None
    assert compiler.codes(zip_text, digest, dict(local.hello, ranges=False)) is None  # -X no_debug_ranges
    assert compiler.codes(zip_text, digest, {"python": [3, 11, 0]}) is None  # an executor without a magic
    assert compiler.compiles == 0
    assert compiler.codes(zip_text, digest, local.hello)[:4] == bytes.fromhex(str(local.hello["magic"]))


#: A source whose compiling warns (a SyntaxWarning, shown by default), written by the test.
WARNS = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={})
module.exit_json(literal=len(module.params) is 0)
"""


def test_a_source_that_warns_is_left_for_the_host_to_compile_and_warn_as_a_plain_run(
    make_local, tmp_path: Path, collections_root: Path
) -> None:
    module = tmp_path / "exec_warns.py"
    module.write_text(WARNS)
    payload = build(tmp_path, collections_root, {"warns": {"module": str(module), "interpreter": PYTHON}})["warns"]
    compiler = bytecode.Compiler()
    local = make_local(compiler.codes)
    blob = compiler.codes(_zip_text(payload), manager.zip_hash(_zip_text(payload)), local.hello)
    assert blob is not None
    listing = "import marshal,sys; print(*sorted(k.hex() for k in marshal.loads(sys.stdin.buffer.read()[4:])))"
    keys = subprocess.run(
        [PYTHON, "-c", listing],
        input=blob,
        capture_output=True,
        check=True,
    )
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(_zip_text(payload)))) as zf:
        sources = {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if n.endswith(".py")}
    warns = sources.pop(next(n for n in sources if n.endswith("/exec_warns.py")))
    assert sorted(keys.stdout.split()) == sorted({h.encode() for h in sources.values()})  # all but the one that warns
    assert warns.encode() not in keys.stdout.split()
    prc, pout, perr = local.plain(payload)
    assert prc == 0 and b"SyntaxWarning" in perr
    rc, out, err = local.run(payload)
    assert (rc, module_json(out)) == (prc, module_json(pout))
    masked = [re.sub(rb"/\S*?_payload\.zip/", b"<payload>/", text) for text in (err, perr)]
    assert masked[0] == masked[1]  # the same warning, naming the same file of its own payload
