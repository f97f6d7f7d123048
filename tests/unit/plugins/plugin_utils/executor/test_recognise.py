"""Which commands are exactly Ansible's pipelined module runs (and everything else is not)."""

from __future__ import annotations

import shlex

from ansible_collections.healer.pooled_ssh.plugins.plugin_utils.executor.recognise import recognise, split_wrapper

WRAPPER = (
    b"#!/usr/bin/python3\n\nimport datetime\n\n_ANSIBALLZ_WRAPPER = True\n\ndef _ansiballz_main(**kw):\n"
    b"    pass\n\n\nif __name__ == \"__main__\":\n    _ansiballz_main(\nansible_module='ping',\n"
    b"params='{\"ANSIBLE_MODULE_ARGS\": {}}',\nzip_data='UEsDBA==',\n)\n"
)
SUCCESS = "BECOME-SUCCESS-abcdef"


def sudo(inner: str) -> str:
    """What the sudo plugin builds around ``inner`` (with this test's success marker)."""
    return "sudo -H -S -n  -u root /bin/sh -c " + shlex.quote(f"echo {SUCCESS} ; {inner}")


def sh(body: str) -> str:
    return "/bin/sh -c " + shlex.quote(body)


def test_plain_run() -> None:
    run = recognise("/bin/sh -c /usr/bin/python3", WRAPPER)
    assert run is not None
    assert (run.interpreter, run.env, run.startup_env, run.zip_text) == ("/usr/bin/python3", {}, (), b"UEsDBA==")
    assert run.head + run.zip_text + run.tail == WRAPPER


def test_environment_goes_to_the_run_and_startup_variables_to_the_executor() -> None:
    run = recognise(
        sh("FOO='a b' LANG=C.UTF-8 PYTHONPATH=/x /usr/bin/python3.12 && sleep 0"),
        WRAPPER.replace(b"#!/usr/bin/python3\n", b"#!/usr/bin/python3.12\n"),
    )
    assert run is not None
    assert run.env == {"FOO": "a b"}
    assert run.startup_env == (("LANG", "C.UTF-8"), ("PYTHONPATH", "/x"))
    assert run.start_command("BOOT") == "LANG=C.UTF-8 PYTHONPATH=/x BOOT"
    other = recognise(sh("LANG=C /usr/bin/python3.12"), WRAPPER.replace(b"python3\n", b"python3.12\n"))
    assert other is not None and other.key != run.key


def test_become_is_recognised_only_when_it_rebuilds_exactly() -> None:
    become = ("sudo", "root", "-H -S -n")
    run = recognise(sh(sudo("/usr/bin/python3")), WRAPPER, become=(become, SUCCESS, sudo))
    assert run is not None and run.key[1] == become
    assert recognise(sh(sudo("/usr/bin/python3") + " ; id"), WRAPPER, become=(become, SUCCESS, sudo)) is None
    assert recognise(sh(sudo("/usr/bin/python3")), WRAPPER, become=(become, "BECOME-SUCCESS-other", sudo)) is None
    assert recognise(sh(sudo("/usr/bin/python3")), WRAPPER) is None


def test_everything_else_takes_the_plain_path() -> None:
    assert recognise("/bin/sh -c /usr/bin/python3", None) is None  # not pipelined
    assert recognise("/bin/sh -c /usr/bin/python3", b"echo hi\n") is None  # raw / script data
    assert recognise("/bin/bash -c /usr/bin/python3", WRAPPER, executable="/bin/bash") is None  # another shell
    assert recognise(sh("/usr/bin/python"), WRAPPER.replace(b"python3\n", b"python\n")) is None  # maybe Python 2
    assert recognise(sh("/usr/bin/python3 /tmp/x/AnsiballZ_ping.py"), WRAPPER) is None  # not pipelined
    assert recognise(sh("cd /tmp && /usr/bin/python3"), WRAPPER) is None  # chdir
    assert recognise(sh("/usr/bin/python3; rm -rf x"), WRAPPER) is None
    assert recognise(sh("python3"), WRAPPER.replace(b"/usr/bin/python3", b"python3")) is None  # not absolute
    assert recognise("/bin/sh -c /usr/bin/python3", WRAPPER.replace(b"/usr/bin/python3", b"/usr/bin/python3.9")) is None
    assert recognise("/bin/sh -c /usr/bin/python3", WRAPPER.replace(b"zip_data=", b"zip_dat=")) is None
    assert (
        recognise("/bin/sh -c /usr/bin/python3", WRAPPER + WRAPPER[WRAPPER.index(b"\n    _ansiballz_main") :]) is None
    )
    assert recognise("/bin/sh -c  /usr/bin/python3", WRAPPER) is None  # not quoted as Ansible quotes


def test_split_wrapper_round_trips() -> None:
    parts = split_wrapper(WRAPPER)
    assert parts is not None and b"".join(parts) == WRAPPER
