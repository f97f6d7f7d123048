"""Stand-in for the ``get-pip.py`` that ``ansible-test`` bootstraps its virtual environments with.

ansible-test downloads ``get-pip-<version>.py`` from its own CI file host unless a copy is cached
as ``~/.ansible/test/cache/get_pip_<version>.py``; ``./run sanity`` puts this script there, so
sanity runs reach only the package index. Like ``get-pip.py`` it is run as
``python get_pip_X_Y.py [pip install arguments] pip==X.Y``: it starts the pip wheel that the
interpreter's ``ensurepip`` bundles and lets that pip install the requested packages.
"""

from __future__ import annotations

import glob
import os
import runpy
import sys

# get-pip.py's own flags; this stand-in never installs setuptools or wheel unless asked to.
_GET_PIP_FLAGS = ("--no-setuptools", "--no-wheel")


def bundled_pip_wheel() -> str:
    """The pip wheel shipped in this interpreter's ``ensurepip`` (importable from the zip)."""
    import ensurepip

    wheels = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
    if not wheels:
        sys.exit(f"no pip wheel in {sys.executable}'s ensurepip; install python3-venv or a Python with ensurepip")
    return wheels[-1]


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg not in _GET_PIP_FLAGS]
    sys.path.insert(0, bundled_pip_wheel())
    sys.argv = ["pip", "install", *args]
    runpy.run_module("pip", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
